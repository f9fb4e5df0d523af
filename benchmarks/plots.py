"""python -m benchmarks.plots [--peers JSON ...] [--latency JSON ...] [--quality JSON] [--out DIR]

PNG plots from the JSON the other benchmark tools write: decode tokens/s by system and threads (peers,
latency thread sweeps), peak RSS against context length (latency prompt-length sweeps), and perplexity
against package size per quantization recipe (quality).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime import stats as keys

MIB = 2**20


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def decode_by_system(peers: list[dict], latency: list[dict], out: Path) -> Path:
    """Bars: median decode tokens/s per system, one bar per thread count (peers runs and latency sweeps)."""
    plt = _pyplot()
    series: dict[int, dict[str, float]] = {}  # threads -> system -> tok/s
    for report in peers:
        for r in report["results"]:
            if r["status"] == "ok":
                series.setdefault(report["threads"], {})[r["system"]] = r["median"][keys.DECODE_TOKENS_PER_S]
    for report in latency:
        name = f"{Path(report['model']).name} (latency)"
        for r in report["runs"]:
            series.setdefault(r["threads"], {}).setdefault(name, r["median"][keys.DECODE_TOKENS_PER_S])
    systems = list(dict.fromkeys(s for by in series.values() for s in by))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(systems)), 4))
    width = 0.8 / max(1, len(series))
    for i, (threads, by) in enumerate(sorted(series.items())):
        xs = [j + i * width for j, s in enumerate(systems) if s in by]
        ax.bar(xs, [by[s] for s in systems if s in by], width, label=f"{threads} threads")
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(systems))], systems, rotation=30, ha="right")
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title("Decode speed by system and threads")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def rss_by_context(latency: list[dict], out: Path) -> Path:
    """Lines: peak RSS against the positions in the KV cache (prompt + new tokens), per package and threads."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for report in latency:
        by_threads: dict[int, list[tuple[int, float]]] = {}
        for r in report["runs"]:
            by_threads.setdefault(r["threads"], []).append(
                (r["prompt_len"] + r["new_tokens"], r["median"][keys.PEAK_RSS_BYTES] / MIB))
        for threads, points in sorted(by_threads.items()):
            points.sort()
            ax.plot(*zip(*points), marker="o", label=f"{Path(report['model']).name}, {threads} threads")
    ax.set_xlabel("context length (prompt + new tokens)")
    ax.set_ylabel("peak RSS (MiB)")
    ax.set_title("Peak RSS against context length")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def perplexity_by_size(quality: dict, out: Path) -> Path:
    """Scatter: held-out perplexity against weight bytes, one labelled point per recipe."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in quality["results"]:
        x, y = r["package_bytes"] / MIB, r["perplexity"]
        ax.scatter(x, y)
        ax.annotate(r["recipe"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("model weights (MiB)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"Perplexity against size per recipe ({Path(quality['checkpoint']).name})")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.split("\n\n")[1])
    parser.add_argument("--peers", type=Path, nargs="*", default=[], help="benchmarks.peers JSON files")
    parser.add_argument("--latency", type=Path, nargs="*", default=[], help="benchmarks.latency JSON files")
    parser.add_argument("--quality", type=Path, default=None, help="benchmarks.quality JSON file")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    load = lambda path: json.loads(path.read_text())
    peers, latency = [load(p) for p in args.peers], [load(p) for p in args.latency]
    args.out.mkdir(parents=True, exist_ok=True)
    written = []
    if peers or latency:
        written.append(decode_by_system(peers, latency, args.out / "decode_by_system.png"))
    if any(len({r["prompt_len"] for r in rep["runs"]}) > 1 for rep in latency):
        written.append(rss_by_context(latency, args.out / "rss_by_context.png"))
    if args.quality:
        written.append(perplexity_by_size(load(args.quality), args.out / "perplexity_by_size.png"))
    if not written:
        print("error: nothing to plot; pass --peers, --latency (a prompt-length sweep) or --quality", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
