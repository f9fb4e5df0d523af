"""Weight-only block quantization for MatMulNBits, one tensor at a time.

Every method takes a weight as PyTorch stores it, W (N, K) float32 (out x in; MatMulNBits' blocks run along
K, i.e. along each stored row, so no transpose is needed), and returns MatMulNBits' inputs: packed
(N, K / block, block * bits / 8) uint8, scales (N, K / block), and zero points (None when symmetric).

- rtn: round to nearest in vectorized numpy, the same arithmetic as onnxruntime's C++ block quantizer
  (tests/test_quantize.py compares them code by code); about 3x faster here because it needs no transpose.
- rtn-ort: onnxruntime's own quantizer (DefaultWeightOnlyQuantizer), the reference for rtn.
- hqq: onnxruntime's HQQ (half-quadratic optimisation of scale and zero point per block), float zero points.

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
        """W (N, K) as MatMulNBits computes with it; for tests and error analysis."""
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
        return w.reshape(n, -1)[:, :self.k]


def _pack(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes (..., m) -> bytes: two 4-bit codes per byte, low nibble first (MatMulNBits' order)."""
    if bits == 8:
        return q
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros_like(q[..., :1])], axis=-1)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def _rtn(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    n, k = w.shape
    blocks = w.reshape(n, k // block_size, block_size)  # (N, K / B, B)
    qmax = (1 << bits) - 1
    if symmetric:  # the signed value of largest magnitude maps to -2^(bits-1)
        lo, hi = blocks.min(-1), blocks.max(-1)
        scale = np.where(-lo > hi, lo, hi) / -(1 << (bits - 1))
        zero = np.full(scale.shape, 1 << (bits - 1), np.float32)
    else:  # the range always includes 0, so 0 is exact
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = (hi - lo) / qmax
        zero = np.clip(np.round(np.divide(-lo, scale, out=np.zeros_like(lo), where=scale != 0)), 0, qmax)
    inverse = np.divide(1.0, scale, out=np.zeros_like(scale), where=scale != 0)
    q = np.clip(np.round(blocks * inverse[..., None]) + zero[..., None], 0, qmax).astype(np.uint8)
    zero_points = None if symmetric else _pack(zero.astype(np.uint8), bits)
    return QuantizedWeight(_pack(q, bits), scale.astype(np.float32), zero_points, bits, block_size, k, n)


def _rtn_ort(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 DefaultWeightOnlyQuantizer)

    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits)
    packed, scales, zero = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(w.T, np.float32))
    n, k = w.shape
    return QuantizedWeight(packed, scales, None if symmetric else zero, bits, block_size, k, n)


def _hqq(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    import torch
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, HQQWeightOnlyQuantizer

    quantizer = HQQWeightOnlyQuantizer(HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits))
    q, scales, zero = quantizer.quantize_internal(torch.from_numpy(np.ascontiguousarray(w, np.float32)),
                                                  bits=bits, group_size=block_size)
    per_byte = 8 // bits
    packed = torch.zeros((q.shape[0], q.shape[1] // per_byte), dtype=torch.uint8)
    quantizer.pack_on_row_fast_248bit(packed, q.contiguous(), bits)
    n, k = w.shape
    blocks = (k + block_size - 1) // block_size
    return QuantizedWeight(packed.numpy().reshape(n, blocks, block_size // per_byte),
                           scales.numpy().reshape(n, blocks).astype(np.float32),
                           zero.numpy().reshape(n, blocks).astype(np.float32), bits, block_size, k, n)


METHODS: dict[str, Callable[[np.ndarray, int, int, bool], QuantizedWeight]] = {
    "rtn": _rtn, "rtn-ort": _rtn_ort, "hqq": _hqq}


ROWS_PER_CHUNK = 8192  # round to nearest treats rows independently: a 200k-row embedding goes 8192 rows at a time
ROW_INDEPENDENT = ("rtn", "rtn-ort")  # HQQ's iterations stop on the whole tensor's error, so it is not chunked


def quantize(w: np.ndarray, method: str, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
    """Quantizes W (N, K); round to nearest in chunks of rows, so its float temporaries stay a chunk's size (a
    Phi-4-mini embedding is 200064 x 3072) while the result is the same as one call."""
    n = w.shape[0]
    if n <= ROWS_PER_CHUNK or method not in ROW_INDEPENDENT:
        return METHODS[method](w, bits, block_size, symmetric)
    parts = [METHODS[method](w[i:i + ROWS_PER_CHUNK], bits, block_size, symmetric) for i in range(0, n, ROWS_PER_CHUNK)]
    first = parts[0]
    zero = None if first.zero_points is None else np.concatenate([p.zero_points for p in parts])
    return QuantizedWeight(np.concatenate([p.packed for p in parts]), np.concatenate([p.scales for p in parts]), zero,
                           first.bits, first.block_size, first.k, n)
