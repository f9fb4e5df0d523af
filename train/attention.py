"""The one place that picks how attention is computed: flash-attn on CUDA when installed, torch SDPA otherwise."""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sdpa", "flash")


@functools.cache
def flash_attn_available() -> bool:
    """flash-attn is installed and imports. A build that does not match the installed torch or CUDA fails at
    import (undefined symbols, a missing libcudart): then attention falls back to SDPA, said once."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    try:
        import flash_attn  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:
        log.warning("flash-attn is installed but does not import (%s); using torch SDPA. Reinstall it for this "
                    "torch and CUDA: pip install --force-reinstall --no-build-isolation flash-attn",
                    " ".join(str(e).split())[:200])
        return False
    return True


def check_backend(requested: str, cuda: bool, precision: str) -> None:
    """Refuses, before any work, an attention backend that cannot run here."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested != "flash":
        return
    if not cuda:
        raise ValueError("--attention flash needs a CUDA GPU; use --attention auto (torch SDPA on this machine)")
    if precision not in ("fp16", "bf16"):
        raise ValueError(f"--attention flash runs in fp16 or bf16, not {precision}; choose --precision fp16/bf16 "
                         f"or --attention auto")
    if not flash_attn_available():
        raise ValueError("--attention flash needs flash-attn installed and importable (pip install '.[gpu]'); use "
                         "--attention auto to fall back to torch SDPA")


@functools.cache
def _announce(backend: str, reason: str) -> None:
    log.info("attention: %s (%s)", backend, reason)


def select_backend(requested: str, q: torch.Tensor) -> str:
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    flash_ok = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and flash_attn_available()
    if requested == "flash" and not flash_ok:
        raise ValueError("attention backend 'flash' needs flash-attn installed (pip install '.[gpu]') and a "
                         "CUDA tensor in fp16 or bf16; use 'auto' to fall back to torch SDPA")
    if requested == "sdpa" or not flash_ok:
        _announce("torch SDPA", "requested" if requested == "sdpa" else
                  "flash-attn needs CUDA fp16/bf16 and the flash_attn package")
        return "sdpa"
    _announce("flash-attn", "installed and running on CUDA")
    return "flash"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto",
              window: int | None = None) -> torch.Tensor:
    """Causal attention where the queries are the last Tq positions of the Tk keys.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv. Returns (B, H, Tq, D). With `window`, a
    query at position p sees only keys at positions > p - window (transformers' sliding window).
    """
    tq, tk = q.shape[2], k.shape[2]
    if select_backend(backend, q) == "flash":
        from flash_attn import flash_attn_func  # optional extra, imported only on this path

        # flash-attn >= 2.1 aligns the causal mask bottom-right, as needed when Tq < Tk (cached decoding).
        sides = (-1, -1) if window is None else (window - 1, 0)
        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                              window_size=sides)
        return out.transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    if window is None or tk <= window:
        if tq == tk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        if tq == 1:  # one new token sees every cached position
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    # Chunk of Tq new tokens after Tk - Tq cached ones (SDPA's is_causal aligns top-left), or a window: a mask.
    rows = torch.arange(tq, device=q.device)[:, None] + (tk - tq)  # query positions
    cols = torch.arange(tk, device=q.device)[None, :]
    mask = cols <= rows  # (Tq, Tk), True = may attend
    if window is not None:
        mask &= cols > rows - window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
