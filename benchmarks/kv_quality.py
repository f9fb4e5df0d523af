"""python -m benchmarks.kv_quality [--checkpoint DIR] [--prompts N] [--new-tokens N] [--json OUT]

What a quantized KV cache costs in quality: for each cache dtype (float32, float16, int8, int4) of the same int4
weights, and for float32 weights with an int8 cache, the held-out perplexity and mean KL against the float32 cache
(benchmarks.quality on the same windows), and greedy agreement with the float32 cache over long generations:
`--prompts` prompts (the first 32 tokens of held-out windows), each continued greedily to the end of the context
without an EOS stop, reporting the share of identical tokens and where each generation first differs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from .quality import DEMO, Recipe, evaluate, windows

CACHES = ("float32", "float16", "int8", "int4")
FLAG = {"float32": "kv32", "float16": "kv16", "int8": "kv8", "int4": "kv4"}


def agreement(checkpoint: Path, prompts: list[list[int]], new_tokens: int, threads: int) -> list[dict]:
    import runtime
    from export.options import ExportOptions
    from export.package import export_package
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    rows, reference = [], None
    config = GenerationConfig(max_new_tokens=new_tokens, sampling=SamplingConfig(temperature=0), stop_at_eos=False)
    with tempfile.TemporaryDirectory() as tmp:
        for kv in CACHES:
            package = export_package(checkpoint, Path(tmp) / kv, ExportOptions(precision="int4", kv_dtype=kv),
                                     show_progress=False)
            model = runtime.load(package, runtime.EngineOptions(threads=threads))
            outs = []
            for ids in prompts:
                model.backend.truncate(0)
                outs.append(model.generate_ids(ids, config).tokens)
            if reference is None:
                reference = outs
            first = [next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), len(r)) for o, r in zip(outs, reference)]
            same = sum(sum(a == b for a, b in zip(o, r)) for o, r in zip(outs, reference))
            total = sum(len(r) for r in reference)
            rows.append({"kv": kv, "tokens": total, "identical_share": same / total,
                         "first_difference_median": float(np.median(first)), "first_difference_min": int(min(first)),
                         "identical_generations": sum(f == len(r) for f, r in zip(first, reference)),
                         "generations": len(prompts), "tokens_per_generation": len(reference[0])})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kv_quality", description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", type=Path, default=DEMO)
    p.add_argument("--heldout", type=Path, default=DEMO / "heldout")
    p.add_argument("--max-tokens", type=int, default=65536, help="held-out tokens scored for perplexity and KL")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=480, help="greedy tokens per prompt (32 + 480 = the demo's 512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    wins = windows(args.heldout, 512, args.max_tokens)
    recipes = [Recipe("int4", "rtn", 32, (FLAG[kv],)) for kv in CACHES] + [Recipe("fp32", flags=("kv8",))]
    quality = evaluate(args.checkpoint, recipes, wins, args.threads)
    step = max(1, len(wins) // args.prompts)
    prompts = [[int(t) for t in w[:32]] for w in wins[::step][:args.prompts]]
    agree = agreement(args.checkpoint, prompts, args.new_tokens, args.threads)
    print("| recipe | perplexity | vs fp32 | mean KL vs fp32 weights + cache |\n|---|---:|---:|---:|")
    for r in quality:
        print(f"| {r['recipe']} | {r['perplexity']:.3f} | {100 * r['perplexity_vs_fp32']:+.2f} % | "
              f"{r['mean_kl_vs_fp32']:.5f} |")
    print("\n| int4 weights, KV cache | identical tokens | generations identical | first difference (median, min) |"
          "\n|---|---:|---:|---:|")
    for r in agree:
        print(f"| {r['kv']} | {100 * r['identical_share']:.1f} % of {r['tokens']} | {r['identical_generations']} of "
              f"{r['generations']} | {r['first_difference_median']:.0f}, {r['first_difference_min']} |")
    if args.json:
        args.json.write_text(json.dumps({"tool": "benchmarks.kv_quality", "checkpoint": str(args.checkpoint),
                                         "windows": len(wins), "quality": quality, "agreement": agree}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
