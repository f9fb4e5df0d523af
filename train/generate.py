"""python -m train.generate [PROMPT] [--checkpoint DIR] [--max-new-tokens N]: greedy text from a checkpoint.

The PyTorch reference path (KV cache, greedy). The on-device path is runtime/ (ONNX Runtime, no torch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", nargs="?", default="def fibonacci(n):\n", help="text to continue")
    parser.add_argument("--checkpoint", type=Path, default=DEMO, help="checkpoint folder (default: the demo model)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate (default: 64)")
    args = parser.parse_args(argv)
    try:
        if args.max_new_tokens <= 0:
            raise ValueError(f"--max-new-tokens must be positive, got {args.max_new_tokens}")
        if not args.prompt:
            raise ValueError("the prompt is empty; pass some text to continue")
        from tokenizers import Tokenizer

        from .checkpoint import load_pretrained, tokenizer_file
        from .model import greedy_generate

        model = load_pretrained(args.checkpoint)
        tok_path = tokenizer_file(args.checkpoint)
        if tok_path is None:
            raise FileNotFoundError(f"{args.checkpoint} has no tokenizer.json; copy the tokenizer beside the weights")
        tok = Tokenizer.from_file(str(tok_path))
        ids = tok.encode(args.prompt).ids
        if len(ids) + args.max_new_tokens > model.config.max_position_embeddings:
            raise ValueError(f"prompt ({len(ids)} tokens) + {args.max_new_tokens} new tokens exceed the model's "
                             f"context of {model.config.max_position_embeddings}; shorten the prompt")
        out = greedy_generate(model, ids, args.max_new_tokens, model.config.eos_token_id)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.prompt + tok.decode(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
