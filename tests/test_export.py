"""export/: ONNX Runtime logits against the PyTorch model, manifest and contract, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from export.options import ExportOptions
from export.package import export_package
from runtime.engine import EngineOptions, OrtBackend
from runtime.manifest import MODEL, load_manifest
from tests.conftest import hf_reference, ours_from_reference
from train import save_pretrained
from train.config import preset
from train.layouts import MIXFORMER, MSFT, hf_to_layout

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    from tests.test_runtime import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def make_checkpoint(name: str, folder: Path, tok: Path, seed: int = 0):
    config = preset(name)
    model = ours_from_reference(hf_reference(config, seed), config)
    save_pretrained(model, folder, tokenizer=tok)
    return model


def run_steps(package: Path, ids: list[int], prefill: int) -> np.ndarray:
    """Last-position logits after a prefill of `prefill` tokens, then one per decode step, through the runtime's
    engine (shared past/present buffers bound with IOBinding)."""
    backend = OrtBackend(load_manifest(package), EngineOptions(threads=1, context=32))
    steps = [ids[:prefill]] + [[t] for t in ids[prefill:]]
    return np.stack([backend.step(chunk) for chunk in steps])


def torch_steps(model, ids: list[int], prefill: int) -> np.ndarray:
    with torch.no_grad():
        full = model(torch.tensor([ids]))[0].numpy()
    return full[prefill - 1:]


IDS = [int(i) for i in np.random.default_rng(0).integers(0, 512, 20)]  # prefill 12, then 8 decode steps


@pytest.mark.parametrize("name", ["tiny-phi-1_5", "tiny-phi-2"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_logits_match_pytorch_through_the_kv_cache(name, precision, tok, tmp_path):
    model = make_checkpoint(name, tmp_path / "ckpt", tok)
    package = export_package(tmp_path / "ckpt", tmp_path / "pkg", ExportOptions(precision=precision, kv_dtype=None),
                             show_progress=False)
    got, want = run_steps(package, IDS, 12), torch_steps(model, IDS, 12)
    assert got.shape == (9, 512)
    diff = np.abs(got - want).max()
    print(f"{name} {precision}: max abs diff {diff:.2e}, relative {diff / np.abs(want).max():.2e}")
    if precision == "fp32":
        assert diff <= 1e-4
    else:
        assert diff / np.abs(want).max() <= 1e-2


@pytest.mark.parametrize("layout", [MSFT, MIXFORMER])
def test_older_layouts_export_to_the_same_logits(layout, tok, tmp_path):
    model = make_checkpoint("tiny-phi-2", tmp_path / "hf", tok, seed=4)
    folder = tmp_path / layout
    folder.mkdir()
    model.config.save(folder / "config.json")
    (folder / "tokenizer.json").write_bytes(tok.read_bytes())
    state = hf_to_layout(model.state_dict(), layout, model.config)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    package = export_package(folder, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    assert load_manifest(package).export["source_layout"] == layout
    assert np.abs(run_steps(package, IDS, 12) - torch_steps(model, IDS, 12)).max() <= 1e-4


@pytest.mark.parametrize("options", [
    ExportOptions(precision="int4", block_size=32, lm_head="int4", embedding="int4"),
    ExportOptions(precision="int8", block_size=16, embedding="int8"),
    ExportOptions(precision="int4", block_size=64, method="hqq", lm_head="fp32"),
    ExportOptions(precision="int4", block_size=32, symmetric=True, logits="all"),
])
def test_manifest_matches_graph_and_checksums(options, tok, tmp_path):
    make_checkpoint("tiny-phi-1_5", tmp_path / "ckpt", tok)
    package = export_package(tmp_path / "ckpt", tmp_path / "pkg", options, show_progress=False)
    manifest = load_manifest(package, verify=True)
    graph = onnx.load(str(package / MODEL), load_external_data=False).graph

    def specs(values):
        return [(v.name, onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                 [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]) for v in values]

    assert specs(graph.input) == [(s.name, s.dtype, list(s.shape)) for s in manifest.contract.inputs()]
    assert specs(graph.output) == [(s.name, s.dtype, list(s.shape)) for s in manifest.contract.outputs()]
    ops = {n.op_type for n in graph.node}
    assert {"GroupQueryAttention", "SkipLayerNormalization", "FastGelu", "MatMulNBits"} <= ops
    assert "Concat" not in ops  # the KV cache is never concatenated
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert all({a.name: a.i for a in n.attribute}["accuracy_level"] == 4 for n in nbits)
    q = manifest.quantization
    assert q["bits"] == options.bits and q["block_size"] == options.block_size and q["method"] == options.method
    # The package runs, and its quantized logits stay near the float model's.
    session = ort.InferenceSession(str(package / MODEL), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "input_ids"
    (package / "model.onnx.data").open("r+b").write(b"garbage!")
    with pytest.raises(ValueError, match="sha256"):
        load_manifest(package, verify=True)


def test_quantized_logits_stay_close(tok, tmp_path):
    model = make_checkpoint("tiny-phi-1_5", tmp_path / "ckpt", tok)
    want = torch_steps(model, IDS, 12)
    for precision, tol in (("int8", 0.03), ("int4", 0.15)):
        package = export_package(tmp_path / "ckpt", tmp_path / precision, ExportOptions(precision=precision,
                                 block_size=32), show_progress=False)
        rel = np.abs(run_steps(package, IDS, 12) - want).max() / np.abs(want).max()
        assert rel <= tol, (precision, rel)


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *map(str, args), "--quiet"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


def _one_line_error(proc, expect: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert expect in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_bad_input(tok, tmp_path):
    ckpt = tmp_path / "ckpt"
    make_checkpoint("tiny-phi-1_5", ckpt, tok)
    _one_line_error(run_cli(tmp_path / "missing", tmp_path / "o1"), "does not exist")
    _one_line_error(run_cli(ckpt, tmp_path / "o2", "--block-size", "24"), "block size 24")
    proc = run_cli(ckpt, tmp_path / "o3", "--precision", "int3")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "notes.txt").write_text("mine")
    _one_line_error(run_cli(ckpt, tmp_path / "exists"), "--force")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_bytes((ckpt / "config.json").read_bytes())
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    proc = run_cli(corrupt, tmp_path / "o4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    shape = tmp_path / "shape"
    shape.mkdir()
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (shape / "config.json").write_text(json.dumps(cfg))
    (shape / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    _one_line_error(run_cli(shape, tmp_path / "o5"), "model.layers.0.mlp.fc1.")
    assert "(256" in run_cli(shape, tmp_path / "o5").stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))]
    assert leftovers == [], leftovers


def test_hqq_int8_is_refused():
    with pytest.raises(ValueError, match="use --method rtn for int8"):
        ExportOptions(precision="int8", method="hqq")


def test_failure_mid_export_leaves_nothing(tok, tmp_path, monkeypatch):
    import export.graph

    make_checkpoint("tiny-phi-1_5", tmp_path / "ckpt", tok)
    with pytest.raises(ValueError, match="not a multiple of block size 256"):  # refused before any work
        export_package(tmp_path / "ckpt", tmp_path / "pkg", ExportOptions(precision="int4", block_size=256),
                       show_progress=False)
    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C in the middle of the graph build
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = export.graph.quantize
    monkeypatch.setattr(export.graph, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_package(tmp_path / "ckpt", tmp_path / "pkg", ExportOptions(precision="int4"), show_progress=False)
    assert len(calls) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_default_block_is_128_where_it_divides_the_model_and_smaller_where_it_does_not(tok, tmp_path):
    from export.options import default_block

    assert default_block((2048, 8192)) == 128 and default_block((3072, 8192)) == 128  # phi-1.5, Phi-3/4-mini
    assert default_block((2560, 10240)) == 128 and default_block((160, 640)) == 32 and default_block((100,)) == 16
    for preset, block in (("tiny-phi-1_5", 128), ("tiny-phi-2", 32)):
        make_checkpoint(preset, tmp_path / preset, tok)
        package = export_package(tmp_path / preset, tmp_path / f"{preset}-pkg", ExportOptions(precision="int4"),
                                 show_progress=False)
        manifest = load_manifest(package)
        assert manifest.quantization["block_size"] == block == manifest.export["options"]["block_size"]
        graph = onnx.load(str(package / MODEL), load_external_data=False).graph
        assert {a.i for n in graph.node if n.op_type == "MatMulNBits" for a in n.attribute
                if a.name == "block_size"} == {block}
    with pytest.raises(ValueError, match="block size"):
        ExportOptions(precision="int4", block_size=48)
