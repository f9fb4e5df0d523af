"""Drafts for exact speculative decoding by prompt lookup: no second model, only the text so far.

    ids so far  ... a b c d ... x y [a b c]        the last n tokens (n = 3, 2, 1) occurred before,
                        ^^^^^^^^                   followed by "d ...": draft those K tokens
    verify      step_all([token, d1 .. dK])        one decode step returns K + 1 rows of logits
    accept      the longest prefix the sampler agrees with, then one token of its own; the cache is
                truncated past the last accepted position (runtime/loop.py)

Drafts never change what is generated: greedy keeps a draft only where it equals the argmax, sampling uses the
accept/reject rule of runtime.sampling.Sampler.verify. They change only how many steps it takes. The drafter
adapts K to how often its drafts are accepted and pauses when they keep failing, so text with nothing to look
up costs a dictionary lookup per token.
"""

from __future__ import annotations

from collections.abc import Iterable

DRAFTS = ("none", "ngram")
MAX_NGRAM = 3  # the longest suffix looked up; shorter ones are tried when it has no earlier occurrence
MAX_PAUSE = 32  # decode steps without drafting, at most, after drafts that kept failing
START_TOKENS = 2  # K starts small: a verify step is not free (phi-1.5 size, 2 x86 cores: 2 tokens cost 1.2-1.3
# steps, 9 tokens about 3; benchmarks/RESULTS.md), so K doubles only while every draft is kept


class NgramDrafter:
    """Proposes the tokens that followed the most recent earlier occurrence of the text's last n tokens."""

    def __init__(self, max_tokens: int, ids: Iterable[int] = ()):
        if max_tokens < 1:
            raise ValueError(f"draft tokens must be >= 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self.k = min(START_TOKENS, max_tokens)  # drafts this many next time; adapted by `feedback`
        self.ids: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> where the token after its latest occurrence is
        self._misses = 0  # verifies in a row that accepted nothing
        self._pause = 0  # decode steps left without drafting
        self.extend(ids)

    def extend(self, ids: Iterable[int]) -> None:
        """Appends tokens of the text (prompt, accepted tokens); each indexes the n-grams just before it."""
        for token in ids:
            p = len(self.ids)
            for n in range(1, min(MAX_NGRAM, p) + 1):
                self._after[tuple(self.ids[p - n:p])] = p
            self.ids.append(int(token))

    def propose(self, limit: int) -> list[int]:
        """Up to min(k, limit) drafted tokens to follow the text; [] when nothing matches or drafting pauses."""
        if self._pause:
            self._pause -= 1
            return []
        count = min(self.k, limit)
        if count < 1:
            return []
        for n in range(min(MAX_NGRAM, len(self.ids)), 0, -1):
            at = self._after.get(tuple(self.ids[-n:]))
            if at is not None:
                return self.ids[at:at + count]
        return []

    def feedback(self, drafted: int, accepted: int) -> None:
        """Adapts K after a verify: doubled when every draft was kept, else the count kept (at least 1); pauses
        drafting for 1, 2, 4 .. 32 steps after verifies in a row that kept nothing."""
        if accepted == drafted:
            self.k = min(self.max_tokens, 2 * self.k)
        else:
            self.k = max(1, accepted)
        self._misses = self._misses + 1 if accepted == 0 else 0
        if self._misses >= 2:
            self._pause = min(MAX_PAUSE, 2 ** (self._misses - 2))  # 1, 2, 4 .. steps
