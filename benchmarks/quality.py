"""python -m benchmarks.quality [--checkpoint DIR] [--heldout DIR] [--recipes ...] [--tasks ...] [--json OUT]

Quality after quantization: held-out perplexity of each export recipe, and the mean KL divergence of its
next-token distribution from fp32's (as llama.cpp's perplexity tool reports), measured through ONNX Runtime
on the same token windows; and task accuracy through LM-Eval Harness on each recipe's package
(benchmarks/evaluate.py), by default the offline stdlib_next_line task (benchmarks/localtasks.py). Defaults: the
demo model and its held-out split of whole stdlib modules.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .perplexity import WindowScorer, log_softmax

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "train" / "demo"
DEFAULT_RECIPES = ("fp32:kv32", "fp32", "fp16", "int8:rtn:32", "int8:rtn:128", "int4:rtn:32", "int4:rtn:64", "int4:rtn:128",
                   "int4:hqq:32", "int4:hqq:64", "int4:hqq:128")


FLAGS = {"kv16": "a float16 KV cache (export --kv-dtype float16)", "kv8": "an int8 KV cache (--kv-dtype int8)",
         "kv4": "an int4 KV cache (--kv-dtype int4)", "kv32": "a float32 KV cache (--kv-dtype float32)",
         "head4": "an int4 lm_head (export --lm-head int4)", "head8": "an int8 lm_head (export --lm-head int8)",
         "emb4": "an int4 embedding (export --embedding int4)", "emb8": "an int8 embedding (export --embedding int8)",
         "head32": "a float32 lm_head (export --lm-head fp32)", "emb32": "a float32 embedding (--embedding fp32)",
         "sym": "symmetric weights, no zero points (export --symmetric; onnxruntime-genai's builder's default)"}


KV_FLAGS = {"kv16": "float16", "kv8": "int8", "kv4": "int4", "kv32": "float32"}


@dataclass(frozen=True)
class Recipe:
    precision: str
    method: str = "rtn"
    block_size: int = 32
    flags: tuple[str, ...] = ()  # keys of FLAGS, in the order given

    @classmethod
    def parse(cls, text: str) -> Recipe:
        parts = text.split(":")
        flags = tuple(p for p in parts if p in FLAGS)
        parts = [p for p in parts if p not in FLAGS]
        try:
            if not 1 <= len(parts) <= 3:
                raise ValueError
            return cls(parts[0], *(parts[1:2]), *(int(p) for p in parts[2:3]), flags=flags)
        except ValueError:
            raise ValueError(f"recipe {text!r} is not PRECISION[:METHOD[:BLOCK]][:FLAG..] with FLAG one of "
                             f"{', '.join(FLAGS)}, e.g. int4:hqq:32 or int4:rtn:128:head4:emb4") from None

    @property
    def label(self) -> str:
        base = self.precision if self.precision in ("fp32", "fp16") else \
            f"{self.precision} {self.method} b{self.block_size}"
        return " ".join((base,) + self.flags)

    def options(self):
        """The ExportOptions this recipe stands for (logits for every position, to score windows)."""
        from export.options import ExportOptions

        edge = {f"{name}{bits}": f"int{bits}" for name in ("head", "emb") for bits in (4, 8)}
        edge.update(head32="fp32", emb32="fp32")
        return ExportOptions(precision=self.precision, method=self.method, block_size=self.block_size, logits="all",
                             symmetric="sym" in self.flags,
                             kv_dtype=next((KV_FLAGS[f] for f in self.flags if f in KV_FLAGS),
                                           ExportOptions.kv_dtype),
                             **{k: edge[f] for f in self.flags for k, pre in (("lm_head", "head"),
                                                                              ("embedding", "emb"))
                                if f.startswith(pre)})


def windows(heldout: Path, seq_len: int, max_tokens: int) -> list[np.ndarray]:
    from train.data import load_source  # numpy only
    from train.mixture import heldout_batches

    rows = heldout_batches(load_source(heldout), seq_len, max_tokens, batch_size=1)
    return [r[0] for r in rows]


def task_accuracy(package: Path, tasks: list[str], include_path: Path | None, threads: int) -> dict:
    """{task: {metric: value}} of LM-Eval Harness on `package` (acc, acc_norm, ...)."""
    from .evaluate import PackageLM
    from .evaluate import evaluate as harness

    results = harness(PackageLM(package, threads or None), tasks, include_path)["results"]
    return {t: {k.split(",")[0]: v for k, v in m.items() if isinstance(v, float)} for t, m in results.items()}


def evaluate(checkpoint: Path, recipes: list[Recipe], wins: list[np.ndarray], threads: int = 0,
             tasks: list[str] = (), include_path: Path | None = None) -> list[dict]:
    from export.package import export_package

    reference: list[np.ndarray] | None = None  # fp32 log-probabilities per window
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference_recipe = Recipe("fp32", flags=("kv32",))  # float32 weights and cache
        for recipe in [reference_recipe] + [r for r in recipes if r != reference_recipe]:
            package = export_package(checkpoint, Path(tmp) / recipe.label.replace(" ", "_"), recipe.options(),
                                     show_progress=False)
            scorer = WindowScorer(package, threads)
            nll, kl, count, logps = 0.0, 0.0, 0, []
            for i, w in enumerate(wins):
                logp = log_softmax(scorer.logits(w[:-1]).astype(np.float64))
                nll -= logp[np.arange(len(w) - 1), w[1:]].sum()
                if reference is not None:
                    ref = reference[i]
                    kl += (np.exp(ref) * (ref - logp)).sum()
                else:
                    logps.append(logp)
                count += len(w) - 1
            if reference is None:
                reference = logps
            size = sum(f.stat().st_size for f in package.iterdir() if f.name.startswith("model.onnx"))
            rows.append({"recipe": recipe.label, "precision": recipe.precision, "method": recipe.method,
                         "block_size": recipe.block_size, "tokens": count, "nll": nll / count,
                         "perplexity": math.exp(nll / count), "mean_kl_vs_fp32": kl / count,
                         "package_bytes": size})
            if tasks:
                rows[-1]["tasks"] = task_accuracy(package, list(tasks), include_path, threads)
    base = rows[0]["perplexity"]
    for row in rows:
        row["perplexity_vs_fp32"] = row["perplexity"] / base - 1
    return rows  # the fp32 reference comes first


def table(rows: list[dict]) -> str:
    tasks = list(rows[0].get("tasks", {}))
    head = "".join(f" {t} acc / acc_norm |" for t in tasks)
    lines = ["| recipe | perplexity | vs fp32 | mean KL vs fp32 | weights (MiB) |" + head,
             "|---|---:|---:|---:|---:|" + "---:|" * len(tasks)]
    for r in rows:
        accs = "".join(f" {r['tasks'][t].get('acc', float('nan')):.3f} / {r['tasks'][t].get('acc_norm', float('nan')):.3f} |"
                       for t in tasks)
        lines.append(f"| {r['recipe']} | {r['perplexity']:.3f} | {100 * r['perplexity_vs_fp32']:+.2f} % | "
                     f"{r['mean_kl_vs_fp32']:.5f} | {r['package_bytes'] / 2**20:.2f} |" + accs)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[1])
    parser.add_argument("--checkpoint", type=Path, default=DEMO, help="checkpoint folder (default: the demo model)")
    parser.add_argument("--heldout", type=Path, default=DEMO / "heldout", help="held-out shard folder")
    parser.add_argument("--recipes", nargs="+", default=list(DEFAULT_RECIPES),
                        help="PRECISION[:METHOD[:BLOCK]][:FLAG..] each, FLAG one of " + ", ".join(f"{k} ({v})" for k, v in
                             FLAGS.items()) + "; e.g. int4:hqq:32 or int4:rtn:128:head4:emb4")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=2**20, help="held-out tokens to score")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--tasks", nargs="*", default=None,
                        help="LM-Eval Harness tasks per recipe (default: stdlib_next_line for the demo model, none "
                             "otherwise; pass none to skip)")
    parser.add_argument("--include-path", type=Path, default=None, help="a folder of task YAMLs for --tasks")
    parser.add_argument("--task-docs", type=int, default=200, help="documents of stdlib_next_line (default: 200)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        recipes = [Recipe.parse(r) for r in args.recipes]
        tasks = args.tasks if args.tasks is not None else (["stdlib_next_line"] if args.checkpoint == DEMO else [])
        tasks = [t for t in tasks if t != "none"]
        include = args.include_path
        tmp_tasks = tempfile.TemporaryDirectory()
        if "stdlib_next_line" in tasks and include is None:
            from .localtasks import demo_task

            include, _ = demo_task(Path(tmp_tasks.name), n=args.task_docs)
        rows = evaluate(args.checkpoint, recipes, windows(args.heldout, args.seq_len, args.max_tokens), args.threads,
                        tasks, include)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"checkpoint": str(args.checkpoint), "seq_len": args.seq_len,
                                         "results": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
