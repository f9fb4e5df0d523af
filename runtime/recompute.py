"""A backend wrapper that keeps the cache what a fresh computation of its tokens would hold, for packages whose cache
cannot always go back or forward in place. The Kotlin engine (Recompute.kt) and the web engine (js/recompute.js)
wrap theirs the same way.

LongRoPE (manifest "rope_switch"): the graph rotates with the short tables while a step's total length (cached +
new) is at most `switch`, and with the long tables once it is longer. So the cache is "short" while its length is
at most `switch`, and "long" after. Two moves would mix them:

    growing past the switch     length 10, step([a, b, c]) with switch 12: the cached keys are short, the new
                                ones would be long -> feed p0 .. p9, a, b, c again from an empty cache
    truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh computation of 20
                                tokens is short -> the 20 tokens are fed again, with the next step's ids

Sliding window (io.kv_cache "window"): the buffer of C positions evicts the oldest G = C - W + 1 rows at once
whenever a sequence passes C, C + G, C + 2G, ... (runtime/contract.py). Growing is always exact; truncating from T
back to n is exact only when no eviction happened between them (evictions(n) == evictions(T)): the rows of the n
tokens were shifted away otherwise, and the n tokens are fed again.

Both recompute from the token ids, which the wrapper records (transformers' generate drops its cache at the
switch too). A truncation that cannot be done in place costs nothing until the next step, which then feeds the
kept tokens and its own in one step. `rollback_limit` tells speculative decoding how far a verify step may grow
the cache and still be taken back in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .kvcache import window_buffer


@dataclass(frozen=True)
class RopeSwitch:
    switch: int

    def exact(self, length: int, to: int) -> bool:
        """Whether truncating a cache of `length` positions to `to` leaves what `to` fresh tokens would hold."""
        return not length > self.switch >= to

    def crosses(self, past: int, n: int) -> bool:
        """Whether a step of n tokens after `past` must feed the whole sequence again."""
        return 0 < past <= self.switch < past + n

    def limit(self, length: int) -> int | None:
        """The longest the cache may grow from `length` and be truncated back exactly (None: any)."""
        return self.switch if length <= self.switch else None


@dataclass(frozen=True)
class Window:
    buffer: int  # C: positions the buffer holds
    window: int  # W: the keys a query sees, its own included

    @property
    def batch(self) -> int:
        """G: rows dropped at each eviction."""
        return self.buffer - self.window + 1

    def evictions(self, length: int) -> int:
        return 0 if length <= self.buffer else math.ceil((length - self.buffer) / self.batch)

    def held(self, length: int) -> int:
        """Rows of the buffer in use after `length` tokens."""
        return length - self.batch * self.evictions(length)

    def exact(self, length: int, to: int) -> bool:
        return self.evictions(length) == self.evictions(to)

    def crosses(self, past: int, n: int) -> bool:
        return False

    def limit(self, length: int) -> int | None:
        return self.buffer + self.batch * self.evictions(length)


class RecomputingBackend:
    """runtime.backend.Backend over `inner` (an OrtBackend, or anything with step/step_all/truncate) and the rules
    its package needs. The inner cache holds all `length` positions, or none while a truncation that could not be
    done in place waits for the next step (stale: inner.length != length)."""

    def __init__(self, inner, rules: Sequence):
        self.inner, self.rules = inner, tuple(rules)
        self._ids = np.zeros(inner.capacity, np.int64)  # the tokens of every cached position
        self._length = 0  # positions the caller sees

    def __getattr__(self, name: str):  # vocab_size, capacity, can_step_all, manifest, ... of the inner backend
        return getattr(self.inner, name)

    @property
    def length(self) -> int:
        return self._length

    @property
    def rollback_limit(self) -> int | None:
        """The longest the cache may grow from its length and still be truncated back in place (None: any)."""
        limits = [r.limit(self._length) for r in self.rules]
        return min((x for x in limits if x is not None), default=None)

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a cache of {self._length} positions to {length}")
        stale = self.inner.length != self._length
        if stale or length == 0 or not all(r.exact(self._length, length) for r in self.rules):
            self.inner.truncate(0)  # fed again with the next step
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
        if self.inner.length != past or any(r.crosses(past, n) for r in self.rules):  # stale, or must recompute
            self.inner.truncate(0)  # stale until the run below succeeds
            fed = np.concatenate([self._ids[:past], ids])  # the whole sequence, computed as a fresh run would
        else:
            fed = ids
        try:
            out = run(fed)  # bad ids raise here, and the cache stays as it was (or stale)
        except BaseException:
            if not all(r.exact(past + n, past) for r in self.rules):  # its runs may have evicted rows past held
                self.inner.truncate(0)
            raise
        self._ids[past:past + n] = ids
        self._length = past + n
        return out


def rules(manifest, context: int) -> list:
    """What `manifest`'s package needs recomputed with a context of `context` positions: its LongRoPE switch, its
    sliding window (whose buffer the runtime sizes by runtime/kvcache.py window_buffer)."""
    found = []
    if manifest.rope_switch is not None:
        found.append(RopeSwitch(manifest.rope_switch))
    window = manifest.contract.window
    if window is not None:
        found.append(Window(window_buffer(window, context), window))
    return found


def with_recompute(backend, manifest):
    """`backend` wrapped for `manifest`'s LongRoPE switch and sliding window, or as it is when it has neither."""
    found = rules(manifest, backend.capacity)
    return RecomputingBackend(backend, found) if found else backend
