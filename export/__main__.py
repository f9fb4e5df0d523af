"""python -m export CHECKPOINT OUT [--precision fp32|fp16|int8|int4] [--block-size N] [--method rtn|hqq] [...]

Turns a phi checkpoint (any layout train.load_pretrained reads) into a model package for runtime/ and the
Android app: model.onnx + model.onnx.data + tokenizer.json + manifest.json.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import time
from pathlib import Path

from runtime import files, hub
from runtime.contract import KV_DTYPES

from .options import DEFAULT_BLOCK, EDGE_DEFAULTS, EDGE_POLICIES, METHODS, PRECISIONS, TARGETS, ExportOptions

DEFAULTS = ExportOptions()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[1])
    p.add_argument("checkpoint", help="checkpoint folder (config.json + safetensors), or a Hugging Face id "
                                     "ORG/NAME[@REVISION] (what export reads is downloaded, never code or pickle)")
    p.add_argument("out", type=Path, help="package folder to write")
    p.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULTS.precision,
                   help=f"weights of the transformer blocks (default: {DEFAULTS.precision})")
    p.add_argument("--block-size", type=int, default=DEFAULTS.block_size,
                   help=f"quantization block along the input dimension (default: {DEFAULT_BLOCK}, or the largest "
                        f"power of two below it that divides the model's hidden and MLP sizes)")
    p.add_argument("--method", choices=METHODS, default=DEFAULTS.method,
                   help=f"rtn: round to nearest; hqq: half-quadratic error minimization (default: {DEFAULTS.method})")
    p.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=DEFAULTS.symmetric,
                   help="symmetric quantization, no zero points (rtn only)")
    p.add_argument("--accuracy-level", type=int, default=DEFAULTS.accuracy_level,
                   help="MatMulNBits accuracy_level; 4 runs activations in int8 on CPU (default: 4)")
    by_type = "; ".join(f"{kind} {head}" for kind, (head, _) in EDGE_DEFAULTS.items())
    p.add_argument("--lm-head", choices=EDGE_POLICIES, default=None,
                   help=f"output projection when quantizing (default by model_type: {by_type})")
    by_type = "; ".join(f"{kind} {embedding}" for kind, (_, embedding) in EDGE_DEFAULTS.items())
    p.add_argument("--embedding", choices=EDGE_POLICIES, default=None,
                   help=f"token embedding when quantizing (default by model_type: {by_type}; a tied model with "
                        f"the lm_head's bits stores the matrix once)")
    p.add_argument("--max-length", type=int, default=None, help="longest sequence (default: the model's context)")
    p.add_argument("--logits", choices=["last", "all"], default=DEFAULTS.logits,
                   help="last: prefill returns the last position only (fast); all: every position")
    p.add_argument("--kv-dtype", choices=list(KV_DTYPES), default=DEFAULTS.kv_dtype,
                   help="KV cache dtype (default: the graph's, float32; float16 for --precision fp16); int8 / int4 "
                        "quantize it with per-channel scales calibrated on --calibration text: a quarter / an eighth "
                        "of float32's memory, faster decoding, slower prefill of long prompts; float16 halves it")
    p.add_argument("--calibration", type=Path, default=None,
                   help="UTF-8 text whose KV cache values set an int8 / int4 cache's scales (default: a sample of "
                        "Python's standard library)")
    p.add_argument("--target", choices=TARGETS, default=DEFAULTS.target,
                   help="web: a package for the browser (runtime/web): a float KV cache, as WebGPU's attention "
                        "needs, and every weight within WebGPU's default 128 MiB buffer limit, checked at export "
                        "(default: %(default)s)")
    p.add_argument("--tokenizer", type=Path, default=None, help="tokenizer.json (default: the checkpoint's)")
    p.add_argument("--no-eos", action="store_true",
                   help="allow a package with no end-of-text token (generation then stops only at its length limit)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT if it is a package written by python -m export (never anything else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


_OS_FIXES = {errno.ENOSPC: "free some space or choose a folder on another disk",
             errno.EDQUOT: "free some space or choose a folder on another disk",
             errno.EACCES: "choose a folder you may write to", errno.EPERM: "choose a folder you may write to",
             errno.EROFS: "choose a folder on a writable disk"}


def _one_line(e: Exception) -> str:
    """Our own errors carry their fix; an error from the system gets the file, the reason and a fix."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        fix = _OS_FIXES.get(e.errno, "check the paths and try again")
        return f"cannot read or write {where}{e.strerror}; {fix} (nothing was written)"
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        options = ExportOptions(precision=args.precision, block_size=args.block_size, method=args.method,
                                symmetric=args.symmetric, accuracy_level=args.accuracy_level, lm_head=args.lm_head,
                                embedding=args.embedding, max_length=args.max_length, logits=args.logits,
                                no_eos=args.no_eos, kv_dtype=args.kv_dtype, target=args.target,
                                calibration=None if args.calibration is None else str(args.calibration))
        from .package import export_package

        start = time.perf_counter()
        out = export_package(hub.checkpoint(args.checkpoint), args.out, options, force=args.force,
                             tokenizer=args.tokenizer, show_progress=not args.quiet)
    except (ValueError, OSError) as e:
        if files.terminated:  # SIGTERM's interrupt raised inside a C extension can surface as another error (torch:
            # "could not determine the shape of object type ..."): it is still the interruption
            print("interrupted: nothing was written", file=sys.stderr)
            return 128 + signal.SIGTERM
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM if files.terminated else 130
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"package: {out} ({size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
