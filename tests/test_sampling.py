"""Sampling without a sort: the kept set and probabilities equal transformers' logits processors, draws follow
them, and speculative sampling's verify rule leaves the distribution unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.sampling import Sampler, SamplingConfig, probabilities

CASES = [(v, scale, t, k, p) for v in (7, 1000, 51200) for scale, t in ((0.3, 0.7), (2.0, 1.0), (8.0, 0.5))
         for k, p in ((0, 0.95), (0, 0.5), (40, 1.0), (40, 0.9), (1, 1.0), (0, 0.999))]


@pytest.mark.parametrize("vocab,scale,temperature,top_k,top_p", CASES)
def test_probabilities_match_transformers_processors(vocab, scale, temperature, top_k, top_p):
    torch = pytest.importorskip("torch")
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(vocab + int(10 * scale) + top_k)
    logits = (rng.standard_normal(vocab) * scale).astype(np.float32)
    if top_p == 1.0:  # ties at the top-k boundary are all kept (top-p's tie order is unspecified in torch)
        logits[rng.integers(0, vocab, vocab // 3)] = np.sort(logits)[-min(top_k or 1, vocab)]
    scores = TemperatureLogitsWarper(temperature)(None, torch.tensor(logits)[None])
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    want = torch.softmax(scores, -1)[0].numpy()
    ids, probs = probabilities(logits, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p))
    got = np.zeros(vocab)
    got[ids] = probs
    assert set(np.flatnonzero(got > 1e-30)) == set(np.flatnonzero(want > 1e-30))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert np.all(np.diff(probs) <= 0)  # most likely first


def _chi_square(draws: list[int], probs: np.ndarray) -> float:
    counts = np.bincount(draws, minlength=len(probs))
    assert not counts[probs == 0].any(), "drew a token outside the kept set"
    expected = probs * len(draws)
    kept = probs > 0
    return float((((counts - expected) ** 2)[kept] / expected[kept]).sum())


def _draft_cases():
    logits = (np.random.default_rng(3).standard_normal(60) * 1.5).astype(np.float32)
    config = SamplingConfig(temperature=0.9, top_p=0.9, seed=11)
    ids, probs = probabilities(logits, config)
    p = np.zeros(60)
    p[ids] = probs
    outside = int(np.flatnonzero(p == 0)[0])
    return logits, config, p, [None, int(ids[0]), int(ids[len(ids) // 2]), outside]


@pytest.mark.parametrize("case", range(4), ids=["plain", "likely-draft", "middle-draft", "draft-outside"])
def test_draws_and_speculative_verify_follow_the_distribution(case):
    """20,000 draws per case; chi-square over about 30 kept tokens stays far below its 0.1 % tail (~60)."""
    logits, config, p, drafts = _draft_cases()
    draft = drafts[case]
    sampler = Sampler(config)
    draws = [sampler(logits) if draft is None else sampler.verify(logits, draft) for _ in range(20_000)]
    dof = int((p > 0).sum()) - 1
    assert _chi_square(draws, p) < dof + 5 * np.sqrt(2 * dof)
    if draft is not None:
        assert abs(draws.count(draft) / len(draws) - p[draft]) < 0.015


def test_greedy_verify_accepts_only_the_argmax():
    logits = np.array([0.1, 2.0, 1.9, -1.0], np.float32)
    sampler = Sampler(SamplingConfig(temperature=0))
    assert sampler.verify(logits, 1) == 1 and sampler.verify(logits, 2) == 1
