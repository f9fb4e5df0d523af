"""Sliding-window packages (Phi-3-mini-4k's kind): a cache of window + EVICT positions that the graph evicts within
(GroupQueryAttention's sliding_window_cache), logits through evictions equal to PyTorch's, truncation in place where
no eviction happened and recomputed where one did, drafts capped before an eviction (runtime/recompute.py)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from export.options import ExportOptions
from export.package import export_package
from runtime import kvcache
from runtime.engine import EngineOptions, OrtBackend
from runtime.loop import GenerationConfig, generate_ids
from runtime.manifest import MODEL, load_manifest
from runtime.recompute import RecomputingBackend, Window, with_recompute
from tests.test_export_phi3 import torch_steps
from tests.test_phi3 import hf_phi3, ours, preset
from tests.test_runtime import GREEDY, make_tokenizer
from train import save_pretrained

EVICT = 5  # a buffer of 48 + 5 positions: evictions of 6 rows at 54, 60, 66, ...
IDS = [int(i) for i in np.random.default_rng(1).integers(3, 512, 120)]


@pytest.fixture(scope="module", params=["tiny-phi-3-4k", "tiny-phi-3"])  # a window alone; with LongRoPE's switch
def window_package(request, tmp_path_factory):
    """(name, our PyTorch model, fp32 package): a 48-position window in a 128-position context."""
    config = preset(request.param)
    model = ours(hf_phi3(config, seed=5), config)
    folder = tmp_path_factory.mktemp(request.param)
    save_pretrained(model, folder / "ckpt", tokenizer=make_tokenizer(folder / "tokenizer.json"))
    package = export_package(folder / "ckpt", folder / "pkg", ExportOptions(precision="fp32", kv_dtype=None),
                             show_progress=False)
    return request.param, model, package


@pytest.fixture(autouse=True)
def small_evict(monkeypatch):
    monkeypatch.setattr(kvcache, "EVICT", EVICT)


def backend(package) -> RecomputingBackend:
    manifest = load_manifest(package)
    wrapped = with_recompute(OrtBackend(manifest, EngineOptions(threads=1)), manifest)
    assert isinstance(wrapped, RecomputingBackend)
    return wrapped


def test_the_package_evicts_past_its_window_and_says_so(window_package):
    _, _, package = window_package
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["io"]["kv_cache"]["window"] == 48 and manifest["min_onnxruntime"] == "1.29.0"
    gqa = [n for n in onnx.load(str(package / MODEL), load_external_data=False).graph.node
           if n.op_type == "GroupQueryAttention"]
    assert all({a.name: a.i for a in n.attribute}.get("sliding_window_cache") == 1 for n in gqa) and gqa


@pytest.mark.parametrize("prefill", [12, 70])  # decoding through evictions; a prompt longer than the buffer
def test_logits_through_evictions_equal_pytorch(window_package, prefill):
    name, model, package = window_package
    b = backend(package)
    got = np.stack([b.step(chunk) for chunk in [IDS[:prefill]] + [[t] for t in IDS[prefill:]]])
    want = torch_steps(model, IDS, prefill)
    assert np.abs(got - want).max() <= 1e-4, (name, prefill, np.abs(got - want).max(axis=1))
    assert b.inner.kv.capacity == 48 + EVICT  # 120 tokens held in 53 positions
    assert b.inner.window_buffer == 53 and b.inner.plan.positions == 53


@pytest.mark.parametrize("length, to", [(58, 55), (58, 50), (100, 97), (100, 80)])  # in place / evicted between
def test_truncation_is_in_place_only_where_no_eviction_happened(window_package, length, to):
    _, _, package = window_package
    b = backend(package)
    b.step(IDS[:length])
    in_place = Window(48 + EVICT, 48).exact(length, to)  # (LongRoPE's switch at 32 is behind both)
    b.truncate(to)
    assert (b.inner.length == to) == in_place
    got = b.step(IDS[to:to + 6])
    fresh = backend(package)
    fresh.step(IDS[:to])
    np.testing.assert_allclose(got, fresh.step(IDS[to:to + 6]), atol=1e-4)


def test_window_rule_matches_the_kernel_arithmetic():
    rule = Window(53, 48)  # G = 6
    assert [rule.held(t) for t in (53, 54, 59, 60, 61)] == [53, 48, 53, 48, 49]
    assert rule.exact(59, 54) and not rule.exact(60, 59) and rule.limit(54) == 59 and rule.limit(10) == 53


def test_drafts_stop_before_an_eviction_and_generation_equals_greedy(window_package, monkeypatch):
    """Prompt-lookup drafts on a repetitive prompt verify in steps that never cross an eviction, so a rejected draft
    is always undone in place (no recomputation), and the tokens are greedy's."""
    _, _, package = window_package
    prompt = (IDS[:9] * 8)[:60]
    plain = generate_ids(backend(package), prompt, GenerationConfig(40, GREEDY, stop_at_eos=False)).tokens
    b = backend(package)
    recomputed = []
    inner_truncate = b.inner.truncate
    monkeypatch.setattr(b.inner, "truncate", lambda n: (recomputed.append(n) if n == 0 else None) or inner_truncate(n))
    drafted = generate_ids(b, prompt, GenerationConfig(40, GREEDY, stop_at_eos=False, draft="ngram"))
    assert drafted.tokens == plain
    assert drafted.stats.draft_tokens > drafted.stats.accepted_tokens > 0  # drafts taken and rejected
    assert recomputed == []  # every rejection undone in place


def test_the_context_plan_counts_the_buffer_not_the_context(window_package):
    """Memory that fits the buffer (53 positions) but not the context (128) still gives the whole context."""
    _, _, package = window_package
    manifest = load_manifest(package)
    per = manifest.contract.kv_bytes_per_token
    weights = sum(int(e.get("bytes", 0)) for n, e in manifest.files.items() if n.startswith("model.onnx"))
    fixed = weights + manifest.contract.vocab_size * 4 + kvcache.OVERHEAD
    available = int((fixed + 60 * per) / kvcache.SHARE) + 1  # room for 60 positions
    plan = kvcache.plan_context(manifest, None, available)
    assert plan.context == manifest.max_length == 128 and plan.positions == 53 and not plan.limited_by_memory
    assert "KV cache" in plan.describe() and f"{53 * per / 2**20:.0f} MiB at most" in plan.describe()
    assert kvcache.plan_context(manifest, 32, available).positions == 48  # never fewer than the window, held whole
    with pytest.raises(ValueError, match="64 positions of KV cache"):  # less than the buffer, and than a STEP
        kvcache.plan_context(manifest, None, int((fixed + 40 * per) / kvcache.SHARE))
