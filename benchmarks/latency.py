"""python -m benchmarks.latency --model PACKAGE [--prompt-len 128 ...] [--new-tokens 64] [--threads N ...] [...]

Time to first token, prefill and decode tokens/s, CPU seconds per decoded token (user + sys: the energy
proxy where no power meter is), peak RSS, package size and load time of a model package on ONNX Runtime.
Each (threads, prompt length) point runs in a fresh process, so its peak RSS is its own: one warm-up call,
then `repeats` calls whose median, min and max are reported. The KV cache is sized to prompt + new tokens,
so sweeping the prompt length sweeps the cache size (RSS against context length).

Every point is measured greedy and at the CLI's default sampling settings (temperature 0.7, top-p 0.95: what
users run), interleaved over --rounds rounds; the summary gives the default/greedy decode ratio per round.

Keys are runtime.stats' names, the ones the runtime and the Android app report.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from runtime import stats as keys
from runtime.engine import EngineOptions

ROOT = Path(__file__).resolve().parents[1]
NUMERIC_KEYS = tuple(k for k in keys.KEYS if k != keys.FINISH_REASON)
SAMPLINGS = ("greedy", "default")


@dataclass(frozen=True)
class Point:
    """One measured configuration."""

    prompt_len: int = 128
    new_tokens: int = 64
    threads: int = 2
    repeats: int = 5
    profile: str = EngineOptions.profile  # the runtime's default, written once in runtime/engine.py
    sampling: str = "default"  # "default": the CLI's sampling settings; "greedy": temperature 0

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling {self.sampling!r} is unknown; choose one of {', '.join(SAMPLINGS)}")
        for name in ("prompt_len", "new_tokens", "repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: one per core), got {self.threads}")


def prompt_ids(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    """The benchmark prompt: `n` token ids, the same for every system given the same vocabulary size."""
    return np.random.default_rng(seed).integers(1, vocab_size, n).tolist()


def package_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def summarize(samples: list[dict]) -> dict:
    """Median, min and max of every numeric stats key over the repeats."""
    out = {"median": {}, "min": {}, "max": {}}
    for k in NUMERIC_KEYS:
        values = [s[k] for s in samples if s.get(k) is not None]
        for name, fn in (("median", statistics.median), ("min", min), ("max", max)):
            out[name][k] = fn(values) if values else None
    return out


def measure(package: Path, point: Point) -> dict:
    """Runs `point` in this process (see run_point for a fresh one); no EOS stop."""
    import runtime
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    options = runtime.EngineOptions(threads=point.threads, profile=point.profile,
                                    context=point.prompt_len + point.new_tokens)
    model = runtime.load(package, options)
    ids = prompt_ids(point.prompt_len, model.manifest.contract.vocab_size)
    samples = []
    for i in range(point.repeats + 1):  # the first call warms up and is not reported
        sampling = SamplingConfig(temperature=0) if point.sampling == "greedy" else SamplingConfig(seed=i)
        config = GenerationConfig(max_new_tokens=point.new_tokens, sampling=sampling, stop_at_eos=False)
        model.backend.truncate(0)
        out = model.generate_ids(ids, config)
        if out.stats.new_tokens != point.new_tokens:
            raise RuntimeError(f"asked for {point.new_tokens} tokens, got {out.stats.new_tokens} "
                               f"({out.finish_reason})")
        if i:
            samples.append(out.stats.to_json())
    return {**asdict(point), keys.PACKAGE_BYTES: package_bytes(package), keys.LOAD_S: model.load_s,
            **summarize(samples), "samples": samples}


def run_point(package: Path, point: Point, python: str = sys.executable) -> dict:
    """measure() in a fresh process, so peak RSS belongs to this point alone."""
    proc = subprocess.run([python, "-m", "benchmarks.latency", "--point", json.dumps(asdict(point)),
                           "--model", str(package)], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"latency run {asdict(point)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(runs: list[dict]) -> str:
    lines = ["| sampling | threads | prompt | TTFT (ms) | prefill tok/s | decode tok/s (min-max) | CPU ms/token "
             "| peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        m, lo, hi = r["median"], r["min"], r["max"]
        lines.append(f"| {r.get('sampling', 'greedy')} | {r['threads']} | {r['prompt_len']} | "
                     f"{1e3 * m[keys.TTFT_S]:.0f} | "
                     f"{m[keys.PREFILL_TOKENS_PER_S]:.0f} | {m[keys.DECODE_TOKENS_PER_S]:.1f} "
                     f"({lo[keys.DECODE_TOKENS_PER_S]:.1f}-{hi[keys.DECODE_TOKENS_PER_S]:.1f}) | "
                     f"{1e3 * m[keys.CPU_S_PER_TOKEN]:.1f} | {m[keys.PEAK_RSS_BYTES] / 2**20:.0f} |")
    return "\n".join(lines)


def sampling_ratios(runs: list[dict]) -> dict[tuple[int, int], dict]:
    """Per (threads, prompt): default-sampling decode tok/s over greedy's, per round (runs come in the order
    greedy, default within a round), with their median, min and max."""
    out: dict[tuple[int, int], dict] = {}
    pending: dict[tuple[int, int], float] = {}
    for r in runs:
        key, rate = (r["threads"], r["prompt_len"]), r["median"][keys.DECODE_TOKENS_PER_S]
        if r.get("sampling") == "greedy":
            pending[key] = rate
        elif r.get("sampling") == "default" and key in pending:
            out.setdefault(key, {"rounds": []})["rounds"].append(rate / pending.pop(key))
    for r in out.values():
        r.update(median=statistics.median(r["rounds"]), min=min(r["rounds"]), max=max(r["rounds"]))
    return out


def build_parser() -> argparse.ArgumentParser:
    d = Point()
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", type=Path, default=ROOT / "runtime" / "demo", help="model package folder")
    p.add_argument("--prompt-len", type=int, nargs="+", default=[d.prompt_len], help="prompt tokens (a sweep)")
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--threads", type=int, nargs="+", default=[d.threads], help="intra-op threads (a sweep)")
    p.add_argument("--repeats", type=int, default=d.repeats, help="measured calls after one warm-up")
    p.add_argument("--profile", default=d.profile, help="runtime power profile: latency or low-power")
    p.add_argument("--sampling", nargs="+", choices=SAMPLINGS, default=list(SAMPLINGS),
                   help="greedy and/or the CLI's default sampling settings (default: both, interleaved)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every point this many times, interleaved")
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    p.add_argument("--no-bandwidth", action="store_true", help="skip the memory bandwidth measurement")
    p.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: one point, JSON on stdout
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.point is not None:
        print(json.dumps(measure(args.model, Point(**json.loads(args.point)))))
        return 0
    from . import machine

    try:
        if args.rounds < 1:
            raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
        points = [Point(prompt_len=n, new_tokens=args.new_tokens, threads=t, repeats=args.repeats,
                        profile=args.profile, sampling=s)
                  for _ in range(args.rounds) for t in args.threads for n in args.prompt_len for s in args.sampling]
        if not (args.model / "manifest.json").is_file():
            raise FileNotFoundError(f"{args.model} is not a model package (no manifest.json); export one with "
                                    f"python -m export CHECKPOINT OUT")
        runs = []
        for point in points:
            runs.append(run_point(args.model, point))
            print(f"{point.sampling}, threads {point.threads}, prompt {point.prompt_len}: decode "
                  f"{runs[-1]['median'][keys.DECODE_TOKENS_PER_S]:.1f} tok/s", file=sys.stderr, flush=True)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(runs))
    ratios = sampling_ratios(runs)
    for (threads, prompt), r in ratios.items():
        print(f"default/greedy decode tok/s, threads {threads}, prompt {prompt}: median {r['median']:.3f} "
              f"(min {r['min']:.3f}, max {r['max']:.3f}, {len(r['rounds'])} rounds)")
    report = {"tool": "benchmarks.latency", "model": str(args.model), "command": "python -m benchmarks.latency "
              + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine.describe(not args.no_bandwidth), "runs": runs,
              "default_over_greedy": {f"threads {t}, prompt {n}": r for (t, n), r in ratios.items()}}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
