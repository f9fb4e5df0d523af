"""python -m benchmarks.speculative [--model PACKAGE] [--cost-model PACKAGE] [--new-tokens 128] [--threads 2]

Prompt-lookup speculative decoding (runtime/speculate.py) on text nobody here wrote: held-out documents of the
demo's corpus and functions of the Python standard library's own source files, as three kinds of prompt:

    completion   a document's opening, continued
    rewrite      "Rewrite this function ..." + a stdlib function + its def line again
    question     a stdlib module excerpt + a question about one of its functions

Per prompt, greedy decoding with --draft none and --draft ngram alternate over --rounds rounds in this process:
identical tokens (checked), acceptance (accepted / drafted), tokens per decode step, and decode tok/s with its
speedup; then the same at the CLI's default sampling (its tokens differ by design, its distribution does not).
--cost-model times a verify step of S = 1 .. 9 tokens on a bigger package (a phi-1.5-size one: memory-bound, so
S tokens cost little more than one) and models each prompt's speedup there from the step sizes the demo took:
sum of cost(S) over the steps with drafts against cost(1) per token without.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("textwrap", "shlex", "json.decoder", "ipaddress", "fractions", "calendar")


class StepLog:
    """Wraps a backend; records the tokens fed by each decode step (prefill included, told apart later)."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def __getattr__(self, name: str):  # options, threads, manifest ... of the inner backend
        return getattr(self.inner, name)

    vocab_size = property(lambda self: self.inner.vocab_size)
    capacity = property(lambda self: self.inner.capacity)
    length = property(lambda self: self.inner.length)
    can_step_all = property(lambda self: self.inner.can_step_all)
    rope_switch = property(lambda self: getattr(self.inner, "rope_switch", None))

    def truncate(self, n: int) -> None:
        self.inner.truncate(n)

    def step(self, ids):
        self.sizes.append(len(ids))
        return self.inner.step(ids)

    def step_all(self, ids):
        self.sizes.append(len(ids))
        return self.inner.step_all(ids)


def _functions(module_name: str, limit: int = 40) -> list[tuple[str, str]]:
    """(name, source) of top-level functions and methods of a stdlib module with 6 to `limit` lines."""
    import importlib

    source = inspect.getsource(importlib.import_module(module_name))
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and 6 <= node.end_lineno - node.lineno + 1 <= limit:
            out.append((node.name, inspect.cleandoc("\n" + ast.get_source_segment(source, node)) + "\n"))
    return out


def prompts(tokenizer, heldout: Path, max_prompt: int) -> list[dict]:
    """The benchmark prompts, each cut to at most `max_prompt` tokens (from the start of the text)."""

    def cut(text: str) -> str:
        ids = tokenizer.encode(text).ids[:max_prompt]
        return tokenizer.decode(ids)

    out = []
    meta = json.loads((heldout / "source.json").read_text())
    tokens = np.fromfile(heldout / meta["shards"][0]["file"], dtype=meta["dtype"]).astype(np.int64)
    docs = [d for d in np.split(tokens, np.flatnonzero(tokens == meta["eos_id"]) + 1) if len(d) > 2 * max_prompt]
    for i, doc in enumerate(docs[:3]):
        out.append({"kind": "completion", "name": f"heldout document {i}",
                    "text": tokenizer.decode(doc[:max_prompt].tolist())})
    for module in MODULES[:3]:
        name, src = _functions(module)[0]
        out.append({"kind": "completion", "name": f"{module}.{name} (stdlib source)", "text": cut(src)})
    for module in MODULES[3:6]:
        name, src = _functions(module)[1]
        first = src.splitlines()[0]
        out.append({"kind": "rewrite", "name": f"{module}.{name}",
                    "text": cut(f"# Rewrite this function with clearer variable names.\n\n{src}\n\n# Rewritten:\n")
                    + first + "\n"})
    for module in MODULES[:3]:
        functions = _functions(module)
        name, _ = functions[-1]
        body = "\n".join(src for _, src in functions[-3:])
        out.append({"kind": "question", "name": f"{module}: what does {name} do",
                    "text": cut(body) + f"\n\nQuestion: What does the function {name} do, and what does it return?"
                                        f"\nAnswer:"})
    return out


def run_prompt(model, text: str, new_tokens: int, rounds: int) -> dict:
    from runtime.loop import GenerationConfig
    from runtime.pipeline import TextGenerator
    from runtime.sampling import SamplingConfig

    log = StepLog(model.backend)
    logged = TextGenerator(model.manifest, log, load_s=model.load_s)
    logged.draft_cost()  # the verify cost line, measured (or read from the cache) before any step is logged
    result = {}
    for label, sampling in (("greedy", SamplingConfig(temperature=0)), ("default", None)):
        rates = {"none": [], "ngram": []}
        runs = {}
        for r in range(rounds):
            for draft in ("none", "ngram") if r % 2 == 0 else ("ngram", "none"):
                config = GenerationConfig(new_tokens, sampling or SamplingConfig(seed=r), stop_at_eos=False,
                                          draft=draft)
                log.sizes = []
                out = logged.generate(text, config)
                rates[draft].append(out.stats.decode_tokens_per_s)
                runs[draft] = (out, [s for s in log.sizes[1:]])  # after the prefill
        plain, (spec, sizes) = runs["none"][0], runs["ngram"]
        s = spec.stats
        result[label] = {
            "identical": plain.tokens == spec.tokens if label == "greedy" else None,
            "new_tokens": s.new_tokens, "decode_steps": s.decode_steps, "draft_tokens": s.draft_tokens,
            "accepted_tokens": s.accepted_tokens,
            "acceptance": s.accepted_tokens / s.draft_tokens if s.draft_tokens else None,
            "tokens_per_step": (s.new_tokens - 1) / s.decode_steps if s.decode_steps else None,
            "plain_tok_s": statistics.median(rates["none"]), "ngram_tok_s": statistics.median(rates["ngram"]),
            "speedup": statistics.median(rates["ngram"]) / statistics.median(rates["none"]),
            "step_sizes": sizes}
    return result


def verify_cost(package: Path, threads: int, past: int = 256, repeats: int = 12, max_s: int = 9) -> dict:
    """Median ms of one step of S = 1 .. max_s tokens after `past` cached positions, interleaved over S."""
    import runtime
    from runtime.engine import EngineOptions

    model = runtime.load(package, EngineOptions(threads=threads, context=past + max_s + 1))
    backend = model.backend
    ids = np.random.default_rng(0).integers(1, backend.vocab_size, past + max_s).tolist()
    backend.step(ids[:past])
    times: dict[int, list[float]] = {s: [] for s in range(1, max_s + 1)}
    for r in range(repeats + 1):
        for s in range(1, max_s + 1):
            backend.truncate(past)
            t0 = time.perf_counter()
            backend.step_all(ids[past:past + s])
            if r:  # the first round warms up
                times[s].append(time.perf_counter() - t0)
    ms = {s: 1e3 * statistics.median(v) for s, v in times.items()}
    return {"package": str(package), "threads": threads, "past": past, "ms": ms,
            "relative": {s: ms[s] / ms[1] for s in ms}}


def cost_lines(args, argv) -> int:
    """--cost-lines: each package's verify cost, alternating packages over the rounds, in fresh processes."""
    import subprocess

    from . import machine

    runs: dict[str, list[dict]] = {str(p): [] for p in args.cost_lines}
    for r in range(args.rounds):
        for package in args.cost_lines if r % 2 == 0 else args.cost_lines[::-1]:
            code = ("import json, sys; from pathlib import Path; from benchmarks.speculative import verify_cost; "
                    f"print(json.dumps(verify_cost(Path({str(package)!r}), {args.threads})))")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
            runs[str(package)].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    from runtime.speculate import slope

    out = {}
    for package, rs in runs.items():
        ms = {s: statistics.median(r["ms"][s] for r in rs) for s in rs[0]["ms"]}
        rel = {s: v / ms["1"] for s, v in ms.items()}
        c = slope({int(s): v for s, v in ms.items()})  # the fit the runtime makes of its own measurement
        out[package] = {"ms": ms, "relative": rel, "slope": c, "rounds": rs}
        print(f"{package}: " + ", ".join(f"S={s} {v:.1f}" for s, v in ms.items()) +
              f" ms; cost(9)/cost(1) {rel['9']:.2f}, c {c:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"tool": "benchmarks.speculative --cost-lines", "command": "python -m "
                                         "benchmarks.speculative " + " ".join(argv if argv is not None else sys.argv[1:]),
                                         "machine": machine.describe(False), "threads": args.threads,
                                         "cost_lines": out}, indent=1) + "\n")
    return 0


def modelled_speedup(result: dict, cost: dict) -> float:
    """Plain: cost(1) per token after the first; with drafts: the recorded steps, each at cost(its size)."""
    rel = {int(k): v for k, v in cost["relative"].items()}
    top = max(rel)
    spent = sum(rel[min(s, top)] for s in result["step_sizes"])
    return (result["new_tokens"] - 1) / spent if spent else float("nan")


def table(rows: list[dict], cost: dict | None) -> str:
    head = "| kind | prompt | same tokens | acceptance | tokens/step | greedy tok/s none -> ngram | speedup | " \
           "default sampling speedup |" + (" modelled speedup, cost model |" if cost else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        g, d = r["greedy"], r["default"]
        acc = "-" if g["acceptance"] is None else f"{100 * g['acceptance']:.0f} %"
        line = (f"| {r['kind']} | {r['name']} | {'yes' if g['identical'] else 'NO'} | {acc} | "
                f"{g['tokens_per_step']:.2f} | {g['plain_tok_s']:.0f} -> {g['ngram_tok_s']:.0f} | "
                f"{g['speedup']:.2f}x | {d['speedup']:.2f}x |")
        if cost:
            line += f" {r['modelled']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speculative", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", type=Path, default=ROOT / "runtime" / "demo", help="package the prompts run on")
    p.add_argument("--heldout", type=Path, default=ROOT / "train" / "demo" / "heldout",
                   help="held-out token shards of the model's corpus (train.data layout)")
    p.add_argument("--cost-model", type=Path, default=None,
                   help="a bigger package whose verify-step cost models the speedup (phi-1.5 size)")
    p.add_argument("--cost-lines", type=Path, nargs="+", default=None, metavar="PACKAGE",
                   help="only time verify steps of S = 1 .. 9 tokens on these packages, alternating them over "
                        "--rounds rounds (e.g. accuracy levels 4 and 1), and print each cost line")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-prompt", type=int, default=320, help="prompt tokens at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=4, help="alternations of --draft none and ngram per prompt")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    import runtime
    from runtime.engine import EngineOptions

    from . import machine

    if args.cost_lines:
        missing = [str(m) for m in args.cost_lines if not (m / "manifest.json").is_file()]
        if missing:
            print(f"error: --cost-lines {missing[0]} is not a model package (no manifest.json); export one with "
                  f"python -m export CHECKPOINT OUT", file=sys.stderr)
            return 2
        return cost_lines(args, argv)

    model = runtime.load(args.model, EngineOptions(threads=args.threads))
    cost = verify_cost(args.cost_model, args.threads) if args.cost_model else None
    if cost:
        print("verify step cost, ms by tokens: " + ", ".join(f"{s}: {v:.1f}" for s, v in cost["ms"].items()),
              file=sys.stderr)
    rows = []
    for prompt in prompts(model.tokenizer, args.heldout, args.max_prompt):
        result = run_prompt(model, prompt["text"], args.new_tokens, args.rounds)
        row = {**{k: v for k, v in prompt.items() if k != "text"}, **result,
               "prompt_tokens": len(model.encode(prompt["text"]))}
        if cost:
            row["modelled"] = modelled_speedup(result["greedy"], cost)
        rows.append(row)
        print(f"{prompt['kind']} / {prompt['name']}: {result['greedy']['speedup']:.2f}x", file=sys.stderr, flush=True)
    print(table(rows, cost))
    kinds = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    for kind, rs in kinds.items():
        print(f"{kind}: greedy speedup median {statistics.median(r['greedy']['speedup'] for r in rs):.2f}x, "
              f"default sampling {statistics.median(r['default']['speedup'] for r in rs):.2f}x"
              + (f", modelled on the cost model {statistics.median(r['modelled'] for r in rs):.2f}x" if cost else ""))
    if args.json:
        report = {"tool": "benchmarks.speculative", "model": str(args.model), "command": "python -m "
                  "benchmarks.speculative " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": machine.describe(False), "verify_cost": cost, "prompts": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(r["greedy"]["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
