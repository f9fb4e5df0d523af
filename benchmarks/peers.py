"""python -m benchmarks.peers [--checkpoint DIR] [--systems ...] [--peer-python PY] [--threads N] [--json OUT]

This project's packages and the peer runtimes on one checkpoint, with the same prompt ids, new-token count
(no EOS stop) and thread count, greedy and at each system's own default sampling (--sampling: ours the CLI's
temperature 0.7 / top-p 0.95, onnxruntime-genai its genai_config.json's search options, llama.cpp its generate()
defaults, transformers and optimum the checkpoint's generation config); ratios compare systems of one sampling. Default checkpoint: a random-weight phi-1.5-size one made with
transformers (benchmarks.export_cost.random_checkpoint), since published weights cannot be downloaded here.

Each system is prepared (exported / converted, cached under --work), then measured in --rounds rounds: every
round runs each system once, in a fresh process, A B .. in even rounds and .. B A in odd ones, so a slow spell of
a shared machine hits all systems alike. The ratio to the best peer is taken within each round and reported as
median (min-max) over the rounds; a lead holds only where the min stays above 1. Ours run with this interpreter,
the peers with --peer-python, a venv that holds them apart from the project's pins:

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
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, replace
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


def call(python: str, action: str, runner: str, args: dict, log: Path | None = None,
         module: str = "benchmarks.peer_runners") -> dict:
    """One action of a peer-side module (peer_runners, peer_lookup) in `python`; its JSON answer."""
    proc = subprocess.run([python, "-m", module, action, runner, json.dumps(args)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    if log is not None:
        log.write_text(proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{runner} {action} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ours_versions() -> dict:
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__}


def prepare_system(system: System, checkpoint: Path, work: Path, point: latency.Point, peer_python: str,
                   llama_convert: Path) -> dict:
    """Exports / converts one system (cached under `work`); a row with status ok / skipped / failed."""
    out = work / slug(system.name)
    row = {"system": system.name, "runner": system.runner, "precision": system.precision,
           "block_size": system.block_size, "rounds": []}
    if system.runner == "ours":
        row.update(python=sys.executable, versions=_ours_versions(), api="runtime.load + generate_ids")
        if not (out / "manifest.json").is_file():
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "export", str(checkpoint), str(out), "--precision", system.precision,
                            "--block-size", str(system.block_size), "--method", "rtn", "--force", "--quiet"],
                           check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            row["prepare_s"] = time.perf_counter() - t
        return {**row, "status": "ok", "artifact": str(out), keys.PACKAGE_BYTES: latency.package_bytes(out)}
    row["python"] = peer_python
    status = call(peer_python, "check", system.runner, {})
    if not status["ok"]:
        return {**row, "status": "skipped", "reason": status["reason"]}
    row["versions"] = status["versions"]
    marker = out / ".prepared.json"
    try:
        if marker.is_file():
            artifact = json.loads(marker.read_text())["artifact"]
        else:
            t = time.perf_counter()
            artifact = call(peer_python, "prepare", system.runner, {
                "checkpoint": str(checkpoint), "out": str(out / "artifact"), "block_size": system.block_size,
                "threads": point.threads, "llama_convert": str(llama_convert)},
                work / f"{slug(system.name)}.prepare.log")["artifact"]
            row["prepare_s"] = time.perf_counter() - t
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"artifact": artifact}))
    except RuntimeError as e:
        return {**row, "status": "failed", "reason": str(e)}
    size = latency.package_bytes(Path(artifact)) if Path(artifact).is_dir() else Path(artifact).stat().st_size
    return {**row, "status": "ok", "artifact": artifact, keys.PACKAGE_BYTES: size}


def run_round(system: System, row: dict, work: Path, prompt: list[int], point: latency.Point) -> None:
    """One round of `point.repeats` calls (after a warm-up) in a fresh process, at row["sampling"]; appended to
    row["rounds"], and the row's summary recomputed over every round so far."""
    round_info = {"load_average_before": os.getloadavg()}  # other work on a shared machine slows every figure
    point = replace(point, sampling=row["sampling"])
    if system.runner == "ours":
        result = latency.run_point(Path(row["artifact"]), point)
    else:
        try:
            result = call(row["python"], "run", system.runner, {
                "artifact": row["artifact"], "prompt": prompt, "prompt_len": len(prompt), "sampling": point.sampling,
                "new_tokens": point.new_tokens, "threads": point.threads, "repeats": point.repeats},
                work / f"{slug(system.name)}.run.log")
        except RuntimeError as e:
            row.update(status="failed", reason=str(e))
            return
        row["api"] = result["api"]
    row["rounds"].append({**round_info, keys.LOAD_S: result[keys.LOAD_S], "samples": result["samples"]})
    samples = [s for r in row["rounds"] for s in r["samples"]]
    row.update(**latency.summarize(samples), samples=samples, load_s=result[keys.LOAD_S],
               load_average_before=row["rounds"][0]["load_average_before"])


# metric -> (stats key, higher is better)
METRICS = {"decode": (keys.DECODE_TOKENS_PER_S, True), "prefill": (keys.PREFILL_TOKENS_PER_S, True),
           "rss": (keys.PEAK_RSS_BYTES, False)}


def best_peer(rows: list[dict]) -> dict:
    """The best figure among the peers (not this project) for each sampling and metric, over all rounds."""
    best = {}
    for sampling in dict.fromkeys(r["sampling"] for r in rows):
        best[sampling] = {}
        for metric, (key, higher) in METRICS.items():
            values = [r["median"][key] for r in rows if r["status"] == "ok" and r["runner"] != "ours" and r["rounds"]
                      and r["sampling"] == sampling]
            best[sampling][metric] = (max if higher else min)(values) if values else None
    return best


def _round_median(row: dict, i: int, key: str) -> float | None:
    values = [s[key] for s in row["rounds"][i]["samples"] if s.get(key) is not None] if i < len(row["rounds"]) else []
    return statistics.median(values) if values else None


def ratios(rows: list[dict]) -> None:
    """For each system: its figure over the best peer's at the same sampling, round by round (the systems of a
    round ran side by side), as median, min and max over the rounds: row["ratio_to_best_peer"][metric]. A lead is
    claimed only where the min stays above 1."""
    ok = [r for r in rows if r["status"] == "ok" and r["rounds"]]
    rounds = min((len(r["rounds"]) for r in ok), default=0)
    for row in ok:
        peers = [r for r in ok if r["runner"] != "ours" and r["sampling"] == row["sampling"]]
        row["ratio_to_best_peer"] = {}
        for metric, (key, higher) in METRICS.items():
            values = []
            for i in range(rounds):
                theirs = [v for v in (_round_median(p, i, key) for p in peers) if v]
                mine = _round_median(row, i, key)
                if theirs and mine:
                    values.append(mine / ((max if higher else min)(theirs)))
            row["ratio_to_best_peer"][metric] = ({"median": statistics.median(values), "min": min(values),
                                                   "max": max(values), "rounds": len(values)} if values else None)


PAIR_METRICS = {"decode": (keys.DECODE_TOKENS_PER_S, True), "prefill": (keys.PREFILL_TOKENS_PER_S, True),
                "CPU per token": (keys.CPU_S_PER_TOKEN, False)}


def pairs(rows: list[dict]) -> list[dict]:
    """Each of this project's rows against each peer row of the same sampling: per metric, ours over theirs round
    by round, median / min / max (CPU per token: theirs over ours, so above 1 is better for us on every metric)."""
    ok = [r for r in rows if r["status"] == "ok" and r["rounds"]]
    out = []
    for mine in (r for r in ok if r["runner"] == "ours"):
        for theirs in (r for r in ok if r["runner"] != "ours" and r["sampling"] == mine["sampling"]):
            pair = {"ours": mine["system"], "peer": theirs["system"], "sampling": mine["sampling"]}
            for metric, (key, higher) in PAIR_METRICS.items():
                values = []
                for i in range(min(len(mine["rounds"]), len(theirs["rounds"]))):
                    a, b = _round_median(mine, i, key), _round_median(theirs, i, key)
                    if a and b:
                        values.append(a / b if higher else b / a)
                pair[metric] = ({"median": statistics.median(values), "min": min(values), "max": max(values),
                                 "rounds": len(values)} if values else None)
            out.append(pair)
    return out


def pair_table(rows: list[dict]) -> str:
    lines = ["| ours | peer | sampling | " + " | ".join(f"{m} ratio (min-max)" for m in PAIR_METRICS) + " |",
             "|---|---|---|" + "---:|" * len(PAIR_METRICS)]
    for p in pairs(rows):
        cells = [f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f})" if (q := p[m]) else "-" for m in PAIR_METRICS]
        lines.append(f"| {p['ours']} | {p['peer']} | {p['sampling']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    ratios(rows)

    def ratio(r: dict, metric: str) -> str:
        q = r.get("ratio_to_best_peer", {}).get(metric)
        return f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f})" if q else "-"

    lines = ["| system | sampling | weights | TTFT ms | prefill tok/s | decode tok/s (min-max) | CPU ms/token | peak RSS MiB | "
             "package MiB | decode / best peer | prefill / best peer | RSS / best peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok" or not r["rounds"]:
            reason = r.get("reason", "not run").splitlines()[0][:160]
            lines.append(f"| {r['system']} | {r['sampling']} | {r['precision']} | {r['status']}: {reason} | | | | | | | "
                         f"| |")
            continue
        m, lo, hi = r["median"], r["min"], r["max"]
        lines.append(
            f"| {r['system']} | {r['sampling']} | {r['precision']} | {1e3 * m[keys.TTFT_S]:.0f} | {m[keys.PREFILL_TOKENS_PER_S]:.0f} | "
            f"{m[keys.DECODE_TOKENS_PER_S]:.1f} "
            f"({lo[keys.DECODE_TOKENS_PER_S]:.1f}-{hi[keys.DECODE_TOKENS_PER_S]:.1f}) | "
            f"{1e3 * m[keys.CPU_S_PER_TOKEN]:.1f} | {m[keys.PEAK_RSS_BYTES] / 2**20:.0f} | "
            f"{r[keys.PACKAGE_BYTES] / 2**20:.0f} | {ratio(r, 'decode')} | {ratio(r, 'prefill')} | {ratio(r, 'rss')} |")
    return "\n".join(lines)


def parse_pythons(items: list[str], runners: tuple[str, ...]) -> dict[str, str]:
    """--python PEER=PY items -> {peer: python}; ValueError naming the item and the peers it may name."""
    pythons = {}
    for item in items:
        runner, sep, python = item.partition("=")
        if not sep or runner not in runners:
            raise ValueError(f"--python {item!r} is not PEER=PYTHON with PEER one of {', '.join(runners)}")
        pythons[runner] = python
    return pythons


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
    p.add_argument("--repeats", type=int, default=d.repeats, help="measured calls per system and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds: every system runs once per round in a fresh process, in A B .. then .. B A order, "
                        "so drift on a shared machine hits all alike; ratios are given per round (default: 3)")
    p.add_argument("--sampling", nargs="+", choices=latency.SAMPLINGS, default=list(latency.SAMPLINGS),
                   help="greedy and/or each system's default sampling (default: both, each a row per system)")
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
    try:
        pythons = parse_pythons(args.python, ("onnxruntime-genai", "optimum", "transformers", "llama.cpp"))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = {"tool": "benchmarks.peers", "command": "python -m benchmarks.peers " +
              " ".join(argv if argv is not None else sys.argv[1:]), "checkpoint": str(checkpoint),
              "model": {k: config.get(k) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")},
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "threads": args.threads,
              "repeats": args.repeats, "rounds": args.rounds, "sampling": args.sampling, "profile": args.profile, "machine": machine.describe(), "results": []}
    rows = report["results"]
    if args.rounds < 1:
        print(f"error: --rounds must be >= 1, got {args.rounds}", file=sys.stderr)
        return 2
    order = []  # (system name, row): one row per system and sampling
    for name in args.systems:
        print(f"{name}: preparing ...", file=sys.stderr, flush=True)
        prepared = prepare_system(SYSTEMS[name], checkpoint, work, point,
                                  pythons.get(SYSTEMS[name].runner, args.peer_python), convert)
        if prepared["status"] != "ok":
            print(f"  {prepared['status']}: {prepared['reason'][:300]}", file=sys.stderr, flush=True)
        for sampling in args.sampling:
            rows.append({**prepared, "sampling": sampling, "rounds": []})
            order.append((name, rows[-1]))
    for i in range(args.rounds):
        for name, row in (order if i % 2 == 0 else order[::-1]):
            if row["status"] != "ok":
                continue
            run_round(SYSTEMS[name], row, work, prompt, point)
            done = (f"{row['rounds'][-1]['samples'][0][keys.DECODE_TOKENS_PER_S]:.1f} tok/s decode"
                    if row["status"] == "ok" else row["reason"][:300])
            print(f"round {i + 1}, {name}, {row['sampling']}: {done}", file=sys.stderr, flush=True)
        ratios(rows)
        report["best_peer"] = best_peer(rows)
        report["pairs"] = pairs(rows)
        if args.json:  # after every round, so a run cut short keeps what it measured
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print()
    print(pair_table(rows))  # ours against each peer, e.g. each system's default recipe against the other's
    return 0


if __name__ == "__main__":
    sys.exit(main())
