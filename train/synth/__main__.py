"""python -m train.synth: synthetic textbooks from seed topics (train/synth/__init__.py).

    python -m train.synth --topics topics.txt --out data/synth --teacher-package runtime/demo       # CPU, tests
    python -m train.synth --topics topics.txt --out data/synth --teacher-url http://127.0.0.1:8000/v1 \\
        --teacher-model MODEL --concurrency 64 --decontaminate evals/*.jsonl --eval-field question
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from runtime import files as atomic
from train.records import RecordOptions
from train.synth.filters import GateOptions
from train.synth.job import SynthOptions, run

D = SynthOptions()
G = GateOptions()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}; see `python -m train.synth --help`\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train.synth", description="Synthetic textbooks from seed topics, filtered.")
    p.add_argument("--topics", type=Path, required=True, help="seed topics, one per line")
    p.add_argument("--out", type=Path, required=True, help="folder: raw.jsonl, textbooks.jsonl, report.json")
    teacher = p.add_mutually_exclusive_group(required=True)
    teacher.add_argument("--teacher-url", help="an OpenAI-compatible completions endpoint, e.g. vLLM's "
                                               "http://HOST:8000/v1")
    teacher.add_argument("--teacher-package", type=Path, help="a phi-edge model package run in process")
    p.add_argument("--teacher-model", help="model name for --teacher-url (as the server lists it)")
    p.add_argument("--subtopics", type=int, default=D.subtopics, help="per seed topic (default: %(default)s)")
    p.add_argument("--per-subtopic", type=int, default=D.per_subtopic, help="requests per subtopic (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=D.max_tokens, help="(default: %(default)s)")
    p.add_argument("--temperature", type=float, default=D.temperature, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=D.seed, help="(default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=D.concurrency, help="requests in flight (default: %(default)s)")
    p.add_argument("--snippets", type=Path, nargs="*", default=[], help="web text to seed prompts with (records)")
    p.add_argument("--decontaminate", type=Path, nargs="*", default=[],
                   help="evaluation data (JSON Lines, Parquet or text) whose n-grams no record may share")
    p.add_argument("--eval-field", default="text", help="the field with the text in --decontaminate and --snippets "
                                                        "records (default: %(default)s)")
    p.add_argument("--min-chars", type=int, default=G.min_chars, help="(default: %(default)s)")
    p.add_argument("--max-chars", type=int, default=G.max_chars, help="(default: %(default)s)")
    p.add_argument("--near-duplicate", type=float, default=G.near_duplicate_threshold,
                   help="MinHash Jaccard threshold (default: %(default)s)")
    p.add_argument("--contamination-ngram", type=int, default=G.contamination_ngram, help="(default: %(default)s)")
    p.add_argument("--force", action="store_true", help="start over in an --out this command wrote with other settings")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            options = SynthOptions(args.subtopics, args.per_subtopic, args.max_tokens, args.temperature, args.seed,
                                   args.concurrency)
            gates = GateOptions(min_chars=args.min_chars, max_chars=args.max_chars,
                                near_duplicate_threshold=args.near_duplicate,
                                contamination_ngram=args.contamination_ngram)
            if args.teacher_url:
                if not args.teacher_model:
                    raise ValueError("--teacher-url needs --teacher-model (the model name the server serves)")
                from train.synth.teacher import HttpTeacher

                teacher = HttpTeacher(args.teacher_url, args.teacher_model)
            else:
                from train.synth.teacher import RuntimeTeacher

                teacher = RuntimeTeacher(args.teacher_package)
            with atomic.sigterm_as_interrupt():
                report = run(args.topics, args.out, teacher, options, gates, args.decontaminate,
                             RecordOptions(text_field=args.eval_field), args.snippets, args.force)
        except (ValueError, OSError, RuntimeError) as e:
            if atomic.terminated:  # SIGTERM's interrupt raised inside a C extension can surface as another error
                raise KeyboardInterrupt from e
            print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"interrupted: finished replies are kept in {args.out / 'raw.jsonl'}; rerun the same command to go on",
              file=sys.stderr)
        return 128 + signal.SIGTERM if atomic.terminated else 130
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
