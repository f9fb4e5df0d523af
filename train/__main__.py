"""python -m train --preset NAME --data MIXTURE --out DIR [--max-steps N] [--resume] [...]

Trains a phi model with DeepSpeed. One process on a CPU or one GPU as it stands; many GPUs and nodes
through DeepSpeed's own launcher (train/README.md has the full phi-1.5 command).
"""

from __future__ import annotations

import argparse
import signal
import dataclasses
import sys
import typing
from pathlib import Path

from runtime import files

from .recipe import PRECISIONS, TrainConfig

_HELP = {
    "preset": "model shape of a new model, from train/config.py's PRESETS (phi-1_5, phi-2, phi-3-mini-4k, demo, ...)",
    "init_from": "fine-tune: start from this checkpoint folder's weights and config.json (instead of --preset)",
    "data": "mixture file (python -m train.data writes one)",
    "out": "output folder: DeepSpeed states, Hugging Face checkpoints, log.jsonl",
    "tokenizer": "tokenizer.json to ship with checkpoints (default: beside the mixture file)",
    "seq_len": "training sequence length (default: the preset's context)",
    "grad_accum": "gradient accumulation steps (default: global batch / (micro batch x world size))",
    "precision": f"{'/'.join(PRECISIONS)}; auto = fp16 on GPU, bf16 on CPU",
    "attention": "auto/sdpa/flash",
    "resume": "continue from the last complete checkpoint in --out",
    "universal_checkpoint": "with --resume: load the DeepSpeed state converted to the universal format "
                            "(TAG-universal; resuming on another number of ranks, see train/README.md)",
    "activation_checkpointing": "recompute activations in the backward pass to save memory",
    "keep": "Hugging Face checkpoints to keep, the newest (older ones are deleted once a newer one is complete)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[1])
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        required = f.default is dataclasses.MISSING
        help_text = _HELP.get(f.name, "") + ("" if required else f" (default: {f.default})")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        elif f.name == "betas":
            parser.add_argument(flag, type=float, nargs=2, default=f.default, help=help_text)
        else:
            base = {int: int, float: float, str: str, Path: Path}.get(kind) or \
                next(t for t in typing.get_args(kind) if t is not type(None))
            parser.add_argument(flag, type=base, required=required, default=None if required else f.default,
                                help=help_text)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("local_rank")  # DeepSpeed's launcher passes it; the LOCAL_RANK variable says the same
    try:
        try:
            cfg = TrainConfig(**args)
            from .trainer import train

            with files.sigterm_as_interrupt():  # a scheduler's SIGTERM cleans up like Ctrl-C
                folder = train(cfg)
        except (ValueError, FileNotFoundError) as e:
            if files.terminated:  # SIGTERM's interrupt raised inside a C extension can surface as another error
                raise KeyboardInterrupt from e
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print("interrupted: run again with --resume to continue from the last checkpoint", file=sys.stderr)
        return 128 + signal.SIGTERM if files.terminated else 130
    print(f"checkpoint: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
