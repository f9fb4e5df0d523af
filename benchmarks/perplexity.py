"""Perplexity and next-token distributions of a model package on token windows, with ONNX Runtime only.

Needs a package exported with `--logits all`. Each window starts from an empty cache, as the training
loop's held-out evaluation does, so the figures compare directly with train/ and with PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from runtime.engine import EngineOptions, OrtBackend
from runtime.manifest import load_manifest


@dataclass
class WindowScorer:
    """Runs whole windows through a package and returns float32 logits (T, vocab) for every position."""

    package: Path
    threads: int = 0
    max_window: int | None = None  # KV cache positions; default: the package's max_length

    def __post_init__(self) -> None:
        self.manifest = load_manifest(self.package)
        if self.manifest.contract.logits != "all":
            raise ValueError(f"{self.package} returns last-position logits only; export it with --logits all "
                             f"to score every position")
        self.backend = OrtBackend(self.manifest, EngineOptions(threads=self.threads, context=self.max_window))

    def logits(self, ids: np.ndarray) -> np.ndarray:
        self.backend.truncate(0)  # every window starts from an empty cache
        self.backend.step([int(i) for i in ids])
        return self.backend.last_logits()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def mean_nll(scorer: WindowScorer, windows: Iterable[np.ndarray]) -> float:
    """Mean negative log-likelihood (nats/token) of each window's tokens 1..T given the ones before."""
    total, count = 0.0, 0
    for window in windows:
        logp = log_softmax(scorer.logits(window[:-1]))
        total -= logp[np.arange(len(window) - 1), window[1:]].sum()
        count += len(window) - 1
    return total / count
