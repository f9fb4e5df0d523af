"""What runtime.generate and runtime.chat share on the command line: options, errors, output.

Every default comes from the option dataclasses, written once there. Any error the user can fix is one
line `error: ...` on stderr and exit status 2; Ctrl-C ends with status 130; neither prints a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .engine import PROFILES, EngineOptions
from .loop import Generation, GenerationConfig
from .pipeline import DEFAULT_PACKAGE, TextGenerator, load
from .sampling import SamplingConfig
from .speculate import DRAFTS
from .stats import CONTEXT

ENGINE, SAMPLING, GENERATION = EngineOptions(), SamplingConfig(), GenerationConfig()
EXIT_USAGE, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 2, 130, 128 + signal.SIGPIPE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error of the CLI
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, description=description)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--package", dest="package", default=str(DEFAULT_PACKAGE),
                   help="model package folder, or a Hugging Face id ORG/NAME[@REVISION][:SUBFOLDER] (a checkpoint is "
                        "downloaded and exported once, then cached; runtime/hub.py) (default: the demo package, "
                        "runtime/demo)")
    p.add_argument("--threads", type=int, default=ENGINE.threads,
                   help="intra-op threads; 0 for one per core (default: the count measured fastest on this device "
                        "for this package at its first load, then cached)")
    p.add_argument("--profile", choices=PROFILES, default=ENGINE.profile,
                   help="latency: worker threads spin between ops; low-power: they sleep (default: "
                        f"{ENGINE.profile})")
    p.add_argument("--context", type=int, default=ENGINE.context,
                   help="KV cache positions (default: the package's max_length, capped to what half this machine's "
                        "memory holds)")
    p.add_argument("--verify", action="store_true", help="check every package file's sha256 before loading")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=GENERATION.max_new_tokens,
                   help=f"most tokens to generate (default: {GENERATION.max_new_tokens})")
    # None: the package's own default where it states one (an onnxruntime-genai package's search section), else
    # SamplingConfig's
    p.add_argument("--temperature", type=float, default=None,
                   help=f"0 is greedy (default: the package's, else {SAMPLING.temperature})")
    p.add_argument("--top-k", type=int, default=None,
                   help=f"0 keeps all (default: the package's, else {SAMPLING.top_k})")
    p.add_argument("--top-p", type=float, default=None,
                   help=f"nucleus mass in (0, 1] (default: the package's, else {SAMPLING.top_p})")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"> 1 discourages repeating context tokens (default: the package's, else "
                        f"{SAMPLING.repetition_penalty}, off)")
    p.add_argument("--seed", type=int, default=SAMPLING.seed, help="random seed (default: a fresh one)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the text contains TEXT (repeatable; the template's stop strings also apply)")
    p.add_argument("--system", default=None, metavar="TEXT",
                   help="system message for templates that take one (a chat template from the checkpoint)")
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")
    p.add_argument("--prefill-chunk", type=int, default=GENERATION.prefill_chunk,
                   help="prefill at most N tokens per step, 0 for all at once (default: 0)")
    p.add_argument("--draft", choices=DRAFTS, default=GENERATION.draft,
                   help="speculative decoding: 'ngram' drafts tokens by looking the text's last words up in the "
                        "prompt and verifies several per step; the text is the same, only faster when it repeats "
                        f"its context (default: {GENERATION.draft})")
    p.add_argument("--draft-tokens", type=int, default=GENERATION.draft_tokens,
                   help=f"the most drafted tokens one step verifies (default: {GENERATION.draft_tokens})")
    p.add_argument("--stats", action="store_true", help="print the call's statistics as one JSON line on stderr")


def engine_options(args: argparse.Namespace) -> EngineOptions:
    return EngineOptions(threads=args.threads, profile=args.profile, context=args.context, verify=args.verify)


SAMPLING_FLAGS = ("temperature", "top_k", "top_p", "repetition_penalty")


def generation_config(args: argparse.Namespace, manifest=None) -> GenerationConfig:
    """The call's settings: each sampling flag given, else the package's default (`manifest.sampling`), else
    SamplingConfig's."""
    package = (getattr(manifest, "sampling", None) or {}) if manifest is not None else {}
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else package.get(k, getattr(SAMPLING, k))
              for k in SAMPLING_FLAGS}
    sampling = SamplingConfig(seed=args.seed, **chosen)
    return GenerationConfig(max_new_tokens=args.max_new_tokens, sampling=sampling, stop=tuple(args.stop),
                            stop_at_eos=not args.ignore_eos, prefill_chunk=args.prefill_chunk, draft=args.draft,
                            draft_tokens=args.draft_tokens)


def load_model(args: argparse.Namespace) -> TextGenerator:
    options = engine_options(args)  # validate the options before the slow load
    generation_config(args)
    model = load(args.package, options)
    plan = getattr(model.backend, "plan", None)
    if plan is not None and plan.limited_by_memory:  # the user should know why a long conversation will stop early
        print(f"notice: {plan.describe()}; free memory or pass a smaller --context to silence this", file=sys.stderr)
    return model


def read_stdin(what: str) -> str:
    """All of stdin; one clear error when it was closed (<&-)."""
    if sys.stdin is None:
        raise ValueError(f"standard input is closed, so there is no {what} to read; pass it some text instead")
    return sys.stdin.read()


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def report(args: argparse.Namespace, out: Generation, capacity: int) -> None:
    """After a call: a notice when the context filled up, and the stats line with --stats (both on stderr)."""
    if out.finish_reason == CONTEXT:
        print(f"notice: generation stopped because the context is full ({capacity} positions); shorten the "
              f"prompt, or load with a larger --context (at most the package's max_length)", file=sys.stderr)
    if args.stats:
        print(json.dumps(out.stats.to_json()), file=sys.stderr, flush=True)


@contextlib.contextmanager
def cancel_on_sigint(cancel: threading.Event) -> Iterator[threading.Event]:
    """Within the block Ctrl-C sets `cancel` (the loop stops at the next step) instead of raising; a second
    Ctrl-C before the block ends raises KeyboardInterrupt as usual. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield cancel
        return

    def handler(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield cancel
    finally:
        signal.signal(signal.SIGINT, previous)


def run(p: argparse.ArgumentParser, argv: list[str] | None, body: Callable[[argparse.Namespace], int]) -> int:
    """Parses `argv` and runs `body`, turning the errors a user can fix into one line and status 2."""
    for stream in (sys.stdin, sys.stdout):  # bytes that are not UTF-8 must not end the program
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape" if stream is sys.stdin else "replace")
    try:
        args = p.parse_args(argv)
        if sys.stdout is None:  # started with stdout closed (>&-): the text would be lost
            raise ValueError("standard output is closed, so the generated text has nowhere to go; redirect it to a "
                             "file or /dev/null instead of closing it")
        return body(args)
    except BrokenPipeError:  # stdout was closed (| head): stop quietly, as other Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
        return EXIT_BROKEN_PIPE
    except SystemExit as e:  # --help, or a usage error already printed by _Parser.error
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        write("\n")
        return EXIT_INTERRUPTED
