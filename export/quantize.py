"""Weight-only block quantization for MatMulNBits, one tensor at a time, with onnxruntime's own quantizers.

Every method takes a weight in MatMul layout W (K, N) as float32 and returns MatMulNBits' inputs:
packed (N, K / block, block * bits / 8) uint8, scales (N, K / block), and zero points (None when symmetric).
The method table is the one place a new method is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class QuantizedWeight:
    packed: np.ndarray  # (N, k_blocks, blob) uint8
    scales: np.ndarray  # (N, k_blocks) float32
    zero_points: np.ndarray | None  # uint8 packed (N, ceil(k_blocks * bits / 8)) or float32 (N, k_blocks)
    bits: int
    block_size: int
    k: int
    n: int

    def dequantize(self) -> np.ndarray:
        """W (K, N) as MatMulNBits computes it; used by tests and the quality tools."""
        n, blocks, _ = self.packed.shape
        if self.bits == 4:
            q = np.stack([self.packed & 0x0F, self.packed >> 4], axis=-1).reshape(n, blocks, -1)
        else:
            q = self.packed.reshape(n, blocks, -1)
        q = q.astype(np.float32)
        if self.zero_points is None:
            zero = np.float32(2 ** (self.bits - 1))
        elif self.zero_points.dtype == np.uint8:
            zp = self.zero_points
            if self.bits == 4:
                zp = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(n, -1)
            zero = zp[:, :blocks, None].astype(np.float32)
        else:
            zero = self.zero_points[:, :, None]
        w = (q - zero) * self.scales[:, :, None]
        return w.reshape(n, -1)[:, :self.k].T


def _rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 DefaultWeightOnlyQuantizer)

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits)
    packed, scales, zero = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(w, np.float32))
    return QuantizedWeight(packed, scales, None if symmetric else zero, bits, block_size, *w.shape)


def _hqq(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

    quantizer = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits))
    q, scales, zero = quantizer.quantize_internal(torch.from_numpy(np.ascontiguousarray(w.T, np.float32)),
                                                  bits=bits, group_size=block_size)
    per_byte = 8 // bits
    packed = torch.zeros((q.shape[0], q.shape[1] // per_byte), dtype=torch.uint8)
    quantizer.pack_on_row_fast_248bit(packed, q.contiguous(), bits)
    k, n = w.shape
    blocks = (k + block_size - 1) // block_size
    return QuantizedWeight(packed.numpy().reshape(n, blocks, block_size // per_byte),
                           scales.numpy().reshape(n, blocks).astype(np.float32),
                           zero.numpy().reshape(n, blocks).astype(np.float32), bits, block_size, k, n)


METHODS: dict[str, Callable[[np.ndarray, int, int, bool], QuantizedWeight]] = {"rtn": _rtn, "hqq": _hqq}


def quantize(w: np.ndarray, method: str, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    return METHODS[method](w, bits, block_size, symmetric)
