"""python -m benchmarks.peers [--checkpoint DIR] [--systems ...] [--peer-python PY] [--threads N] [--json OUT]

This project's packages and the peer runtimes on one checkpoint, with the same prompt ids, new-token count
(greedy, no EOS stop) and thread count. Default checkpoint: a random-weight phi-1.5-size one made with
transformers (benchmarks.export_cost.random_checkpoint), since published weights cannot be downloaded here.

Each system is prepared (exported / converted, cached under --work) and run in its own processes: ours with
this interpreter, the peers with --peer-python, a venv that holds them apart from the project's pins:

    python -m venv /opt/phi-peers
    /opt/phi-peers/bin/pip install torch onnxruntime-genai 'optimum[onnxruntime]' transformers llama-cpp-python
    # llama.cpp's converter: convert_hf_to_gguf.py, conversion/, gguf-py/ from the llama-cpp-python sdist
    # (vendor/llama.cpp) copied to /opt/phi-peers/llama.cpp/

A peer whose package does not import there is reported as skipped with the reason; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtime import stats as keys

from . import latency
from .export_cost import CACHE, random_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class System:
    name: str
    runner: str  # "ours" or a key of benchmarks.peer_runners.SYSTEMS
    precision: str
    block_size: int | None = None


SYSTEMS = {s.name: s for s in (
    System("phi-edge int4 b32", "ours", "int4", 32),
    System("phi-edge int4 b128", "ours", "int4", 128),
    System("onnxruntime-genai int4 b32", "onnxruntime-genai", "int4", 32),
    System("onnxruntime-genai int4 b128", "onnxruntime-genai", "int4", 128),
    System("llama.cpp Q4_0", "llama.cpp", "Q4_0 (block 32)", 32),
    System("optimum fp32", "optimum", "fp32"),
    System("transformers fp32", "transformers", "fp32"),
)}


def slug(name: str) -> str:
    return name.replace(" ", "-").replace(".", "")


def _call(python: str, action: str, runner: str, args: dict, log: Path | None = None) -> dict:
    proc = subprocess.run([python, "-m", "benchmarks.peer_runners", action, runner, json.dumps(args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if log is not None:
        log.write_text(proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{runner} {action} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours_versions() -> dict:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def measure_system(system: System, checkpoint: Path, work: Path, prompt: list[int], point: latency.Point,
                   peer_python: str, llama_convert: Path) -> dict:
    """Prepares (cached) and runs one system; a dict with status ok / skipped / failed."""
    out = work / slug(system.name)
    row = {"system": system.name, "runner": system.runner, "precision": system.precision,
           "block_size": system.block_size,
           "load_average_before": os.getloadavg()}  # other work on a shared machine slows every figure
    if system.runner == "ours":
        row.update(python=sys.executable, versions=_ours_versions())
        if not (out / "manifest.json").is_file():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "export", str(checkpoint), str(out), "--precision", system.precision,
                            "--block-size", str(system.block_size), "--method", "rtn", "--force", "--quiet"],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            row["prepare_s"] = time.perf_counter() - t
        result = latency.run_point(out, point)
        return {**row, "status": "ok", "api": "runtime.load + generate_ids", "artifact": str(out),
                keys.PACKAGE_BYTES: result[keys.PACKAGE_BYTES], keys.LOAD_S: result[keys.LOAD_S],
                **{k: result[k] for k in ("median", "min", "max", "samples")}}
    row["python"] = peer_python
    status = _call(peer_python, "check", system.runner, {})
    if not status["ok"]:
        return {**row, "status": "skipped", "reason": status["reason"]}
    row["versions"] = status["versions"]
    marker = out / ".prepared.json"
    try:
        if marker.is_file():
            artifact = json.loads(marker.read_text())["artifact"]
        else:
            t = time.perf_counter()
            artifact = _call(peer_python, "prepare", system.runner, {
                "checkpoint": str(checkpoint), "out": str(out / "artifact"), "block_size": system.block_size,
                "threads": point.threads, "llama_convert": str(llama_convert)},
                work / f"{slug(system.name)}.prepare.log")["artifact"]
            row["prepare_s"] = time.perf_counter() - t
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"artifact": artifact}))
        result = _call(peer_python, "run", system.runner, {
            "artifact": artifact, "prompt": prompt, "prompt_len": len(prompt), "new_tokens": point.new_tokens,
            "threads": point.threads, "repeats": point.repeats}, work / f"{slug(system.name)}.run.log")
    except RuntimeError as e:
        return {**row, "status": "failed", "reason": str(e)}
    size = latency.package_bytes(Path(artifact)) if Path(artifact).is_dir() else Path(artifact).stat().st_size
    samples = result["samples"]
    return {**row, "status": "ok", "api": result["api"], "artifact": artifact, keys.PACKAGE_BYTES: size,
            keys.LOAD_S: result[keys.LOAD_S], **latency.summarize(samples), "samples": samples}


# metric -> (stats key, higher is better)
METRICS = {"decode": (keys.DECODE_TOKENS_PER_S, True), "prefill": (keys.PREFILL_TOKENS_PER_S, True),
           "rss": (keys.PEAK_RSS_BYTES, False)}


def best_peer(rows: list[dict]) -> dict:
    """The best figure among the peers (not this project) for each metric."""
    best = {}
    for metric, (key, higher) in METRICS.items():
        values = [r["median"][key] for r in rows if r["status"] == "ok" and r["runner"] != "ours"]
        best[metric] = (max if higher else min)(values) if values else None
    return best


def table(rows: list[dict]) -> str:
    best = best_peer(rows)
    ratio = lambda v, b: f"{v / b:.2f}x" if b else "-"
    lines = ["| system | weights | TTFT ms | prefill tok/s | decode tok/s (min-max) | CPU ms/token | peak RSS MiB | "
             "package MiB | decode / best peer | prefill / best peer | RSS / best peer |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['system']} | {r['precision']} | {r['status']}: {r['reason'].splitlines()[0][:160]} "
                         "| | | | | | | | |")
            continue
        m, lo, hi = r["median"], r["min"], r["max"]
        lines.append(
            f"| {r['system']} | {r['precision']} | {1e3 * m[keys.TTFT_S]:.0f} | {m[keys.PREFILL_TOKENS_PER_S]:.0f} | "
            f"{m[keys.DECODE_TOKENS_PER_S]:.1f} "
            f"({lo[keys.DECODE_TOKENS_PER_S]:.1f}-{hi[keys.DECODE_TOKENS_PER_S]:.1f}) | "
            f"{1e3 * m[keys.CPU_S_PER_TOKEN]:.1f} | {m[keys.PEAK_RSS_BYTES] / 2**20:.0f} | "
            f"{r[keys.PACKAGE_BYTES] / 2**20:.0f} | {ratio(m[keys.DECODE_TOKENS_PER_S], best['decode'])} | "
            f"{ratio(m[keys.PREFILL_TOKENS_PER_S], best['prefill'])} | {ratio(m[keys.PEAK_RSS_BYTES], best['rss'])} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    d = latency.Point()
    p = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", type=Path, default=None, help="default: a random-weight one of --preset's shape")
    p.add_argument("--preset", default="phi-1_5", help="shape of the random checkpoint (default: phi-1_5; "
                                                       "phi-3-mini-4k, phi-4-mini, ...)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS), metavar="SYSTEM",
                   help=f"default: all of {', '.join(SYSTEMS)}")
    p.add_argument("--peer-python", default=sys.executable, help="Python that runs the peers (default: this one)")
    p.add_argument("--python", action="append", default=[], metavar="PEER=PY",
                   help="a Python for one peer, e.g. onnxruntime-genai=/opt/phi-peers-genai/bin/python "
                        "(its builder and optimum pin different transformers versions)")
    p.add_argument("--llama-convert", type=Path, default=None,
                   help="llama.cpp's convert_hf_to_gguf.py (default: PEER_PYTHON's prefix/llama.cpp/)")
    p.add_argument("--prompt-len", type=int, default=d.prompt_len)
    p.add_argument("--new-tokens", type=int, default=d.new_tokens)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--repeats", type=int, default=d.repeats)
    p.add_argument("--profile", default=d.profile, help="this project's engine profile: low-power or latency")
    p.add_argument("--work", type=Path, default=None,
                   help="exported artifacts, cached (default: ~/.cache/phi-edge/peers/CHECKPOINT_NAME)")
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from . import machine

    checkpoint = args.checkpoint or random_checkpoint(args.preset)
    work = args.work or CACHE / "peers" / checkpoint.name
    work.mkdir(parents=True, exist_ok=True)
    convert = args.llama_convert or Path(args.peer_python).parent.parent / "llama.cpp" / "convert_hf_to_gguf.py"
    config = json.loads((checkpoint / "config.json").read_text())
    point = latency.Point(prompt_len=args.prompt_len, new_tokens=args.new_tokens, threads=args.threads,
                          repeats=args.repeats, profile=args.profile)
    prompt = latency.prompt_ids(args.prompt_len, config["vocab_size"])
    pythons = {}
    for item in args.python:
        runner, sep, python = item.partition("=")
        if not sep or runner not in {s.runner for s in SYSTEMS.values()} - {"ours"}:
            print(f"error: --python {item!r} is not PEER=PYTHON with PEER one of onnxruntime-genai, optimum, "
                  f"transformers, llama.cpp", file=sys.stderr)
            return 2
        pythons[runner] = python
    report = {"tool": "benchmarks.peers", "command": "python -m benchmarks.peers " +
              " ".join(argv if argv is not None else sys.argv[1:]), "checkpoint": str(checkpoint),
              "model": {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")},
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": args.threads,
              "repeats": args.repeats, "profile": args.profile, "machine": machine.describe(), "results": []}
    rows = report["results"]
    for name in args.systems:
        print(f"{name} ...", file=sys.stderr, flush=True)
        rows.append(measure_system(SYSTEMS[name], checkpoint, work, prompt, point,
                                   pythons.get(SYSTEMS[name].runner, args.peer_python), convert))
        r = rows[-1]
        done = (f"{r['median'][keys.DECODE_TOKENS_PER_S]:.1f} tok/s decode" if r["status"] == "ok"
                else r["reason"][:300])
        print(f"  {r['status']}: {done}", file=sys.stderr, flush=True)
        report["best_peer"] = best_peer(rows)
        if args.json:  # after every system, so a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
