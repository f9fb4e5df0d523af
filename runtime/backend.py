"""The interface the generation loop drives: feed token ids, get the last position's logits.

A backend owns one sequence's KV cache of `capacity` positions, of which the first `length` are filled:

    cache  [ p0 p1 ... p(length-1) | free ... ]      capacity positions
    step(ids)      writes positions [length, length + len(ids)), returns logits (vocab,) of the last one
    step_all(ids)  the same, returning logits (len(ids), vocab) of each (when can_step_all: a verify step)
    truncate(n)    forgets positions >= n (truncate(0) empties the cache)

runtime/engine.py implements it on ONNX Runtime; tests implement it with scripted logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class Backend(Protocol):
    @property
    def vocab_size(self) -> int: ...

    @property
    def capacity(self) -> int: ...

    @property
    def length(self) -> int: ...

    def step(self, ids: Sequence[int]) -> np.ndarray:
        """Appends `ids` (at least one) to the cache; returns float32 logits (vocab,) after the last one."""
        ...

    def truncate(self, length: int) -> None:
        ...


class VerifyingBackend(Backend, Protocol):
    """A backend that speculative decoding can use; an optional `rollback_limit` (None: any) is the longest a step
    may grow the cache and still be truncated back in place (runtime/recompute.py)."""

    @property
    def can_step_all(self) -> bool: ...

    def step_all(self, ids: Sequence[int]) -> np.ndarray:
        """Appends `ids`; returns float32 logits (len(ids), vocab), row i after ids[i]."""
        ...


class CancelToken(Protocol):
    """threading.Event satisfies it; checked between steps, never inside one."""

    def is_set(self) -> bool: ...
