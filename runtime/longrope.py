"""LongRoPE packages (manifest "rope_switch"): a backend wrapper that keeps the cache what a fresh computation of
its tokens would hold. The Kotlin engine (LongRope.kt) and the web engine (js/longrope.js) wrap theirs the same way.

The graph rotates with LongRoPE's short tables while a step's total length (cached + new) is at most `switch`,
and with the long tables once it is longer. So the cache is "short" (every position rotated with the short
tables) while its length is at most `switch`, and "long" after. Two moves would mix them:

    growing past the switch     length 10, step([a, b, c]) with switch 12: the cached keys are short, the new
                                ones would be long -> feed p0 .. p9, a, b, c again from an empty cache
    truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh computation of 20
                                tokens is short -> the 20 tokens are fed again, with the next step's ids

Both recompute from the token ids, which the wrapper records (transformers' generate drops its cache at the
switch too). A truncation across the switch costs nothing until the next step, which then feeds the kept tokens
and its own in one run.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class LongRopeBackend:
    """runtime.backend.Backend over `inner` (an OrtBackend, or anything with step/step_all/truncate). The inner
    cache holds all `length` positions, or none while a truncation across the switch waits for the next step
    (stale: inner.length != length)."""

    def __init__(self, inner, switch: int):
        self.inner, self.switch = inner, int(switch)
        self._ids = np.zeros(inner.capacity, np.int64)  # the tokens of every cached position
        self._length = 0  # positions the caller sees

    def __getattr__(self, name: str):  # vocab_size, capacity, can_step_all, manifest, ... of the inner backend
        return getattr(self.inner, name)

    @property
    def length(self) -> int:
        return self._length

    @property
    def rope_switch(self) -> int:
        return self.switch

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {length}")
        stale = self.inner.length != self._length
        if stale or length == 0 or self.inner.length > self.switch >= length:
            self.inner.truncate(0)  # keys rotated with the long tables where a fresh run would use the short
        else:
            self.inner.truncate(length)
        self._length = length

    def step(self, ids: Sequence[int]) -> np.ndarray:
        return self._feed(ids, self.inner.step)

    def step_all(self, ids: Sequence[int], keep: int | None = None) -> np.ndarray:
        """Logits (keep, vocab) of the last `keep` of `ids` (default all of them)."""
        keep = len(ids) if keep is None else keep
        return self._feed(ids, lambda fed: self.inner.step_all(fed, keep=keep))

    def _feed(self, ids: Sequence[int], run) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)  # (S,)
        past, n = self._length, len(ids)
        if n < 1:
            raise ValueError("a step needs at least one token id")
        if past + n > self.capacity:
            raise ValueError(f"{n} more tokens do not fit: {past} of {self.capacity} cache positions are in use")
        if self.inner.length != past or 0 < past <= self.switch < past + n:  # stale, or crossing the switch
            self.inner.truncate(0)  # stale until the run below succeeds
            fed = np.concatenate([self._ids[:past], ids])  # the whole sequence, computed as a fresh run would
        else:
            fed = ids
        out = run(fed)  # bad ids raise here, and the cache stays as it was (or stale)
        self._ids[past:past + n] = ids
        self._length = past + n
        return out


def with_rope_switch(backend, switch: int | None):
    """`backend` wrapped for a LongRoPE package's switch, or as it is when the package has none."""
    return backend if switch is None else LongRopeBackend(backend, switch)
