"""Speculative decoding by prompt lookup: the same greedy tokens, the same sampling distribution, the cache left
as plain decoding leaves it, and a drafter that adapts."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

import runtime
from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig, generate_ids
from runtime.sampling import SamplingConfig
from runtime.speculate import NgramDrafter, best_k, expected_tokens

GREEDY = SamplingConfig(temperature=0)
PROMPTS = [
    "def fibonacci(n):",
    "import os\nimport sys\n\ndef main():\n    args = sys.argv\n    for a in args:\n        print(a)\n\n"
    "def main2():\n    args = sys.argv\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)\n\n    def pop(self):\n",
    "Rewrite this function with a docstring:\n\ndef area(w, h):\n    return w * h\n\ndef area(w, h):\n",
]


@pytest.fixture(scope="module")
def demo():
    return runtime.load(options=EngineOptions(threads=1))


# ---------------------------------------------------------------- the drafter


def test_drafter_proposes_what_followed_the_latest_occurrence():
    d = NgramDrafter(4, [1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 2, 3])
    assert d.k == 2  # the prior (0.6 kept) at the default cost line
    assert d.propose(10) == [7, 8]  # "2 3" last occurred before "7 8 ..." (the latest, not the first)
    d.feedback(2, 2)
    assert d.k == 4 and d.propose(10) == [7, 8, 2, 3]  # every draft kept: the rate rises, and K with it
    d.extend([7])
    assert d.propose(10) == [8, 2, 3, 7]  # "2 3 7" is a longer match than "3 7"
    assert d.propose(2) == [8, 2]
    assert NgramDrafter(4, [1, 2, 3]).propose(10) == []  # nothing to look up


def test_k_maximizes_expected_tokens_per_step_time():
    assert expected_tokens(0.5, 2) == pytest.approx(1 + 0.5 + 0.25) and expected_tokens(1.0, 3) == 4
    assert best_k(0.2, 0.25, 8) == 0  # kept less often than a drafted token costs: plain steps
    assert best_k(0.9, 0.0, 8) == 8  # free verify steps: as many drafts as allowed
    ks = [best_k(a, 0.25, 8) for a in (0.3, 0.5, 0.7, 0.9, 0.99)]
    assert ks == sorted(ks) and ks[0] >= 1 and ks[-1] == 8
    for a in np.linspace(0, 1, 21):  # brute force over K agrees
        for c in (0.0, 0.1, 0.25, 0.6, 1.5):
            k = best_k(a, c, 8)
            values = [expected_tokens(a, j) / (1 + c * j) for j in range(9)]
            assert values[k] == pytest.approx(max(values))


def _simulate(acceptance: float, cost: float, tokens: int = 4000, seed: int = 0) -> float:
    """Step time per token of lookup decoding on a stream where every draft is kept with probability
    `acceptance` until the first miss and a step of S tokens costs 1 + cost (S - 1); plain decoding: 1."""
    rng = np.random.default_rng(seed)
    d = NgramDrafter(8, list(range(100)) * 2, cost)  # the text repeats 100 tokens back: 8 drafts at every step
    made = time = 0.0
    while made < tokens:
        k = len(d.propose(8))
        time += 1 + cost * k
        kept = 0
        while kept < k and rng.random() < acceptance:
            kept += 1
        if k:
            d.feedback(k, kept)
        made += kept + 1
    return time / made


@pytest.mark.parametrize("cost", [0.05, 0.25, 0.6])
def test_lookup_is_never_slower_than_plain_decoding_and_gains_where_drafts_are_kept(cost):
    for acceptance in (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0):
        relative = _simulate(acceptance, cost)
        assert relative <= 1.02, (acceptance, cost, relative)  # probes cost a little when nothing is kept
        optimum = min(1 / (expected_tokens(acceptance, k) / (1 + cost * k)) for k in range(9))
        assert relative <= optimum * 1.08, (acceptance, cost, relative, optimum)  # the best fixed K, in hindsight


def test_drafter_pauses_when_drafts_do_not_pay_and_probes_with_one():
    d = NgramDrafter(8, [5, 6, 5, 6, 5])
    for _ in range(3):
        d.feedback(2, 0)  # nothing kept: the rate falls below the cost of a drafted token
    assert d.k == 0
    proposals = [d.propose(100) for _ in range(8)]
    assert proposals[0] == [] and proposals[1] == [6]  # a plain step, then a probe of one draft after 1 step
    d.feedback(1, 1)
    d.feedback(1, 1)
    d.feedback(2, 2)
    assert d.k >= 2 and len(d.propose(100)) >= 2  # kept again: drafting resumes


# ---------------------------------------------------------------- exactness on the demo model


@pytest.mark.parametrize("prompt", PROMPTS, ids=["short", "repeat", "class", "rewrite"])
def test_greedy_tokens_identical_with_and_without_drafts(demo, prompt):
    plain = demo.generate(prompt, GenerationConfig(160, GREEDY, stop_at_eos=False))
    for k in (1, 4, 8):
        spec = demo.generate(prompt, GenerationConfig(160, GREEDY, stop_at_eos=False, draft="ngram", draft_tokens=k,
                                                      draft_cost=0.0))  # free verifies: K drafts at every match
        assert spec.tokens == plain.tokens and spec.text == plain.text
        assert demo.backend.length == len(demo.encode(prompt)) + len(spec.tokens) - 1  # rejected drafts forgotten
    assert spec.stats.draft_tokens > 0 and 0 < spec.stats.decode_steps <= len(plain.tokens) - 1
    assert spec.stats.accepted_tokens + spec.stats.decode_steps == len(spec.tokens) - 1


def test_verify_cost_is_measured_once_per_device_and_leaves_the_cache_as_it_was(demo, monkeypatch, tmp_path):
    import runtime.pipeline as pipeline

    monkeypatch.setenv("PHI_EDGE_CACHE", str(tmp_path))
    ids, backend = demo.encode(PROMPTS[1]), demo.backend
    backend.truncate(0)
    backend.step(ids[:-1])
    want = backend.step([ids[-1]])
    backend.truncate(0)
    backend.step(ids[:-1])
    calls = []
    measure = pipeline.verify_cost
    monkeypatch.setattr(pipeline, "verify_cost", lambda b: calls.append(b.length) or measure(b))
    fresh = pipeline.TextGenerator(demo.manifest, demo._engine)  # the same session, nothing measured yet
    cost = fresh.draft_cost()
    assert calls == [len(ids) - 1] and 0 <= cost < 10 and backend.length == len(ids) - 1  # its steps taken back
    np.testing.assert_array_equal(backend.step([ids[-1]]), want)  # what they wrote past the end is never read
    again = pipeline.TextGenerator(demo.manifest, demo._engine)
    assert again.draft_cost() == pytest.approx(cost) and len(calls) == 1  # a second load reads it from disk
    assert len(list(tmp_path.glob("verify-cost/*.json"))) == 1
    assert again.resolve(GenerationConfig(draft="ngram")).draft_cost == pytest.approx(cost)
    assert again.resolve(GenerationConfig(draft="ngram", draft_cost=0.5)).draft_cost == 0.5
    assert again.resolve(GenerationConfig()).draft_cost is None  # no drafting, nothing measured


def test_stops_inside_a_verified_run_end_where_plain_decoding_ends(demo):
    prompt = PROMPTS[1]
    plain = demo.generate(prompt, GenerationConfig(60, GREEDY, stop_at_eos=False))
    stop = plain.text[30:36]
    for config in (GenerationConfig(60, GREEDY, stop=(stop,), stop_at_eos=False),
                   GenerationConfig(37, GREEDY, stop_at_eos=False)):
        want = demo.generate(prompt, config)
        got = demo.generate(prompt, GenerationConfig(**{**config.__dict__, "draft": "ngram"}))
        assert (got.tokens, got.text, got.finish_reason) == (want.tokens, want.text, want.finish_reason)
        assert demo.backend.length == len(demo.encode(prompt)) + len(got.tokens) - 1


def test_chat_with_drafts_gives_the_same_turns(demo):
    turns = ["def add(a, b):", "Now the same for subtraction."]
    replies = []
    for draft in ("none", "ngram"):
        chat = demo.chat()
        replies.append([chat.send(t, GenerationConfig(40, GREEDY, draft=draft)).text for t in turns])
    assert replies[0] == replies[1]


def test_step_all_rows_match_single_steps(demo):
    backend, ids = demo.backend, demo.encode(PROMPTS[2])
    backend.truncate(0)
    backend.step(ids[:-4])
    rows = backend.step_all(ids[-4:])
    backend.truncate(len(ids) - 4)
    singles = [backend.step([i]) for i in ids[-4:]]
    # Not bit-equal: with accuracy_level 4 ONNX Runtime's MatMulNBits quantizes activations to int8, and a one-row
    # step and a several-row step can round differently (up to 0.02 here; an fp32 package agrees within 1e-5).
    np.testing.assert_allclose(rows, np.stack(singles), atol=0.05)
    assert rows.argmax(1).tolist() == [int(s.argmax()) for s in singles]


def test_a_backend_without_step_all_refuses_drafts_with_the_fix():
    class OneRow:
        vocab_size, capacity, length = 4, 16, 0

        def step(self, ids):
            self.length += len(ids)
            return np.zeros(4, np.float32)

        def truncate(self, n):
            self.length = n

    with pytest.raises(ValueError, match="re-export it .* or pass --draft none"):
        generate_ids(OneRow(), [1, 2], GenerationConfig(4, draft="ngram"))


# ---------------------------------------------------------------- the sampling distribution is unchanged


class TableModel:
    """A model whose next-token logits depend on the last two tokens (a random table); vocab 4, step_all."""

    vocab_size, capacity = 4, 64
    can_step_all = True

    def __init__(self, seed: int = 0):
        self.table = np.random.default_rng(seed).normal(scale=1.5, size=(4, 4, 4)).astype(np.float32)
        self.ids: list[int] = []

    @property
    def length(self) -> int:
        return len(self.ids)

    def truncate(self, n: int) -> None:
        del self.ids[n:]

    def step_all(self, ids):
        rows = []
        for i in ids:
            self.ids.append(int(i))
            rows.append(self.table[self.ids[-2] if len(self.ids) > 1 else 0, self.ids[-1]])
        return np.stack(rows)

    def step(self, ids):
        return self.step_all(ids)[-1]

    def exact(self, prompt: list[int], n: int, config: SamplingConfig) -> dict[tuple[int, ...], float]:
        from runtime.sampling import probabilities

        out = {}
        for seq in itertools.product(range(4), repeat=n):
            p, ctx = 1.0, list(prompt)
            for t in seq:
                ids, probs = probabilities(self.table[ctx[-2], ctx[-1]], config)
                p *= float(probs[list(ids).index(t)]) if t in ids else 0.0
                ctx.append(t)
            out[seq] = p
        return out


def test_sampling_with_drafts_keeps_the_distribution_of_sequences():
    """4-token continuations of a repetitive prompt on a table model: 6,000 draws with drafts against the exact
    probabilities of all 256 sequences; chi-square far below its 0.1 % tail, and drafts were really used."""
    model, prompt = TableModel(), [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
    config = SamplingConfig(temperature=1.0, top_p=0.9, seed=None)
    exact = model.exact(prompt, 4, config)
    counts, used = Counter(), 0
    for seed in range(6000):
        model.truncate(0)
        gen = GenerationConfig(4, SamplingConfig(temperature=1.0, top_p=0.9, seed=seed), stop_at_eos=False,
                               draft="ngram", draft_tokens=3)
        out = generate_ids(model, prompt, gen)
        counts[tuple(out.tokens)] += 1
        used += out.stats.accepted_tokens
    assert used > 1500  # drafts decided a good share of the 24,000 tokens
    n = sum(counts.values())
    assert all(exact[s] > 0 for s in counts), "a sequence with probability 0 was drawn"
    kept = [s for s, p in exact.items() if p * n >= 5]
    chi = sum((counts[s] - exact[s] * n) ** 2 / (exact[s] * n) for s in kept)
    dof = len(kept) - 1
    assert chi < dof + 5 * np.sqrt(2 * dof)


def test_smaller_kv_cache_packages_generate_the_float32_cache_text(tmp_path, demo):
    """The demo package keeps a float32 cache (exported with --target web, so WebGPU takes it); int8 and float16
    caches of the same weights give the same greedy text at a quarter and half its bytes per position."""
    from export.options import ExportOptions
    from export.package import export_package

    config = GenerationConfig(48, GREEDY, stop_at_eos=False)
    want = demo.generate(PROMPTS[0], config).tokens
    assert demo.manifest.contract.kv_dtype == "float32"
    for kv, ratio in (("int8", 0.25), ("float16", 0.5)):
        out = export_package(runtime.pipeline.DEFAULT_PACKAGE.parents[1] / "train" / "demo", tmp_path / kv,
                             ExportOptions(precision="int4", block_size=32, max_length=512, kv_dtype=kv),
                             show_progress=False)
        other = runtime.load(out, EngineOptions(threads=1))
        assert other.manifest.contract.kv_dtype == kv
        assert other.manifest.contract.kv_bytes_per_token == ratio * demo.manifest.contract.kv_bytes_per_token
        assert other.generate(PROMPTS[0], config).tokens == want, kv