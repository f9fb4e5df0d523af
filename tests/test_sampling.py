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


# ---------------------------------------------------------------- extreme values (issue 21.4)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from runtime.sampling import FLOAT32_MAX, FLOAT32_TINY, weights  # noqa: E402

EXTREMES = [0.0, 5e-324, 1e-300, 1e-50, 1e-45, FLOAT32_TINY / 2, FLOAT32_TINY, 1e-30, 1e-6, 0.7, 1.0, 2.0, 1e6,
            1e30, FLOAT32_MAX, 1e39, 1e300, float("inf"), float("nan"), -1.0, -0.0]
values = st.one_of(st.sampled_from(EXTREMES), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(temperature=values, top_p=values, penalty=values, top_k=st.sampled_from([0, 1, 2, 5, 600, 10**9]),
       seed=st.integers(0, 2**32), big=st.sampled_from([1.0, 1e30, 3e38]))
def test_extreme_settings_are_refused_or_never_sample_a_suppressed_id(temperature, top_p, penalty, top_k, seed, big):
    """Values that underflow or overflow float32 are refused with a ValueError; every accepted setting draws an id
    of the vocabulary that is not suppressed, from finite non-negative weights."""
    try:
        config = SamplingConfig(temperature=temperature, top_p=top_p, repetition_penalty=penalty, top_k=top_k,
                                seed=seed % 2**32)
    except ValueError as e:
        assert str(e).count("\n") == 0
        return
    assert temperature == 0 or FLOAT32_TINY <= temperature <= FLOAT32_MAX
    assert FLOAT32_TINY <= penalty <= FLOAT32_MAX and 0 < top_p <= 1
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):  # 3e38 x a normal draw: some logits are +inf, as a broken model gives
        logits = (rng.standard_normal(512) * big).astype(np.float32)
    suppress = np.zeros(512, bool)
    suppress[rng.integers(0, 512, 100)] = True
    suppress[int(np.argmax(logits))] = True  # the most likely id is one that may never be drawn
    sampler = Sampler(config, suppress)
    sampler.observe(rng.integers(0, 512, 200))
    for _ in range(3):
        token = sampler(logits)
        assert 0 <= token < 512 and not suppress[token], (config, token)
    assert sampler.verify(logits, int(np.flatnonzero(suppress)[0])) not in np.flatnonzero(suppress)
    if not config.greedy:
        w = weights(sampler._prepare(logits), config)
        assert np.all(np.isfinite(w)) and np.all(w >= 0) and not w[suppress].any()


@pytest.mark.parametrize("kwargs", [dict(temperature=1e-50), dict(temperature=1e-300), dict(temperature=float("inf")),
                                    dict(repetition_penalty=1e-300), dict(repetition_penalty=1e300),
                                    dict(top_k=2.5), dict(top_p="0.9"), dict(temperature=True)])
def test_values_float32_cannot_hold_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("_", ".")):
        SamplingConfig(**kwargs)
