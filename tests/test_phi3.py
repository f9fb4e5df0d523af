"""The phi-3 family in train/: logits and greedy generation against transformers' Phi3ForCausalLM on tiny
random checkpoints of each variant (LongRoPE below and above its switch, sliding window, GQA, partial rotary,
tied embeddings), checkpoints both ways, published config spellings, and what is refused (issue 11)."""

from __future__ import annotations

import json

import pytest
import torch

from train import load_pretrained, save_pretrained
from train.config import config_from_hf_dict, load_config
from train.config_phi3 import Phi3Config
from train.model import greedy_generate
from train.phi3 import Phi3ForCausalLM

VARIANTS = ["tiny-phi-3", "tiny-phi-4-mini", "tiny-phi-3-4k"]


def preset(name: str):
    """The test presets, and a Phi-3-mini-4k-like one: no LongRoPE, a 48-position sliding window."""
    from train.config import preset as table

    return table("tiny-phi-3").replace(longrope=None) if name == "tiny-phi-3-4k" else table(name)


def hf_phi3(config: Phi3Config, seed: int = 0):
    """transformers' Phi3ForCausalLM with random weights (and non-trivial norms) for `config`."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.Phi3ForCausalLM(transformers.Phi3Config(**config.to_hf_dict())).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def ours(reference, config: Phi3Config) -> Phi3ForCausalLM:
    model = Phi3ForCausalLM(config).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    return model


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("length", [20, 32, 80])  # below, at and above the LongRoPE switch (32); 80 > window 48
def test_logits_match_transformers(name, length):
    config = preset(name)
    reference = hf_phi3(config)
    model = ours(reference, config)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(length))
    with torch.no_grad():
        want = reference(ids).logits
        got = model(ids)
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("prompt, new", [(20, 40), (40, 20)])  # crossing the switch while decoding; after it
def test_greedy_generation_matches_transformers_generate(name, prompt, new):
    config = preset(name)
    reference = hf_phi3(config, seed=1)
    model = ours(reference, config)
    ids = torch.randint(3, config.vocab_size, (1, prompt), generator=torch.Generator().manual_seed(prompt))
    with torch.no_grad():
        want = reference.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0,
                                  min_new_tokens=new)[0, prompt:].tolist()
    assert greedy_generate(model, ids[0].tolist(), new) == want


def test_cached_decoding_equals_one_pass_below_the_switch():
    config = preset("tiny-phi-4-mini")
    model = ours(hf_phi3(config), config)
    ids = torch.randint(0, config.vocab_size, (1, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 30)
        steps = [model(ids[:, :12], cache)] + [model(ids[:, i:i + 1], cache) for i in range(12, 30)]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_checkpoints_round_trip_with_transformers(name, tmp_path):
    import transformers

    config = preset(name)
    reference = hf_phi3(config, seed=2)
    reference.save_pretrained(tmp_path / "hf")
    model = load_pretrained(tmp_path / "hf")
    assert isinstance(model, Phi3ForCausalLM) and model.config == config
    ids = torch.randint(0, config.vocab_size, (1, 40))
    with torch.no_grad():
        want = reference(ids).logits
        assert (model(ids) - want).abs().max().item() <= 1e-4
    save_pretrained(model, tmp_path / "ours", dtype="fp32")
    again = transformers.Phi3ForCausalLM.from_pretrained(tmp_path / "ours").eval()
    again.config._attn_implementation = "eager"
    with torch.no_grad():
        assert (again(ids).logits - want).abs().max().item() <= 1e-4


def test_published_config_spellings(tmp_path):
    hf = preset("tiny-phi-3").to_hf_dict()
    published = {k: v for k, v in hf.items() if k != "rope_parameters"}  # as the 2024 config.json files
    published["rope_scaling"] = {"type": "su", "short_factor": hf["rope_scaling"]["short_factor"],
                                 "long_factor": hf["rope_scaling"]["long_factor"]}
    published["eos_token_id"] = [2, 7, 9]  # generation ids: the first is the end-of-text token
    (tmp_path / "config.json").write_text(json.dumps(published))
    config = load_config(tmp_path / "config.json")
    assert config == preset("tiny-phi-3")
    v5 = {k: v for k, v in hf.items() if k != "rope_scaling"}  # transformers 5: rope_parameters only
    assert config_from_hf_dict(v5) == preset("tiny-phi-3")
    mini4k = {**v5, "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}, "sliding_window": 2047}
    assert config_from_hf_dict(mini4k).longrope is None and config_from_hf_dict(mini4k).sliding_window == 2047


@pytest.mark.parametrize("model_type, architecture, says", [
    ("phi3small", "Phi3SmallForCausalLM", "Phi-3-small"),
    ("phimoe", "PhiMoEForCausalLM", "Phi-3.5-MoE"),
    ("phi4flash", "Phi4FlashForCausalLM", "Phi-4-mini-flash"),
    ("phi3_v", "Phi3VForCausalLM", "Phi-3-vision"),
    ("phi4mm", "Phi4MMForCausalLM", "Phi-4-multimodal"),
    ("phi3", "Phi3VForCausalLM", "Phi-3-vision"),  # the class decides when the type is ambiguous
])
def test_other_phi_architectures_are_refused_in_one_line(model_type, architecture, says):
    with pytest.raises(ValueError, match=says) as e:
        config_from_hf_dict({"model_type": model_type, "architectures": [architecture], "hidden_size": 8})
    assert "\n" not in str(e.value) and "Phi3ForCausalLM family" in str(e.value)


def test_presets_have_the_published_sizes():
    billions = {name: preset(name).num_parameters() / 1e9 for name in
                ("phi-3-mini-4k", "phi-3-mini-128k", "phi-4-mini", "phi-3-medium-4k", "phi-4")}
    assert billions["phi-3-mini-4k"] == pytest.approx(3.82, abs=0.01)
    assert billions["phi-4-mini"] == pytest.approx(3.84, abs=0.01)  # tied 200k embedding
    assert billions["phi-3-medium-4k"] == pytest.approx(13.96, abs=0.01)
    assert billions["phi-4"] == pytest.approx(14.66, abs=0.01)
    assert preset("phi-4-mini").rotary_dim == 96 and preset("phi-4-mini").kv_heads == 8
    assert preset("phi-3-mini-4k").window == 2047 and preset("phi-3-mini-128k").window is None
