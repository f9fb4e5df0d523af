"""python -m benchmarks.memory [--preset phi-3-mini-128k] [--levels 0 1024 4000] [--systems ...] [--rounds N] [...]

Memory and decode speed against the tokens a conversation holds: peak RSS and decode tokens/s at each level of
--levels, for our packages with a float32, float16, int8 and int4 KV cache and for onnxruntime-genai's (its
default, and its own int8 per-channel cache), all int4 block-32 weights (what both tools default to) of one
random-weight checkpoint of a published shape (benchmarks.export_cost.random_checkpoint). Each system runs in a
fresh process per round (benchmarks/memory_probe.py), in A B .. order in even rounds and .. B A in odd ones,
with its default settings: ours plans its context from free memory and grows the cache with the tokens held;
genai's generator takes the model's context as max_length unless the system says otherwise.

Reported per level: RSS added per 1k tokens held (against level 0), peak RSS, decode tok/s; and the ratios the
targets are stated in (ours / genai's default). A PNG of RSS against tokens held, one line per system (--plot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from export.options import EDGE_DEFAULTS, ExportOptions

from .export_cost import CACHE, random_checkpoint
from .latency import package_bytes
from .machine import describe
from .peers import call

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
GENAI_QMAX = 127


@dataclass(frozen=True)
class System:
    name: str
    kind: str  # "ours" or "genai"
    kv: str  # ours: --kv-dtype; genai: "default" or its kv_cache_quant_scheme
    max_length: str | None = None  # genai: None (its default) or "levels" (the largest level + decode)
    extra: dict = field(default_factory=dict)


SYSTEMS = {s.name: s for s in (
    System("phi-edge kv float32", "ours", "float32"),
    System("phi-edge kv float16", "ours", "float16"),
    System("phi-edge kv int8", "ours", "int8"),
    System("phi-edge kv int4", "ours", "int4"),
    System("onnxruntime-genai default", "genai", "default"),
    System("onnxruntime-genai max_length=used", "genai", "default", "levels"),
    System("onnxruntime-genai kv int8", "genai", "int8_per_channel", "levels", {"fresh_per_level": True}),
)}
DEFAULT_SYSTEMS = list(SYSTEMS)


def genai_scale_file(checkpoint: Path, out: Path) -> Path:
    """genai's builder needs calibrated per-channel scales for its quantized cache; on random weights any positive
    scales measure the same memory and speed: 0.05 for every channel (a range of +-6.35)."""
    config = json.loads((checkpoint / "config.json").read_text())
    layers, kv_heads = config["num_hidden_layers"], config.get("num_key_value_heads", config["num_attention_heads"])
    head = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    row = [0.05] * (kv_heads * head)
    out.write_text(json.dumps({"qmax": GENAI_QMAX, "scales": {"k_scales": [row] * layers, "v_scales": [row] * layers}}))
    return out


def prepare(system: System, checkpoint: Path, work: Path, peer_python: str) -> dict:
    """The system's artifact, built once and cached under `work`."""
    if system.kind == "ours":
        out = work / f"ours-{system.kv}"
        command = ["-m", "export", str(checkpoint), str(out), "--precision", "int4", "--block-size", "32",
                   "--kv-dtype", system.kv, "--force", "--quiet"]
        made = work / f"ours-{system.kv}.prepared.json"  # the command and export's defaults it was made with
        recipe = json.dumps({"command": command, "defaults": ExportOptions().to_json(), "edges": EDGE_DEFAULTS})
        if not (out / "manifest.json").is_file() or not made.is_file() or made.read_text() != recipe:
            made.unlink(missing_ok=True)
            subprocess.run([sys.executable, *command], check=True, cwd=ROOT)
            made.write_text(recipe)
        return {"artifact": str(out), "python": sys.executable}
    out = work / f"genai-{system.kv}"
    marker = out / ".prepared.json"
    if not marker.is_file():
        extra = {}
        if system.kv != "default":
            out.mkdir(parents=True, exist_ok=True)
            scales = genai_scale_file(checkpoint, out / "kv_scales.json")
            extra = {"kv_cache_quant_scheme": system.kv, "kv_cache_scale_file": str(scales)}
        artifact = call(peer_python, "prepare", "onnxruntime-genai", {
            "checkpoint": str(checkpoint), "out": str(out / "artifact"), "block_size": 32, "extra": extra},
            out.parent / f"genai-{system.kv}.prepare.log")["artifact"]
        marker.write_text(json.dumps({"artifact": artifact}))
    return {"artifact": json.loads(marker.read_text())["artifact"], "python": peer_python}


def probe(system: System, prepared: dict, levels: list[int], decode: int, chunk: int, threads: int,
          vocab: int) -> dict:
    args = {"artifact": prepared["artifact"], "levels": levels, "decode": decode, "chunk": chunk, "threads": threads,
            "vocab": vocab, "max_length": max(levels) + decode + chunk if system.max_length == "levels" else None,
            **system.extra}
    t = time.perf_counter()
    proc = subprocess.run([prepared["python"], "-m", "benchmarks.memory_probe", system.kind, json.dumps(args)],
                          capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])[-600:]
        killed = proc.returncode < 0 or proc.returncode == 137
        return {"status": "failed", "returncode": proc.returncode, "seconds": time.perf_counter() - t,
                "reason": ("killed (out of memory?) " if killed else "") + tail,
                "levels_reached": [json.loads(line) for line in proc.stderr.splitlines() if line.startswith('{"level"')]}
    return {"status": "ok", "seconds": time.perf_counter() - t, **json.loads(proc.stdout.strip().splitlines()[-1])}


def summarize(row: dict) -> None:
    """Median over the rounds per level, and the RSS added per 1k tokens held between the first and last level."""
    runs = [r for r in row["rounds"] if r["status"] == "ok"]
    if not runs:
        return
    levels = []
    for i, level in enumerate(runs[0]["levels"]):
        pick = lambda key: statistics.median(r["levels"][i][key] for r in runs)  # noqa: E731
        spread = lambda key: (min(r["levels"][i][key] for r in runs), max(r["levels"][i][key] for r in runs))  # noqa
        levels.append({"level": level["level"], "held": level["held"], "rss_bytes": pick("rss_bytes"),
                       "peak_rss_bytes": pick("peak_rss_bytes"), "decode_tokens_per_s": pick("decode_tokens_per_s"),
                       "decode_tokens_per_s_range": spread("decode_tokens_per_s"),
                       "cpu_s_per_token": pick("cpu_s_per_token")})
    first, last = levels[0], levels[-1]
    row["levels"] = levels
    row["rss_per_1k_tokens_bytes"] = (last["rss_bytes"] - first["rss_bytes"]) / max(1, last["held"] - first["held"]) * 1024


def ratios(rows: list[dict]) -> dict:
    """Ours / genai's default at each level, for the issue's targets (RSS per 1k held, peak RSS, decode)."""
    base = next((r for r in rows if r["system"] == "onnxruntime-genai default" and "levels" in r), None) or \
        next((r for r in rows if r["system"].startswith("onnxruntime-genai max_length") and "levels" in r), None)
    out = {}
    if base is None:
        return out
    out["reference"] = base["system"]
    for r in rows:
        if r["kind"] != "ours" or "levels" not in r:
            continue
        per_1k = base["rss_per_1k_tokens_bytes"]
        out[r["system"]] = {"rss_per_1k_tokens": r["rss_per_1k_tokens_bytes"] / per_1k if per_1k > 0 else None,
                            "peak_rss": {lv["level"]: lv["peak_rss_bytes"] / b["peak_rss_bytes"]
                                         for lv, b in zip(r["levels"], base["levels"])}}
    return out


def table(rows: list[dict]) -> str:
    levels = next((r["levels"] for r in rows if "levels" in r), [])
    head = "| system | RSS / 1k held (MiB) |" + "".join(f" peak RSS @{lv['level']} (MiB) |" for lv in levels) + \
        "".join(f" decode tok/s @{lv['level']} |" for lv in levels)
    lines = [head, "|---|---:|" + "---:|" * (2 * len(levels))]
    for r in rows:
        if "levels" not in r:
            lines.append(f"| {r['system']} | {r['rounds'][0].get('reason', 'failed')[:120]} |")
            continue
        lines.append(f"| {r['system']} | {r['rss_per_1k_tokens_bytes'] / MIB:.1f} |" +
                     "".join(f" {lv['peak_rss_bytes'] / MIB:.0f} |" for lv in r["levels"]) +
                     "".join(f" {lv['decode_tokens_per_s']:.2f} |" for lv in r["levels"]))
    return "\n".join(lines)


def plot(rows: list[dict], out: Path, title: str) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if "levels" in r:
            ax.plot([lv["held"] for lv in r["levels"]], [lv["peak_rss_bytes"] / MIB for lv in r["levels"]],
                    marker="o", label=r["system"])
        elif r["rounds"] and r["rounds"][0].get("levels_reached"):  # what it held before it failed, dashed
            reached = r["rounds"][0]["levels_reached"]
            ax.plot([lv["held"] for lv in reached], [lv["peak_rss_bytes"] / MIB for lv in reached], marker="x",
                    linestyle="--", label=f"{r['system']}: failed on the way from {reached[-1]['held']} to the next level")
        elif r["rounds"]:  # a system that never held a token is named in the legend, with why
            ax.plot([], [], linestyle="none", marker="x", color="black",
                    label=f"{r['system']}: {r['rounds'][0].get('reason', 'failed').split('(')[0].strip()[:40]}")
    ax.set_xlabel("tokens held in the KV cache")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_title(report: dict) -> str:
    return f"Peak RSS against tokens held: {Path(report['checkpoint']).name}, int4 b32 weights, {report['threads']} threads"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[1])
    p.add_argument("--preset", default="phi-3-mini-128k", help="random-weight checkpoint of this shape")
    p.add_argument("--checkpoint", type=Path, default=None, help="a checkpoint instead of --preset")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1024, 4000],
                   help="tokens held at each measurement (default: 0 1024 4000, below Phi-3-mini-128k's LongRoPE "
                        "switch at 4096)")
    p.add_argument("--systems", nargs="+", default=DEFAULT_SYSTEMS, choices=list(SYSTEMS))
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--decode", type=int, default=16, help="greedy tokens timed at each level")
    p.add_argument("--chunk", type=int, default=512, help="prompt tokens per step while filling")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-python", default="/opt/phi-peers/bin/python", help="a Python with onnxruntime-genai")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--replot", type=Path, default=None, help="only draw --plot from this JSON of an earlier run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        report = json.loads(args.replot.read_text())
        plot(report["results"], args.plot or args.replot.with_suffix(".png"), plot_title(report))
        return 0
    checkpoint = args.checkpoint or random_checkpoint(args.preset)
    name = checkpoint.name
    work = CACHE / "memory" / name
    work.mkdir(parents=True, exist_ok=True)
    config = json.loads((checkpoint / "config.json").read_text())
    systems = [SYSTEMS[s] for s in args.systems]
    rows = []
    for s in systems:
        row = {"system": s.name, "kind": s.kind, "kv": s.kv, "rounds": []}
        try:
            row.update(prepare(s, checkpoint, work, args.peer_python))
            row["package_bytes"] = package_bytes(Path(row["artifact"]))
        except (RuntimeError, subprocess.CalledProcessError) as e:
            row["rounds"].append({"status": "failed", "reason": f"prepare: {e}"[-600:]})
        rows.append(row)
        print(f"prepared {s.name}", file=sys.stderr, flush=True)
    ready = [r for r in rows if "artifact" in r]
    for i in range(args.rounds):
        for row in (ready if i % 2 == 0 else ready[::-1]):
            result = probe(SYSTEMS[row["system"]], row, args.levels, args.decode, args.chunk, args.threads,
                           config["vocab_size"])
            row["rounds"].append(result)
            print(f"round {i} {row['system']}: {result['status']} ({result['seconds']:.0f} s)", file=sys.stderr,
                  flush=True)
    for row in rows:
        summarize(row)
    report = {"tool": "benchmarks.memory", "command": "python -m benchmarks.memory " + " ".join(argv or sys.argv[1:]),
              "checkpoint": str(checkpoint), "model": {k: config.get(k) for k in (
                  "model_type", "hidden_size", "num_hidden_layers", "num_key_value_heads", "vocab_size",
                  "max_position_embeddings")},
              "levels": args.levels, "decode": args.decode, "chunk": args.chunk, "threads": args.threads,
              "rounds": args.rounds, "machine": describe(), "results": rows, "ratios": ratios(rows)}
    print(table(rows))
    print(json.dumps(report["ratios"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=float) + "\n")
    if args.plot:
        plot(rows, args.plot, plot_title(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
