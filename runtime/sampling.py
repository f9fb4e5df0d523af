"""Next-token choice from one row of logits: greedy, or penalty -> temperature -> top-k -> top-p -> draw.

Pure numpy; the only state is the seeded random generator a `Sampler` owns. The distribution is the one
transformers' RepetitionPenalty, Temperature, TopK and TopP processors define (tests/test_runtime.py compares
them), computed without sorting the vocabulary:

    e = exp((logits - max) / T)                  float32, (vocab,); a token's weight
    top-k / top-p keep a prefix of e in descending order (ties: lower id first). Counts of e per bucket of
    nearby values bound the band where the prefix ends (`_prefix`); only that band is sorted.
    draw: one uniform number over the kept weights' cumulative sum, in id order

so a default-settings token costs a few vector passes over the vocabulary (about 0.4 ms for 51,200 logits)
where a full sort cost 4-5 ms. `verify` is speculative sampling's accept/reject rule for a drafted token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Temperature and repetition penalty divide float32 logits, so they must be float32 numbers that neither vanish
# nor overflow: 0 (greedy temperature) or within float32's normal range. The Kotlin and web engines refuse the same.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # 1.1754943508222875e-38
FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4028234663852886e+38


def _real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _normal(value: float) -> bool:
    return FLOAT32_TINY <= value <= FLOAT32_MAX


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0: all
    top_p: float = 0.95  # keep the smallest set whose probability reaches top_p; 1: all
    seed: int | None = None  # None: a fresh seed each call
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the reply (CTRL, HF)

    def __post_init__(self) -> None:
        if not _real(self.temperature) or not (self.temperature == 0 or _normal(self.temperature)):
            raise ValueError(f"temperature must be 0 (greedy) or a number from {FLOAT32_TINY:.2g} to "
                             f"{FLOAT32_MAX:.2g} (float32's normal range), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise ValueError(f"top-k must be an integer >= 0 (0 keeps every token), got {self.top_k!r}")
        if not _real(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be a number in (0, 1] (1 keeps every token), got {self.top_p!r}")
        if not _real(self.repetition_penalty) or not _normal(self.repetition_penalty):
            raise ValueError(f"repetition penalty must be a number from {FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g} (1 "
                             f"is off), got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed must be an integer in 0..2^64-1 (--seed), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


# e is non-negative float32, whose bit patterns order as its values do: the top 16 bits name a bucket of
# values within 1/128 of each other. _BOUND[b] is bucket b's lowest value, _BOUND[b + 1] its highest bound.
_BUCKET_SHIFT = 16
_INF_BUCKET = 0x7F80  # float32 +inf; NaN never occurs
_BOUND = np.append((np.arange(_INF_BUCKET + 1, dtype=np.uint32) << _BUCKET_SHIFT).view(np.float32), np.inf)
_DRAW_BLOCK = 256  # a draw finds its block of ids from block sums, then its id inside the block


def _prefix(e: np.ndarray, count: int = 0, mass: float | None = None) -> np.ndarray:
    """(vocab,) bool: the prefix of e in descending order (ties: lower id first) that top-k (`count`: the count
    largest, and every entry tied with the last of them, as transformers keeps ties) or top-p (`mass`: the
    fewest entries whose sum reaches it; at least one) keeps. Exact: bucket counts bound where the prefix ends,
    the weight above that band is summed, and only the band is sorted."""
    bucket = e.view(np.int32) >> _BUCKET_SHIFT  # (vocab,) monotone in e
    counts = np.bincount(bucket)
    present = np.flatnonzero(counts)[::-1]  # buckets holding entries, largest values first
    n = counts[present]
    if mass is None:
        hi = lo = int(present[np.searchsorted(np.cumsum(n), count)])  # the bucket holding the k-th largest
    else:
        first = int(np.searchsorted(np.cumsum(n * _BOUND[present + 1]), mass))  # the prefix cannot end above it
        last = int(np.searchsorted(np.cumsum(n * _BOUND[present]), mass))  # ... nor below it
        hi, lo = int(present[min(first, len(present) - 1)]), int(present[min(last, len(present) - 1)])
    above = bucket > hi
    band = np.flatnonzero((bucket >= lo) & ~above)  # ascending ids
    band = band[np.lexsort((band, -e[band]))]  # descending weight, ties by id
    if mass is None:
        return e >= e[band[count - int(np.count_nonzero(above)) - 1]]
    cum = float(np.where(above, e, 0).sum(dtype=np.float64)) + np.cumsum(e[band], dtype=np.float64)
    above[band[:int(np.searchsorted(cum, mass)) + 1]] = True  # the entry that reaches `mass` stays
    return above


def weights(logits: np.ndarray, config: SamplingConfig) -> np.ndarray:
    """(vocab,) float32 unnormalized probabilities after temperature, top-k and top-p; 0 outside the kept set."""
    logits = np.asarray(logits, dtype=np.float32).reshape(-1)  # (vocab,)
    top = logits.max()
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        # The largest logits get weight 1 even when they are +inf (a penalty's division can overflow), and -inf
        # (suppressed ids) gets 0 at any temperature; the temperature is a normal float32 (SamplingConfig).
        e = logits - top  # one array, worked in place: (logits - max) / T, then exp
        if top == np.inf:
            e[logits == top] = 0
        e /= np.float32(config.temperature)
        np.exp(e, out=e)
    if 0 < config.top_k < len(e):
        e = np.where(_prefix(e, count=config.top_k), e, np.float32(0))
    if config.top_p < 1:
        e = np.where(_prefix(e, mass=config.top_p * float(e.sum(dtype=np.float64))), e, np.float32(0))
    return e


def probabilities(logits: np.ndarray, config: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities) after temperature, top-k and top-p; most likely first."""
    w = weights(logits, config)
    ids = np.flatnonzero(w)
    ids = ids[np.lexsort((ids, -w[ids]))]
    probs = w[ids].astype(np.float64)
    return ids, probs / probs.sum()


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(vocab,) bool -> [(start, stop)] of its runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]


def _check(top) -> None:
    """`top`: the row's largest logit (NaN if the row has one)."""
    if not top > -np.inf:  # NaN anywhere, or nothing that may be drawn
        raise ValueError("the model returned no usable logits (NaN, or -inf for every token it may emit); the "
                         "package is damaged or its weights diverged, re-export it")


class Sampler:
    """Draws tokens for one generation call; the same seed and logits give the same tokens."""

    def __init__(self, config: SamplingConfig, suppress: np.ndarray | None = None):
        """`suppress` (vocab,) bool marks ids that are never drawn: rows the tokenizer cannot decode."""
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.suppress = suppress if suppress is not None and suppress.any() else None
        self._runs = _runs(self.suppress) if self.suppress is not None else ()  # [(start, stop)] of suppressed ids
        self._seen: np.ndarray | None = None  # (vocab,) bool: tokens the repetition penalty applies to
        self._pending: list[int] = []

    def observe(self, ids) -> None:
        """Records tokens of the context (prompt, then each new token) for the repetition penalty."""
        if self.config.repetition_penalty != 1.0:
            self._pending.extend(int(i) for i in ids)

    def penalize(self, logits: np.ndarray) -> np.ndarray:
        """CTRL's penalty as transformers applies it: positive logits divided by it, negative multiplied."""
        penalty = self.config.repetition_penalty
        if penalty == 1.0:
            return logits
        if self._seen is None:
            self._seen = np.zeros(len(logits), bool)
        self._seen[self._pending] = True
        self._pending.clear()
        seen = logits[self._seen]
        logits = logits.copy()
        with np.errstate(over="ignore", under="ignore"):  # a large quotient becomes +inf: weights() handles it
            logits[self._seen] = np.where(seen > 0, seen / penalty, seen * penalty)
        return logits

    def _prepare(self, logits: np.ndarray, checked: bool = True) -> np.ndarray:
        """The row with the penalty applied and suppressed ids at -inf (a copy where either changes it); checked
        unless `checked` is False (greedy checks the argmax's value instead: one pass over the row fewer)."""
        logits = self.penalize(np.asarray(logits).reshape(-1))
        if self._runs:
            logits = np.array(logits, dtype=np.float32)  # a copy: the caller's row stays as it was
            for start, stop in self._runs:  # slices, not a mask over the vocabulary: the suppressed ids are
                logits[start:stop] = -np.inf  # mostly one run (embedding rows past the tokenizer's last id)
        if checked:
            _check(logits.max())
        return logits

    def _greedy(self, logits: np.ndarray) -> int:
        token = int(np.argmax(logits))  # NaN anywhere is the first NaN: the check below refuses it
        _check(logits[token])
        return token

    def _draw(self, w: np.ndarray) -> int:
        """One id with probability w / w.sum(): the first id, in id order, whose cumulative weight exceeds a
        uniform draw over the total (located by block sums, then inside one block)."""
        starts = np.arange(0, len(w), _DRAW_BLOCK)
        blocks = np.cumsum(np.add.reduceat(w, starts, dtype=np.float64))
        r = self.rng.random() * blocks[-1]
        b = int(np.searchsorted(blocks, r, side="right"))
        if b == len(blocks):  # the product rounded up to the total: the last id with weight
            return int(np.flatnonzero(w)[-1])
        block = w[starts[b]:starts[b] + _DRAW_BLOCK]
        i = int(np.searchsorted(np.cumsum(block, dtype=np.float64), r - (blocks[b - 1] if b else 0.0), side="right"))
        return int(starts[b]) + (i if i < len(block) else int(np.flatnonzero(block)[-1]))  # rounding, as above

    def __call__(self, logits: np.ndarray) -> int:
        if self.config.greedy:
            return self._greedy(self._prepare(logits, checked=False))
        return self._draw(weights(self._prepare(logits), self.config))

    def verify(self, logits: np.ndarray, draft: int) -> int:
        """The token at a position a drafter guessed `draft` for: `draft` itself when accepted, otherwise a
        replacement. Greedy accepts only the argmax. Sampling accepts with probability p(draft) and otherwise
        draws from p without `draft` (renormalized): speculative sampling's rule for a draft that is certain
        (q = 1 at draft), so the token's distribution is exactly p (Leviathan et al. 2023, Chen et al. 2023)."""
        if self.config.greedy:
            return self._greedy(self._prepare(logits, checked=False))
        w = weights(self._prepare(logits), self.config)
        total = float(w.sum(dtype=np.float64))
        if self.rng.random() * total < w[draft]:
            return int(draft)
        w[draft] = 0
        return self._draw(w)
