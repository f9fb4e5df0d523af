"""The KV cache buffers of one sequence, grown with the tokens held instead of allocated for the whole context.

    buffers  [ p0 p1 ... p(length-1) | free ... ]   allocated positions, at most `limit`
    reserve(n, length)  makes room for n positions: a larger buffer per (layer, kind), the first `length`
                        positions copied into it, the old one freed (the caller binds the new ones)

Growth policy (the same in Kotlin's KvCache.kt and the web's js/kvcache.js, held together by golden vectors):
the first allocation is FIRST positions, each later one at least doubles, every size is a multiple of STEP, none
exceeds the limit. A 128k-position package then costs what its conversation costs, and a conversation of n tokens
has copied fewer than 2n positions in all. Buffers are reallocated one at a time, so growing holds at most one
extra layer's buffer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .contract import Contract

FIRST = 256  # positions of the first allocation
STEP = 64  # every allocation is a multiple of this; contexts too
SHARE = 0.6  # of the memory the system reports available: the rest is left to the system and other programs
OVERHEAD = 96 << 20  # ONNX Runtime's arenas and scratch, the tokenizer, the interpreter
# A run of many tokens (a prompt) is fed in pieces whose attention scores fit SCRATCH bytes: ONNX Runtime's CPU
# GroupQueryAttention holds heads x rows x capacity float32 scores, which its arena keeps to the end. Measured
# (benchmarks/RESULTS.md, "KV cache memory"): 4,000 tokens into a Phi-3-mini-size int8 package in runs of 512 /
# 128 / 64 rows peaked at 4565 / 4435 / 4350 MiB and took 228 / 213 / 193 s. Below 64 rows a run costs more per
# token than the scratch saves (Phi-4-mini size at 16k positions, ms per token: attention 101 at 21 rows, 77 at 64,
# 67 at 512; every weight read once per run, 31.6 ms at 21 rows, 26.8 at 64), so runs keep 64 rows at long
# contexts, where the scratch (96 MiB at 16k) is a tenth of an int8 cache or less.
SCRATCH = 32 << 20
ROWS = (64, 256)  # fewest and most tokens per run, whatever the scratch allows
SHORT = 16  # tokens: a step this short (a decode step, a verification) is one run
# A sliding-window package's buffer holds EVICT positions beyond its window, so GroupQueryAttention evicts EVICT + 1
# rows at a time instead of shifting the whole window at every token past it (runtime/contract.py); Phi-3-mini-4k:
# 2047 + 256 positions, 1.7 GiB of a float32 cache where 4,096 positions cost 3 GiB.
EVICT = 256


def available_memory() -> int | None:
    """Bytes the system says can be allocated without swapping: MemAvailable on Linux (Android's availMem is the
    same figure), the free pages elsewhere; None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def window_buffer(window: int | None, context: int) -> int | None:
    """Positions a sliding-window cache's buffer holds (None: no window): its window and EVICT more, no more than
    the context needs, and never fewer than the window (GroupQueryAttention refuses a smaller buffer; positions past
    the context are allocated, never written)."""
    return None if window is None else max(window, min(context, window + EVICT))


def held_positions(window: int | None, context: int) -> int:
    """KV cache positions a context of `context` may hold in memory: the context, or a window package's buffer."""
    return context if window is None else window_buffer(window, context)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class ContextPlan:
    """How many positions of KV cache a package may hold on this machine, decided before anything is loaded, as
    the Android library's ContextPlan.kt decides it:

        budget  = available * SHARE - weights - logits - OVERHEAD                      (bytes)
        context = min(requested or max_length, budget / kv bytes per position), a multiple of STEP
                  (a sliding-window package: requested or max_length whenever its buffer fits the budget)

    The cache grows to it with the conversation (KvCache); nothing is allocated for positions not yet held."""

    context: int
    max_length: int
    requested: int | None
    available: int | None  # None: unknown, so the requested or full length is taken
    weight_bytes: int
    kv_bytes_per_position: int
    logits_bytes: int
    window: int | None = None  # a sliding-window cache: it holds window_buffer(window, context) positions

    @property
    def positions(self) -> int:
        """KV cache positions this plan may hold in memory at once (a window buffer whole: GroupQueryAttention
        touches it at the first step)."""
        return held_positions(self.window, self.context)

    @property
    def limited_by_memory(self) -> bool:
        return self.context < (self.requested or self.max_length)

    def describe(self) -> str:
        """One line: the context chosen and the figures it was chosen from (the Kotlin plan's words)."""
        if self.available is None:
            why = "free memory unknown"
        elif self.limited_by_memory:
            why = f"limited by {_mib(self.available)} free memory"
        else:
            why = f"fits in {_mib(self.available)} free memory"
        return (f"context {self.context} of {self.max_length} positions ({why}): weights {_mib(self.weight_bytes)} "
                f"+ KV cache {_mib(self.kv_bytes_per_position * self.positions)} at most + logits "
                f"{_mib(self.logits_bytes)}")


def plan_context(manifest, requested: int | None, available: int | None, logit_rows: int = 1) -> ContextPlan:
    """The plan for `manifest` with `available` bytes free, at most `requested` positions (None: max_length).
    Raises ValueError when not even STEP positions fit, naming what to do."""
    if requested is not None and not 1 <= requested <= manifest.max_length:
        raise ValueError(f"context {requested} is outside 1..{manifest.max_length} (the package's max_length, the "
                         f"length its rotary tables cover); pass at most {manifest.max_length}")
    per_position = manifest.contract.kv_bytes_per_token
    weights = sum(int(entry.get("bytes", 0)) for name, entry in manifest.files.items()
                  if name.startswith("model.onnx"))
    logits = logit_rows * manifest.contract.vocab_size * 4
    want, window = requested or manifest.max_length, manifest.contract.window
    if available is None:
        return ContextPlan(want, manifest.max_length, requested, None, weights, per_position, logits, window)
    budget = int(available * SHARE) - weights - logits - OVERHEAD
    fits = max(budget, 0) // per_position
    context = want if fits >= held_positions(window, want) else fits // STEP * STEP
    least = STEP if window is None else max(STEP, window)  # a window buffer is never smaller than the window
    if context < min(STEP, want) or (window is not None and fits < window):
        raise ValueError(f"{manifest.folder.name} needs {_mib(weights + logits + OVERHEAD + per_position * least)} for "
                         f"its weights and {least} positions of KV cache, but only {_mib(int(available * SHARE))} of "
                         f"the {_mib(available)} free can be used; close other programs or export a smaller package "
                         f"(int4 weights, --kv-dtype int8)")
    return ContextPlan(context, manifest.max_length, requested, available, weights, per_position, logits, window)


def step_rows(heads: int, capacity: int) -> int:
    """Most tokens one run appends to a cache of `capacity` positions: the attention scores (heads x rows x capacity
    x 4 bytes) within SCRATCH, in ROWS."""
    return min(ROWS[1], max(ROWS[0], SCRATCH // (4 * heads * capacity)))


def grown_capacity(allocated: int, needed: int, limit: int) -> int:
    """Positions to allocate for `needed` when `allocated` are (needed <= limit): at least double, multiples of
    STEP, at most `limit`."""
    if needed > limit:
        raise ValueError(f"{needed} positions do not fit in a context of {limit}")
    if needed <= allocated:
        return allocated
    size = max(needed, 2 * allocated, FIRST)
    return min(limit, -(-size // STEP) * STEP)


class KvCache:
    """numpy buffers (1, kv_heads, capacity, kv_width) in the contract's storage dtype, each wrapped by an
    OrtValue over the same memory, so GroupQueryAttention writes the array in place."""

    def __init__(self, contract: Contract, limit: int):
        self.contract, self.limit = contract, limit
        self.capacity = 0
        self.arrays: list[np.ndarray] = []
        self.values: list[ort.OrtValue] = []

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def reserve(self, needed: int, length: int) -> None:
        new = grown_capacity(self.capacity, needed, self.limit)
        if new == self.capacity:
            return
        dtype = np.dtype(self.contract.kv_storage)
        shape = self.contract.kv_shape(1, new)  # (1, kv_heads, capacity, kv_width)
        for i in range(len(self.contract.kv_names())):
            array = np.empty(shape, dtype)  # positions past `length` are written before GQA reads them
            if length:
                array[:, :, :length] = self.arrays[i][:, :, :length]
            value = ort.OrtValue.ortvalue_from_numpy(array)  # shares the array's memory
            if i < len(self.arrays):
                self.arrays[i], self.values[i] = array, value  # the old buffer is freed here
            else:
                self.arrays.append(array)
                self.values.append(value)
        self.capacity = new
