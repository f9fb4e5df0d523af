"""Phi-3 family packages: ONNX Runtime logits through the KV cache against PyTorch and transformers, across the
LongRoPE switch and past the sliding window, and greedy text through python -m runtime.generate equal to
transformers' generate (issue 11)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.options import ExportOptions
from export.package import export_package
from runtime.engine import EngineOptions, OrtBackend
from runtime.recompute import with_recompute
from runtime.manifest import MODEL, load_manifest
from tests.test_phi3 import hf_phi3, ours
from tests.test_runtime import make_tokenizer
from train import save_pretrained
from train.config import preset

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["tiny-phi-3", "tiny-phi-4-mini"]  # switch at 32; tiny-phi-3 has a 48-position window


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Path:
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request, tmp_path_factory, tok):
    """(name, transformers model, our model, checkpoint folder)."""
    name = request.param
    config = preset(name)
    reference = hf_phi3(config, seed=3)
    model = ours(reference, config)
    folder = tmp_path_factory.mktemp(name) / "ckpt"
    save_pretrained(model, folder, tokenizer=tok)
    return name, reference, model, folder


def engine_steps(package: Path, ids: list[int], prefill: int) -> np.ndarray:
    """The runtime's backend: OrtBackend in the wrapper that recomputes at the LongRoPE switch
    (runtime/recompute.py)."""
    manifest = load_manifest(package)
    backend = with_recompute(OrtBackend(manifest, EngineOptions(threads=1)), manifest)
    return np.stack([backend.step(chunk) for chunk in [ids[:prefill]] + [[t] for t in ids[prefill:]]])


def torch_steps(model, ids: list[int], prefill: int) -> np.ndarray:
    """The PyTorch reference through its own KV cache (which recomputes at the LongRoPE switch)."""
    with torch.no_grad():
        cache = model.new_cache(1, len(ids))
        out = [model(torch.tensor([ids[:prefill]]), cache)[0, -1]]
        out += [model(torch.tensor([[t]]), cache)[0, -1] for t in ids[prefill:]]
    return torch.stack(out).numpy()


IDS = [int(i) for i in np.random.default_rng(0).integers(3, 512, 64)]


@pytest.mark.parametrize("prefill", [12, 40])  # crossing the switch while decoding; a prompt already past it
def test_fp32_logits_match_pytorch_through_the_cache(variant, prefill, tmp_path):
    name, reference, model, folder = variant
    package = export_package(folder, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    got, want = engine_steps(package, IDS, prefill), torch_steps(model, IDS, prefill)
    assert got.shape == (64 - prefill + 1, 512)
    assert np.abs(got - want).max() <= 1e-4, (name, prefill, np.abs(got - want).max(axis=1))
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["rope_switch"] == 32 and manifest["model"]["model_type"] == "phi3"
    assert manifest["rope_switch_cached_positions"].startswith("recomputed")
    config = preset(name)
    assert manifest["io"]["kv_cache"]["bytes_per_1k_tokens"] == 1024 * config.n_layers * 2 * config.kv_heads * \
        config.head_dim * 4


def test_graph_uses_the_fused_phi3_ops(variant, tmp_path):
    name, _, _, folder = variant
    package = export_package(folder, tmp_path / "pkg", ExportOptions(precision="int4", block_size=32),
                             show_progress=False)
    graph = onnx.load(str(package / MODEL), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert {"SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "MatMulNBits",
            "GroupQueryAttention", "If"} <= ops
    assert "LayerNormalization" not in ops and "SkipLayerNormalization" not in ops
    gqa = next(n for n in graph.node if n.op_type == "GroupQueryAttention")
    attrs = {a.name: a.i for a in gqa.attribute}
    config = preset(name)
    assert attrs["kv_num_heads"] == config.kv_heads and attrs["num_heads"] == config.n_heads
    assert attrs.get("local_window_size", -1) == (config.window or -1)
    matmuls = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(matmuls) == 4 * config.n_layers + 1  # qkv, o, gate_up, down per layer; lm_head


@pytest.mark.parametrize("prompt, new", [(20, 24), (40, 12)])
def test_runtime_generate_equals_transformers_greedy(variant, prompt, new, tmp_path):
    name, reference, _, folder = variant
    package = export_package(folder, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    ids = torch.randint(3, 512, (1, prompt), generator=torch.Generator().manual_seed(prompt))
    with torch.no_grad():
        want = reference.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, prompt:].tolist()
    code = ("import json, sys, runtime; m = runtime.load(sys.argv[1], runtime.EngineOptions(threads=1)); "
            "out = m.generate_ids(json.loads(sys.argv[2]), runtime.GenerationConfig(int(sys.argv[3]), "
            "runtime.SamplingConfig(temperature=0), stop_at_eos=False)); print(json.dumps(out.tokens))")
    proc = subprocess.run([sys.executable, "-c", code, str(package), json.dumps(ids[0].tolist()), str(new)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == want, name


def test_quantized_packages_stay_close(variant, tmp_path):
    name, _, model, folder = variant
    want = torch_steps(model, IDS[:40], 12)
    # int8 and int4 with int8 edges: the bounds phi's packages meet (test_export.py); the phi-3 family's default
    # int4 lm_head and embedding add error (about 0.18 here; their cost is measured in benchmarks/RESULTS.md)
    for precision, edges, tol in (("int8", None, 0.03), ("int4", "int8", 0.15), ("int4", None, 0.25)):
        package = export_package(folder, tmp_path / f"{precision}-{edges}", ExportOptions(
            precision=precision, block_size=32, lm_head=edges, embedding=edges), show_progress=False)
        rel = np.abs(engine_steps(package, IDS[:40], 12) - want).max() / np.abs(want).max()
        assert rel <= tol, (name, precision, edges, rel)



@pytest.mark.parametrize("edges", ["int8", "int4"])
def test_tied_embedding_gathers_from_the_lm_head_weight(variant, edges, tmp_path, monkeypatch):
    """A tied model's quantized embedding reads the lm_head's MatMulNBits weight as it is (one copy in the package),
    giving the logits of the two-copy layout exactly (both quantized by the same round-to-nearest)."""
    name, _, _, folder = variant
    options = ExportOptions(precision="int4", block_size=32, lm_head=edges, embedding=edges, kv_dtype="float32")
    shared = export_package(folder, tmp_path / "shared", options, show_progress=False)
    from export.graph import GraphBuilder
    monkeypatch.setattr(GraphBuilder, "can_share", lambda self, bits, head: False)
    separate = export_package(folder, tmp_path / "separate", options, show_progress=False)
    graph = onnx.load(str(shared / MODEL), load_external_data=False).graph
    names = {i.name for i in graph.initializer}
    tied = preset(name).tie_word_embeddings
    assert ("embed_tokens.qweight" in names) != tied
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and n.input[1].startswith("lm_head"))
    assert (gather.input[0] == head.input[1]) == tied
    assert np.array_equal(engine_steps(shared, IDS[:40], 12), engine_steps(separate, IDS[:40], 12))
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    manifest = json.loads((shared / "manifest.json").read_text())
    if tied:
        config = preset(name)
        saved = config.vocab_size * config.hidden_size * int(edges[3:]) // 8
        assert size(separate) - size(shared) >= 0.9 * saved  # less the small 3-D scales and zero points
        assert manifest["quantization"]["embedding"] == f"lm_head's {edges} weight (tied)"
    else:
        assert size(separate) == size(shared)


def test_prompts_in_bounded_runs_keep_longrope_exact(variant, tmp_path, monkeypatch):
    """Prompts go in runs of step_rows tokens (here 8). The graph picks LongRoPE's tables by a run's total length
    (the mask's width), so the runs of a step that crosses the switch get a mask padded past it: the long tables
    for every run, as one run would have. Both against PyTorch."""
    from runtime import engine

    name, _, model, folder = variant
    monkeypatch.setattr(engine, "step_rows", lambda heads, capacity: 8)
    package = export_package(folder, tmp_path / "pkg", ExportOptions(precision="fp32", kv_dtype=None), show_progress=False)
    for prefill in (28, 40):  # below the switch (32); across it, padded
        got, want = engine_steps(package, IDS[:48], prefill), torch_steps(model, IDS[:48], prefill)
        assert np.abs(got - want).max() <= 1e-4, (name, prefill, np.abs(got - want).max(axis=1))
