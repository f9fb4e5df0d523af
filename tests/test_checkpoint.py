"""Checkpoint folders: HF layout (single, sharded, fp16/fp32/bf16), the older layouts, and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import hf_reference, ours_from_reference
from train import load_pretrained, save_pretrained
from train.config import preset
from train.layouts import MIXFORMER, MSFT, hf_to_layout

IDS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]])


@pytest.fixture(scope="module")
def model():
    config = preset("tiny-phi-2")
    return ours_from_reference(hf_reference(config, seed=7), config)


def logits(m):
    with torch.no_grad():
        return m(IDS).float()


@pytest.mark.parametrize("dtype, shard, tol", [
    (None, None, 0.0), ("fp16", None, 0.0), ("bf16", None, 0.0), (None, 200_000, 0.0), ("fp16", 100_000, 0.0)])
def test_hf_round_trip(model, tmp_path, dtype, shard, tol):
    (tmp_path / "tok.json").write_text("{}")
    path = save_pretrained(model, tmp_path / "ckpt", dtype=dtype, max_shard_bytes=shard, tokenizer=tmp_path / "tok.json")
    assert (path / "model.safetensors.index.json").is_file() == (shard is not None)
    assert (path / "tokenizer.json").is_file()
    loaded = load_pretrained(path, dtype="auto")
    assert loaded.tokenizer_file == path / "tokenizer.json"
    want = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    assert loaded.lm_head.weight.dtype == want
    # The stored tensors are exact: fp32 reload of a reduced-precision save equals the model rounded the same way.
    rounded = ours_from_reference(model, model.config) if dtype is None else _rounded(model, want)
    assert torch.equal(logits(load_pretrained(path)), logits(rounded))


def _rounded(model, dtype):
    from train.model import PhiForCausalLM

    m = PhiForCausalLM(model.config).eval()
    m.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return m


def test_transformers_loads_our_checkpoint_and_we_load_theirs(model, tmp_path):
    transformers = pytest.importorskip("transformers")
    save_pretrained(model, tmp_path / "ours")
    hf = transformers.PhiForCausalLM.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        assert (hf(IDS).logits - logits(model)).abs().max() <= 1e-5
    hf.save_pretrained(tmp_path / "theirs")
    assert torch.equal(logits(load_pretrained(tmp_path / "theirs")), logits(model))


@pytest.mark.parametrize("layout", [MSFT, MIXFORMER])
def test_older_layouts_load_to_identical_logits(model, tmp_path, layout):
    state = hf_to_layout(model.state_dict(), layout, model.config)
    assert not any(k.startswith("model.") for k in state)
    folder = tmp_path / layout
    folder.mkdir()
    model.config.save(folder / "config.json")
    state[next(k for k in state if k.endswith("Wqkv.weight")).replace("Wqkv.weight", "rotary_emb.inv_freq")] = \
        torch.ones(4)  # a stored buffer, as in the published files: ignored
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    assert torch.equal(logits(load_pretrained(folder)), logits(model))


def test_layout_conversion_is_invertible(model):
    config = model.config
    for layout in (MSFT, MIXFORMER):
        state = hf_to_layout(model.state_dict(), layout, config)
        from train.layouts import map_name

        back = {}
        for name, tensor in state.items():
            for piece in map_name(layout, name, config):
                back[piece.hf_name] = tensor if piece.start is None else tensor[piece.start:piece.stop]
        assert back.keys() == model.state_dict().keys()
        assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_missing_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")


def test_wrong_shape_names_tensor_and_shapes(model, tmp_path):
    save_pretrained(model, tmp_path / "c")
    state = dict(model.state_dict())
    state["model.layers.1.mlp.fc1.weight"] = torch.zeros(7, 160)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.fc1\.weight.*\(7, 160\).*\(640, 160\)"):
        load_pretrained(tmp_path / "c")


def test_missing_tensor(model, tmp_path):
    save_pretrained(model, tmp_path / "c")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.bias"}
    save_file(state, str(tmp_path / "c" / "model.safetensors"))
    with pytest.raises(ValueError, match="lacks 1 tensors.*lm_head.bias"):
        load_pretrained(tmp_path / "c")


def test_unknown_layout(model, tmp_path):
    model.config.save(tmp_path / "config.json")
    save_file({"encoder.block.0.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="unknown checkpoint layout"):
        load_pretrained(tmp_path)


def test_pickle_is_refused_with_conversion_hint(model, tmp_path):
    model.config.save(tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="pickle.*pytorch_model.bin.*save_file"):
        load_pretrained(tmp_path)


def test_rotary_larger_than_head_is_refused(model, tmp_path):
    d = model.config.to_hf_dict()
    d["rope_parameters"]["partial_rotary_factor"] = 1.5
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="rotary_dim"):
        load_pretrained(tmp_path)


def test_interrupted_save_leaves_nothing(model, tmp_path, monkeypatch):
    import train.checkpoint as ck

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "_write_weights", boom)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, tmp_path / "c")
    assert list(tmp_path.iterdir()) == []
