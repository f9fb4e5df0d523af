"""Next-token choice from one row of logits: greedy, or temperature -> top-k -> top-p -> draw.

Pure numpy; the only state is the seeded random generator a `Sampler` owns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.7  # 0: greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0: all
    top_p: float = 0.95  # keep the smallest set whose probability reaches top_p; 1: all
    seed: int | None = None  # None: a fresh seed each call
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or the reply (CTRL, HF)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0 (0 keeps every token), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must be in (0, 1] (1 keeps every token), got {self.top_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition penalty must be > 0 (1 is off), got {self.repetition_penalty}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed must be an integer in 0..2^64-1 (--seed), got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def probabilities(logits: np.ndarray, config: SamplingConfig) -> tuple[np.ndarray, np.ndarray]:
    """(candidate token ids, their probabilities) after temperature, top-k and top-p; most likely first."""
    logits = np.asarray(logits, dtype=np.float64).reshape(-1)  # (vocab,)
    k = len(logits) if config.top_k == 0 else min(config.top_k, len(logits))
    if k < len(logits):
        candidates = np.argpartition(-logits, k - 1)[:k]
        # Stable order by logit, ties by id, so top-k 1 picks the token argmax picks.
        candidates = candidates[np.lexsort((candidates, -logits[candidates]))]
    else:
        candidates = np.argsort(-logits, kind="stable")
    scaled = logits[candidates] / config.temperature
    probs = np.exp(scaled - scaled[0])
    probs /= probs.sum()
    if config.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(probs), config.top_p)) + 1  # the token that crosses top_p stays
        candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
    return candidates, probs


class Sampler:
    """Draws tokens for one generation call; the same seed and logits give the same tokens."""

    def __init__(self, config: SamplingConfig, suppress: np.ndarray | None = None):
        """`suppress` (vocab,) bool marks ids that are never drawn: rows the tokenizer cannot decode."""
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.suppress = suppress if suppress is not None and suppress.any() else None
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
        logits[self._seen] = np.where(seen > 0, seen / penalty, seen * penalty)
        return logits

    def __call__(self, logits: np.ndarray) -> int:
        logits = self.penalize(np.asarray(logits).reshape(-1))
        if self.suppress is not None:
            logits = np.where(self.suppress, -np.inf, logits).astype(np.float32, copy=False)
        if self.config.greedy:
            return int(np.argmax(logits))
        candidates, probs = probabilities(logits, self.config)
        if len(candidates) == 1:
            return int(candidates[0])
        index = int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right"))
        return int(candidates[min(index, len(probs) - 1)])  # min: the cumulative sum may end a hair below 1
