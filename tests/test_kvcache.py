"""KV cache memory: quantized caches (int8 / int4, export/kvcache.py) against the float cache and the kernel's
storage rule, the cache that grows with the sequence (runtime/kvcache.py), and the context plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export import kvcache as export_kv
from export.options import ExportOptions
from export.package import export_package
from runtime.contract import Contract
from runtime.engine import EngineOptions, OrtBackend
from runtime.kvcache import FIRST, STEP, ContextPlan, grown_capacity, plan_context
from runtime.manifest import MODEL, load_manifest
from runtime.pipeline import DEFAULT_PACKAGE
from tests.test_export import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
IDS = [int(i) for i in np.random.default_rng(1).integers(0, 512, 96)]


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    """tiny-phi-1_5 (partial rotary 16 of 32) and tiny-phi-4-mini (GQA 2:1, rotary 48 of 64), each with a float32,
    an int8 and an int4 cache, weights in float32 so only the cache differs."""
    from tests.phi3_fixtures import make_checkpoint as phi3_checkpoint
    from tests.test_runtime import make_tokenizer

    tmp = tmp_path_factory.mktemp("kv")
    make_checkpoint("tiny-phi-1_5", tmp / "phi", make_tokenizer(tmp / "tok" / "tokenizer.json"))
    phi3_checkpoint("tiny-phi-4-mini", tmp / "phi4", "gpt4o")
    out = {}
    for model in ("phi", "phi4"):
        for kv in ("float32", "int8", "int4"):
            out[f"{model}-{kv}"] = export_package(tmp / model, tmp / f"{model}-{kv}", ExportOptions(
                precision="fp32", kv_dtype=kv, logits="all"), show_progress=False)
    return out


def _run(package: Path, ids: list[int], chunks: list[int]) -> tuple[np.ndarray, OrtBackend]:
    """Logits (len(ids), vocab) fed in `chunks` (sizes), and the backend holding the cache."""
    backend = OrtBackend(load_manifest(package), EngineOptions(threads=1))
    rows, start = [], 0
    for n in chunks:
        backend.step(ids[start:start + n])
        rows.append(backend.last_logits())
        start += n
    return np.concatenate(rows), backend


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    def logp(x):
        x = x.astype(np.float64) - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    p, q = logp(p_logits), logp(q_logits)
    return float((np.exp(p) * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("model", ["phi", "phi4"])
def test_quantized_cache_holds_round_x_over_scale_of_the_float_cache(packages, model):
    """The int8 / int4 buffers hold what the contract says: round(x / scale) clamped (int4: + 8, two per byte, low
    nibble first) of the float cache's values, with the scales written in the graph. Layer 0 only: later layers'
    inputs already differ by what the quantized cache changed in attention."""
    chunks = [40, 1, 1, 1, 20, 1]
    _, ref = _run(packages[f"{model}-float32"], IDS, chunks)
    n = sum(chunks)
    for kv, qmax in (("int8", 127), ("int4", 7)):
        package = packages[f"{model}-{kv}"]
        _, backend = _run(package, IDS, chunks)
        graph = onnx.load(str(package / MODEL), load_external_data=False).graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer if t.name.startswith("kv_scale.")}
        assert len(inits) == 2 * backend.contract.n_layers
        for i, (past, _) in enumerate(backend.contract.kv_names()[:2]):
            layer, kind = past.split(".")[1:]
            scale = inits[export_kv.scale_name(int(layer), kind)][0]  # (kv_heads, 1, head_dim)
            stored = backend.kv.arrays[i][0, :, :n]
            if kv == "int4":  # (kv_heads, n, head_dim / 2) bytes -> (kv_heads, n, head_dim) values
                stored = np.stack([stored & 15, stored >> 4], -1).reshape(*stored.shape[:2], -1).astype(np.int32) - 8
            want = np.clip(np.round(ref.kv.arrays[i][0, :, :n] / scale), -qmax - 1, qmax)
            assert np.abs(stored.astype(np.int32) - want).max() <= 1, (kv, past)  # rounding of float ties
            assert (stored == want).mean() > 0.99


@pytest.mark.parametrize("model", ["phi", "phi4"])
def test_quantized_cache_logits_stay_close_to_the_float_cache(packages, model):
    chunks = [48] + [1] * 48  # a prompt, then decode steps reading the quantized cache
    ref, _ = _run(packages[f"{model}-float32"], IDS, chunks)
    for kv, kl_max in (("int8", 1e-3), ("int4", 5e-2)):
        got, _ = _run(packages[f"{model}-{kv}"], IDS, chunks)
        kl = _kl(ref, got)
        print(f"{model} {kv}: mean KL vs float32 cache {kl:.2e}, greedy agreement "
              f"{(ref.argmax(-1) == got.argmax(-1)).mean():.3f}")
        assert kl <= kl_max
        if kv == "int8":
            assert (ref.argmax(-1) == got.argmax(-1)).mean() >= 0.95
        same, _ = _run(packages[f"{model}-{kv}"], IDS, [96])  # one prefill reads the same quantized cache
        assert np.abs(same - got).max() <= 1e-3 * np.abs(got).max()


def test_manifest_describes_the_quantized_cache(packages):
    f32 = load_manifest(packages["phi4-float32"])
    for kv, ratio, storage in (("int8", 4, "int8"), ("int4", 8, "uint8")):
        m = load_manifest(packages[f"phi4-{kv}"])
        assert m.contract.kv_dtype == kv and m.contract.kv_storage == storage
        assert m.contract.kv_bytes_per_token * ratio == f32.contract.kv_bytes_per_token
        assert m.min_onnxruntime == "1.27.0"
        note = m.quantization["kv_cache"]
        assert note["bits"] == {"int8": 8, "int4": 4}[kv] and note["calibration"]["tokens"] >= 64
        raw = json.loads((m.folder / "manifest.json").read_text())["io"]["kv_cache"]
        assert raw["storage_head_dim"] == m.contract.head_dim // (2 if kv == "int4" else 1)


def _export_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "export", *map(str, args), "--quiet", "--precision", "fp32"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_calibration_file_sets_the_scales_and_bad_ones_are_one_line(packages, tmp_path):
    checkpoint = packages["phi-float32"].parent / "phi"
    text = tmp_path / "sample.txt"
    text.write_text("the quick brown fox jumps over the lazy dog; " * 80)
    proc = _export_cli(checkpoint, tmp_path / "pkg", "--kv-dtype", "int8", "--calibration", text)
    assert proc.returncode == 0, proc.stderr
    m = load_manifest(tmp_path / "pkg")
    assert m.quantization["kv_cache"]["calibration"]["source"] == "sample.txt"
    mine = onnx.load(str(tmp_path / "pkg" / MODEL), load_external_data=False).graph.initializer
    stdlib = onnx.load(str(packages["phi-int8"] / MODEL), load_external_data=False).graph.initializer
    pick = lambda inits: onnx.numpy_helper.to_array(next(t for t in inits if t.name == "kv_scale.0.key"))  # noqa: E731
    assert not np.allclose(pick(mine), pick(stdlib))
    (tmp_path / "short.txt").write_text("hi")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    for args, expect in (((tmp_path / "missing.txt",), "does not exist"), ((tmp_path / "short.txt",), "at least 64"),
                         ((tmp_path / "latin1.txt",), "is not UTF-8")):
        proc = _export_cli(checkpoint, tmp_path / "bad", "--kv-dtype", "int8", "--calibration", *args)
        assert proc.returncode == 2 and expect in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    proc = _export_cli(checkpoint, tmp_path / "bad", "--kv-dtype", "float32", "--calibration", text)
    assert proc.returncode == 2 and "add --kv-dtype int8" in proc.stderr, proc.stderr
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------- the cache grows with the sequence


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=40), st.integers(1, 5000))
def test_growth_doubles_in_steps_up_to_the_limit(steps, limit):
    allocated, length, copied = 0, 0, 0
    for n in steps:
        if length + n > limit:
            with pytest.raises(ValueError):
                grown_capacity(allocated, length + n, limit)
            break
        new = grown_capacity(allocated, length + n, limit)
        assert length + n <= new <= limit
        if new != allocated:
            assert new == limit or (new % STEP == 0 and new >= max(FIRST, 2 * allocated))
            copied += length
            allocated = new
        length += n
    assert copied < 2 * max(length, 1)


def test_growing_cache_gives_the_logits_of_one_prefill(packages):
    """Steps that cross reallocations (256, 512) give the logits one prefill of the same ids gives."""
    ids = [int(i) for i in np.random.default_rng(2).integers(0, 512, 128)]
    package = packages["phi-float32"]
    manifest = load_manifest(package)
    backend = OrtBackend(manifest, EngineOptions(threads=1))
    assert backend.kv.capacity == 0 and backend.kv.nbytes == 0  # nothing allocated before the first step
    backend.step(ids[:100])
    assert backend.kv.capacity == min(FIRST, manifest.max_length)
    stepped = [backend.step([t]) for t in ids[100:]]
    whole, _ = _run(package, ids, [128])
    assert np.abs(np.stack(stepped) - whole[100:]).max() <= 1e-4


def test_a_128k_package_allocates_for_the_tokens_held(tmp_path):
    """A tiny model with a 131072-position context (its rotary tables cover it all): loading allocates nothing,
    300 then 100 tokens allocate 320 then 640
    positions, not 131072."""
    from tests.conftest import hf_reference, ours_from_reference
    from tests.test_runtime import make_tokenizer
    from train import save_pretrained
    from train.config import preset

    config = preset("tiny-phi-1_5").replace(max_position_embeddings=131072)
    save_pretrained(ours_from_reference(hf_reference(config), config), tmp_path / "ckpt",
                    tokenizer=make_tokenizer(tmp_path / "tokenizer.json"))
    package = export_package(tmp_path / "ckpt", tmp_path / "pkg", show_progress=False)
    backend = OrtBackend(load_manifest(package), EngineOptions(threads=1))
    assert backend.capacity == backend.plan.context > 300 and backend.kv.nbytes == 0
    backend.step(list(range(1, 301)))
    assert backend.kv.capacity == 320  # the first allocation: the tokens held, in multiples of 64
    backend.step(list(range(1, 101)))
    assert backend.kv.capacity == 640  # then at least doubled
    assert backend.kv.nbytes == 640 * backend.contract.kv_bytes_per_token


# ---------------------------------------------------------------- the context plan


def test_context_plan_follows_free_memory_as_the_android_plan_does():
    m = load_manifest(DEFAULT_PACKAGE)
    per = m.contract.kv_bytes_per_token
    weights = sum(e["bytes"] for n, e in m.files.items() if n.startswith("model.onnx"))
    plenty = plan_context(m, None, 8 << 30)
    assert plenty.context == m.max_length and not plenty.limited_by_memory and "fits in" in plenty.describe()
    assert plan_context(m, 100, 8 << 30).context == 100
    assert plan_context(m, None, None) == ContextPlan(m.max_length, m.max_length, None, None, weights, per,
                                                      m.contract.vocab_size * 4)
    # free memory for the weights, overhead and 200 positions: 192 (a multiple of 64), named in one line
    need = (weights + m.contract.vocab_size * 4 + (96 << 20) + 200 * per) / 0.6 + 1
    tight = plan_context(m, None, int(need))
    assert tight.context == 192 and tight.limited_by_memory
    assert tight.describe().startswith(f"context 192 of {m.max_length} positions (limited by ")
    with pytest.raises(ValueError, match="close other programs"):
        plan_context(m, None, 64 << 20)
    with pytest.raises(ValueError, match="max_length"):
        plan_context(m, m.max_length + 1, None)


def test_contract_rejects_what_a_packed_cache_cannot_hold():
    with pytest.raises(ValueError, match="head_dim 33"):
        Contract(n_layers=1, kv_heads=1, head_dim=33, vocab_size=8, kv_dtype="int4")
    with pytest.raises(ValueError, match="kv dtype 'int2'"):
        Contract(n_layers=1, kv_heads=1, head_dim=32, vocab_size=8, kv_dtype="int2")


def test_a_long_step_runs_in_pieces_whose_attention_scratch_is_bounded(monkeypatch):
    """GroupQueryAttention's CPU kernel holds heads x rows x capacity float32 scores for a run: a prompt goes in runs
    of step_rows tokens (32 MiB of scores, 64-256 rows), the last with every row whose logits are kept, and the
    logits are those of one run."""
    from runtime import engine, kvcache

    assert kvcache.step_rows(32, 4096) == 64 and kvcache.step_rows(32, 256) == 256  # Phi-3-mini: 4k, short
    assert kvcache.step_rows(24, 5461) == 64 and kvcache.step_rows(24, 16384) == 64  # Phi-4-mini; the floor at 16k
    manifest = load_manifest(DEFAULT_PACKAGE)
    assert manifest.contract.logits == "last" and manifest.rope_switch is None
    ids = [int(i) for i in np.random.default_rng(5).integers(0, manifest.contract.vocab_size, 300)]
    monkeypatch.setattr(engine, "step_rows", lambda heads, capacity: 10**9)
    whole = OrtBackend(manifest, EngineOptions(threads=1))
    want = whole.step(ids[:290])
    want_rows = whole.step_all(ids[290:], keep=3)
    monkeypatch.setattr(engine, "step_rows", lambda heads, capacity: 40)
    pieces = OrtBackend(manifest, EngineOptions(threads=1))
    runs = []
    run = pieces._run
    monkeypatch.setattr(pieces, "_run", lambda ids, keep, width=None: runs.append((len(ids), keep)) or run(ids, keep))
    got = pieces.step(ids[:290])
    assert runs == [(40, 1)] * 7 + [(10, 1)] and pieces.length == 290
    runs.clear()
    got_rows = pieces.step_all(ids[290:], keep=3)  # 10 tokens: fewer than 40, one run
    assert runs == [(10, 3)]
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max() and np.argmax(got) == np.argmax(want)
    assert np.abs(got_rows - want_rows).max() <= 1e-3 * np.abs(want_rows).max()
    runs.clear()
    pieces.truncate(200)
    pieces.step_all(ids[200:290], keep=60)  # the last run holds the 60 rows kept
    assert runs == [(30, 1), (60, 60)]


def test_a_step_that_fails_in_its_third_run_holds_nothing_of_it(monkeypatch):
    from runtime import engine

    manifest = load_manifest(DEFAULT_PACKAGE)
    monkeypatch.setattr(engine, "step_rows", lambda heads, capacity: 16)
    backend = OrtBackend(manifest, EngineOptions(threads=1))
    backend.step(list(range(1, 11)))
    calls, run = [], backend._run

    def failing(ids, keep, width=None):
        calls.append(len(ids))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return run(ids, keep, width)

    monkeypatch.setattr(backend, "_run", failing)
    with pytest.raises(KeyboardInterrupt):
        backend.step(list(range(1, 61)))
    assert calls == [16, 16, 16] and backend.length == 10
