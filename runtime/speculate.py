"""Drafts for exact speculative decoding by prompt lookup: no second model, only the text so far.

    ids so far  ... a b c d ... x y [a b c]        the last n tokens (n = 3, 2, 1) occurred before,
                        ^^^^^^^^                   followed by "d ...": draft those K tokens
    verify      step_all([token, d1 .. dK])        one decode step returns K + 1 rows of logits
    accept      the longest prefix the sampler agrees with, then one token of its own; the cache is
                truncated past the last accepted position (runtime/loop.py)

Drafts never change what is generated: greedy keeps a draft only where it equals the argmax, sampling uses the
accept/reject rule of runtime.sampling.Sampler.verify. They change only how many steps it takes. How many to
draft (K) is chosen from two numbers: what a verify step of S tokens costs against a plain one on this device,
1 + c (S - 1) (verify_cost measures c once per package and device), and how often drafts have been kept lately
(a decayed rate a). K maximizes the expected tokens per step time,

    (1 + a + a^2 + .. + a^K) / (1 + c K)     against 1 for a plain step (K = 0),

so drafting stops wherever it would cost more than it saves (a <= c), pausing and probing with one draft now and
then; text with nothing to look up costs a dictionary lookup per token.
"""

from __future__ import annotations

from collections.abc import Iterable

DRAFTS = ("none", "ngram")
MAX_NGRAM = 3  # the longest suffix looked up; shorter ones are tried when it has no earlier occurrence
MAX_PAUSE = 32  # decode steps without drafting, at most, before a one-token probe
# A verify step of S tokens costs cost(1) * (1 + c * (S - 1)). c is measured on the device (verify_cost, cached);
# this is the fallback where it cannot be: phi-1.5 size, int4 b128, 2 x86 cores (benchmarks/RESULTS.md, "verify").
DEFAULT_COST = 0.25
PRIOR_ACCEPTANCE, PRIOR_WEIGHT = 0.6, 2.0  # what a drafter believes before its first verify: 1.2 of 2 kept
DECAY = 0.8  # each verify's weight against the ones before it: acceptance follows the text's local repetition
COST_SIZES = (1, 2, 5, 9)  # the step sizes verify_cost times


def expected_tokens(acceptance: float, k: int) -> float:
    """Tokens a verify step of k drafts yields when each is kept with probability `acceptance` until the first
    miss: the kept prefix and the sampler's own next token, sum of acceptance^i for i = 0 .. k."""
    return k + 1.0 if acceptance >= 1 else (1 - acceptance ** (k + 1)) / (1 - acceptance)


def best_k(acceptance: float, cost: float, most: int) -> int:
    """The draft count (0 .. most) with the most tokens per unit of step time, expected_tokens / (1 + cost * k);
    0 (a plain step, 1 token per unit) unless drafting beats it."""
    best, value = 0, 1.0
    for k in range(1, most + 1):
        v = expected_tokens(acceptance, k) / (1 + cost * k)
        if v > value * (1 + 1e-9):
            best, value = k, v
    return best


class NgramDrafter:
    """Proposes the tokens that followed the most recent earlier occurrence of the text's last n tokens, as many as
    pay for their verify step: K comes from the step cost line (`cost`) and the running acceptance rate."""

    def __init__(self, max_tokens: int, ids: Iterable[int] = (), cost: float = DEFAULT_COST):
        if max_tokens < 1:
            raise ValueError(f"draft tokens must be >= 1, got {max_tokens}")
        if not cost >= 0:
            raise ValueError(f"the verify cost per drafted token must be >= 0 (a fraction of a step), got {cost}")
        self.max_tokens, self.cost = max_tokens, float(cost)
        self.ids: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> where the token after its latest occurrence is
        self._kept, self._tried = PRIOR_ACCEPTANCE * PRIOR_WEIGHT, PRIOR_WEIGHT  # decayed counts (acceptance)
        self._idle = 0  # plain-step decisions in a row
        self._pause = 0  # decode steps left without drafting
        self.extend(ids)

    @property
    def acceptance(self) -> float:
        return self._kept / self._tried

    @property
    def k(self) -> int:
        """Drafts the next proposal holds at most (0: a plain step pays more)."""
        return best_k(self.acceptance, self.cost, self.max_tokens)

    def extend(self, ids: Iterable[int]) -> None:
        """Appends tokens of the text (prompt, accepted tokens); each indexes the n-grams just before it."""
        for token in ids:
            p = len(self.ids)
            for n in range(1, min(MAX_NGRAM, p) + 1):
                self._after[tuple(self.ids[p - n:p])] = p
            self.ids.append(int(token))

    def propose(self, limit: int) -> list[int]:
        """Up to min(K, limit) drafted tokens to follow the text; [] when nothing matches or a plain step pays
        more. While drafting does not pay, it pauses 1, 2, 4 .. 32 steps, then probes with one draft, so the
        acceptance rate can recover when the text starts repeating itself."""
        if self._pause:
            self._pause -= 1
            count = 1 if not self._pause else 0  # the probe
        else:
            count = best_k(self.acceptance, self.cost, min(self.max_tokens, limit))
            if count == 0 and limit >= 1:
                self._pause = min(MAX_PAUSE, 2 ** self._idle)
                self._idle += 1
                return []
        count = min(count, limit)
        if count < 1:
            return []
        for n in range(min(MAX_NGRAM, len(self.ids)), 0, -1):
            at = self._after.get(tuple(self.ids[-n:]))
            if at is not None:
                return self.ids[at:at + count]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Records a verify: `accepted` of `drafted` kept, the first miss after them (if any) a failed trial."""
        self._kept = DECAY * self._kept + accepted
        self._tried = DECAY * self._tried + accepted + (1 if accepted < drafted else 0)
        if best_k(self.acceptance, self.cost, self.max_tokens):  # drafting pays again: no pause, none pending
            self._idle = self._pause = 0


def verify_cost(backend, sizes: tuple[int, ...] = COST_SIZES, repeats: int = 3) -> float | None:
    """The cost line's slope c on this backend: steps of each size in `sizes` from its current length (median of
    `repeats`, each taken back), c fitted through cost(S) / cost(1) = 1 + c * (S - 1). None when the cache has no
    room for the largest step, or a step there could not be taken back in place (runtime/recompute.py)."""
    import statistics
    import time

    start, top = backend.length, max(sizes)
    room = backend.capacity
    until = getattr(backend, "rollback_limit", None)
    if until is not None:
        room = min(room, until)
    if start + top >= room:
        return None
    times = {}
    for size in sizes:
        runs = []
        for _ in range(repeats + 1):  # the first run of a size warms its buffers up
            t = time.perf_counter()
            backend.step_all([0] * size) if size > 1 else backend.step([0])  # all rows, as a verify
            runs.append(time.perf_counter() - t)
            backend.truncate(start)
        times[size] = statistics.median(runs[1:])
    return slope(times)


def slope(times) -> float:
    """c of cost(S) / cost(1) = 1 + c (S - 1), least squares through the origin, from {S: a step's time} holding
    S = 1 and at least one larger S; at least 0."""
    ratio = {s: times[s] / times[1] - 1 for s in times if s > 1}
    return max(0.0, sum(r * (s - 1) for s, r in ratio.items()) / sum((s - 1) ** 2 for s in ratio))
