"""Perplexity and next-token distributions of a model package on token windows, with ONNX Runtime only.

Needs a package exported with `--logits all`. Each window starts from an empty cache, as the training
loop's held-out evaluation does, so the figures compare directly with train/ and with PyTorch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from runtime.contract import ATTENTION_MASK, INPUT_IDS, LOGITS
from runtime.manifest import MODEL, load_manifest


@dataclass
class WindowScorer:
    """Runs whole windows through a package and returns float32 logits (T, vocab) for every position."""

    package: Path
    threads: int = 0

    def __post_init__(self) -> None:
        self.manifest = load_manifest(self.package)
        if self.manifest.contract.logits != "all":
            raise ValueError(f"{self.package} returns last-position logits only; export it with --logits all "
                             f"to score every position")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(Path(self.package) / MODEL), options,
                                            providers=["CPUExecutionProvider"])

    def logits(self, ids: np.ndarray) -> np.ndarray:
        contract = self.manifest.contract
        kv_dtype = np.dtype(contract.kv_dtype)
        feeds = {INPUT_IDS: ids[None].astype(np.int64), ATTENTION_MASK: np.ones((1, len(ids)), np.int64)}
        binding = self.session.io_binding()
        binding.bind_output(LOGITS)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for past, present in contract.kv_names():
            buffer = ort.OrtValue.ortvalue_from_numpy(np.zeros(contract.kv_shape(1, len(ids)), kv_dtype))
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[0]


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
