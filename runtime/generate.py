"""python -m runtime.generate [PROMPT] [--model DIR] [--template NAME] [--max-new-tokens N] [--chat] [...]

Continues PROMPT ("-" reads it from stdin) with a model package on ONNX Runtime, streaming the text to
stdout as it is generated; `--chat` starts an interactive conversation instead. No torch: this is the
on-device path. Without --model it uses the embedded demo package.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import chat, cli
from .text import clean_text


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m runtime.generate", __doc__.split("\n\n")[1])
    p.add_argument("prompt", nargs="?", default=None, help='text to continue; "-" reads it from stdin')
    p.add_argument("--template", default=None,
                   help="manifest prompt template: completion, code, qa, chat, instruct (default: completion, "
                        "or chat with --chat)")
    p.add_argument("--chat", action="store_true", help="interactive multi-turn chat that keeps the KV cache")
    p.add_argument("--drop-oldest", action="store_true",
                   help="with --chat: when the context is full, drop the oldest turns instead of stopping")
    p.add_argument("--echo", action=argparse.BooleanOptionalAction, default=True,
                   help="print the prompt before its continuation (default: yes)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (text, tokens, finish_reason, stats) instead of streaming text")
    cli.add_engine_args(p)
    cli.add_generation_args(p)
    return p


def _refuse_ignored(args: argparse.Namespace) -> None:
    """Options that the chosen mode would ignore are refused rather than dropped silently."""
    if args.chat and args.prompt is not None:
        raise ValueError("--chat reads each message from stdin, so the prompt argument would be dropped; pass "
                         "either a prompt or --chat (then type the first message)")
    if args.chat and args.json:
        raise ValueError("--json prints one generation as JSON and --chat is a conversation; pass one of them "
                         "(--stats prints each reply's statistics in a chat)")
    if args.drop_oldest and not args.chat:
        raise ValueError("--drop-oldest applies to a chat; add --chat or drop --drop-oldest")


def _generate(args: argparse.Namespace) -> int:
    _refuse_ignored(args)
    if args.chat:
        args.template = args.template or "chat"
        return chat.repl(args)
    args.template = args.template or "completion"
    if args.prompt is None:
        raise ValueError("no prompt; pass the text to continue (\"-\" reads it from stdin), or --chat for a "
                         "conversation")
    prompt = clean_text(cli.read_stdin("prompt") if args.prompt == "-" else args.prompt)
    if not prompt:
        raise ValueError("the prompt is empty; pass some text to continue (or --chat for a conversation)")
    cli.generation_config(args)  # the flags checked before the slow load
    model = cli.load_model(args)
    config = cli.generation_config(args, model.manifest)  # with the package's own sampling defaults
    if args.json:
        out = model.generate(prompt, config, template=args.template, system=args.system)
        print(json.dumps({"prompt": prompt, "text": out.text, "tokens": out.tokens,
                          "finish_reason": out.finish_reason, "stats": out.stats.to_json()}))
        cli.report(argparse.Namespace(stats=False), out, model.backend.capacity)
        return 0
    unshown = [prompt] if args.echo else []  # shown with the first text, so an error shows nothing

    def show(text: str) -> None:
        while unshown:
            cli.write(unshown.pop())
        cli.write(text)

    out = model.generate(prompt, config, template=args.template, on_text=show, system=args.system)
    show("\n")
    cli.report(args, out, model.backend.capacity)
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli.run(build_parser(), argv, _generate)


if __name__ == "__main__":
    sys.exit(main())
