"""python -m benchmarks.lookup [--peer-python PY] [--python PEER=PY] [--rounds 2] [--json OUT]

Prompt-lookup decoding, ours against the peers' own, on the same prompts (benchmarks.speculative's: held-out
documents of the demo's corpus and stdlib source, as completion / rewrite / question prompts, the same token
ids for every system). Three systems run the demo checkpoint at int4 block 32: this project's package
(`--draft ngram`), onnxruntime-genai's n-gram decoding and llama.cpp's prompt lookup (settings in
benchmarks.peer_lookup); each greedy, plain and with lookup, until EOS or --new-tokens, over --rounds rounds
(systems and modes alternate order by round, the peers in fresh processes). Reported per prompt and system:
tokens identical with and without lookup, tokens per decode forward pass, and decode tok/s with its speedup.

The phi-1.5 size follows from a model, as in benchmarks.speculative (random weights never repeat their context,
so their acceptance means nothing): each system's verify-step cost cost(S) for S = 1 .. 9 tokens after 256
cached positions on its phi-1.5-size int4 artifact (block 128 for ours and genai, Q4_0 for llama.cpp; cached
with benchmarks.peers' under ~/.cache/phi-edge/peers/), fitted as a + b*S, charged for the forward passes and
fed tokens that system took on the demo: modelled decode tok/s, plain and with lookup.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from . import latency, machine
from .export_cost import CACHE, random_checkpoint
from .peer_lookup import LOOKUP
from .peers import SYSTEMS, call, parse_pythons, prepare_system
from .speculative import StepLog, prompts, verify_cost

ROOT = Path(__file__).resolve().parents[1]
DEMO_CHECKPOINT = ROOT / "train" / "demo"
DEMO_SYSTEMS = {"phi-edge": "phi-edge int4 b32", "onnxruntime-genai": "onnxruntime-genai int4 b32",
                "llama.cpp": "llama.cpp Q4_0"}
COST_SYSTEMS = {"phi-edge": "phi-edge int4 b128", "onnxruntime-genai": "onnxruntime-genai int4 b128",
                "llama.cpp": "llama.cpp Q4_0"}


SIZED = "ngram, phi-1.5 cost"  # ours with the phi-1.5-size cost line's K choices: the steps its model charges


def modes(name: str, sized: bool = False) -> tuple[str, ...]:
    """"plain" and the system's lookup modes (ours: --draft ngram at its defaults, the cost line measured on the
    demo; with `sized`, also at the phi-1.5-size package's cost line, whose K the modelled column needs)."""
    ours = ("ngram", SIZED) if sized else ("ngram",)
    return ("plain",) + (ours if name == "phi-edge" else tuple(LOOKUP[name]))


def ours_lookup(package: Path, prompts_ids: list[list[int]], new_tokens: int, threads: int, eos: int,
                order: tuple[str, ...], sized_cost: float | None = None) -> dict:
    """Our side of one round: the same record benchmarks.peer_lookup's `lookup` returns."""
    import runtime
    from runtime.engine import EngineOptions
    from runtime.loop import GenerationConfig
    from runtime.pipeline import TextGenerator
    from runtime.sampling import SamplingConfig

    model = runtime.load(package, EngineOptions(threads=threads))
    log = StepLog(model.backend)
    generator = TextGenerator(model.manifest, log, load_s=model.load_s)
    demo_cost = generator.draft_cost()  # measured (or read from the cache) before any step is logged
    runs = []
    for i, ids in enumerate(prompts_ids):
        for mode in order:
            config = GenerationConfig(new_tokens, SamplingConfig(temperature=0),
                                      draft="none" if mode == "plain" else "ngram",
                                      draft_cost=sized_cost if mode == SIZED else None)
            log.truncate(0)
            log.sizes = []
            out = generator.generate_ids(ids, config)
            decode = log.sizes[1:]  # the first step is the prefill
            tokens = [t for t in out.tokens if t != eos]
            runs.append({"prompt": i, "mode": mode, "tokens": tokens,
                         "decode_tok_s": out.stats.decode_tokens_per_s if len(tokens) > 1 else None,
                         "passes": len(decode), "fed": sum(decode)})
    return {"settings": {"draft": "ngram", "draft_tokens": GenerationConfig().draft_tokens,
                         "draft_cost_demo": demo_cost, "draft_cost_sized": sized_cost}, "runs": runs}


def fit(cost: dict) -> tuple[float, float, float]:
    """cost(S) ~ a + b*S by least squares; (a, b, the largest relative error of the fit)."""
    s = np.array([int(k) for k in cost["ms"]], dtype=float)
    ms = np.array(list(cost["ms"].values()), dtype=float)
    b, a = np.polyfit(s, ms, 1)
    return float(a), float(b), float(np.max(np.abs(a + b * s - ms) / ms))


def summarize(rounds: list[dict], n_prompts: int, line: tuple[float, float] | None) -> dict[str, list[dict]]:
    """Per lookup mode, per prompt: tokens identical to plain's, tokens per pass, median decode tok/s plain and
    with lookup, the speedup, and the modelled tok/s at the cost model's size."""
    out: dict[str, list[dict]] = {}
    names = list(dict.fromkeys(r["mode"] for r in rounds[0]["runs"]))
    for i in range(n_prompts):
        runs = {m: [r for rd in rounds for r in rd["runs"] if r["prompt"] == i and r["mode"] == m] for m in names}
        rates = {m: [r["decode_tok_s"] for r in runs[m] if r["decode_tok_s"]] for m in names}
        base = runs["plain"][0]
        plain_rate = statistics.median(rates["plain"]) if rates["plain"] else None
        plain_model = None
        if line:
            spent = line[0] * base["passes"] + line[1] * base["fed"]
            plain_model = 1e3 * (len(base["tokens"]) - 1) / spent if spent else None
        for m in names[1:]:
            first = runs[m][0]
            rate = statistics.median(rates[m]) if rates[m] else None
            row = {"prompt": i, "new_tokens": len(first["tokens"]),
                   "identical": all(r["tokens"] == base["tokens"] for r in runs["plain"] + runs[m]),
                   "passes": first["passes"], "fed": first["fed"],
                   "tokens_per_pass": (len(first["tokens"]) - 1) / first["passes"] if first["passes"] else None,
                   "plain_tok_s": plain_rate, "lookup_tok_s": rate,
                   "speedup": rate / plain_rate if rate and plain_rate else None}
            if line:
                spent = line[0] * first["passes"] + line[1] * first["fed"]
                row["modelled_plain_tok_s"] = plain_model
                row["modelled_lookup_tok_s"] = 1e3 * (len(first["tokens"]) - 1) / spent if spent else None
                row["modelled_speedup"] = (row["modelled_lookup_tok_s"] / plain_model
                                           if plain_model and row["modelled_lookup_tok_s"] else None)
            out.setdefault(m, []).append(row)
    return out


def _median(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    return f"{statistics.median(values):.2f}" if values else "-"


def table(report: dict) -> str:
    lines = ["| kind | system | same tokens | tokens / pass | demo tok/s plain -> lookup | demo speedup | "
             "phi-1.5 size modelled tok/s plain -> lookup | modelled speedup |", "|---|---|---|---:|---:|---:|---:|---:|"]
    kinds = list(dict.fromkeys(p["kind"] for p in report["prompts"]))
    for kind in kinds:
        idx = [i for i, p in enumerate(report["prompts"]) if p["kind"] == kind]
        for name, system in report["systems"].items():
            for mode, per_prompt in system.get("per_prompt", {}).items():
                lines.append(_line(kind, f"{name} {mode}", [per_prompt[i] for i in idx]))
    return "\n".join(lines)


def _line(kind: str, label: str, rows: list[dict]) -> str:
    same = "yes" if all(r["identical"] for r in rows) else f"NO ({sum(not r['identical'] for r in rows)} of {len(rows)})"
    return (f"| {kind} ({len(rows)}) | {label} | {same} | {_median(rows, 'tokens_per_pass')} | "
            f"{_median(rows, 'plain_tok_s')} -> {_median(rows, 'lookup_tok_s')} | "
            f"{_median(rows, 'speedup')}x | {_median(rows, 'modelled_plain_tok_s')} -> "
            f"{_median(rows, 'modelled_lookup_tok_s')} | {_median(rows, 'modelled_speedup')}x |")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lookup", description=__doc__.split("\n\n")[1])
    p.add_argument("--systems", nargs="+", default=list(DEMO_SYSTEMS), choices=list(DEMO_SYSTEMS))
    p.add_argument("--peer-python", default=sys.executable, help="Python that runs the peers (default: this one)")
    p.add_argument("--python", action="append", default=[], metavar="PEER=PY",
                   help="a Python for one peer, e.g. onnxruntime-genai=/opt/phi-peers-genai/bin/python")
    p.add_argument("--llama-convert", type=Path, default=None,
                   help="llama.cpp's convert_hf_to_gguf.py (default: PEER_PYTHON's prefix/llama.cpp/)")
    p.add_argument("--cost-checkpoint", type=Path, default=None,
                   help="the phi-1.5-size checkpoint whose verify cost models the speedup (default: a random one)")
    p.add_argument("--no-cost", action="store_true", help="skip the phi-1.5-size cost model")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--max-prompt", type=int, default=320, help="prompt tokens at most")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--work", type=Path, default=CACHE / "peers",
                   help="prepared artifacts, cached per checkpoint (default: benchmarks.peers' cache)")
    p.add_argument("--json", type=Path, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tokenizers import Tokenizer

    try:
        pythons = {**dict.fromkeys(LOOKUP, args.peer_python), **parse_pythons(args.python, tuple(LOOKUP))}
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print(f"error: --rounds must be >= 1, got {args.rounds}", file=sys.stderr)
        return 2
    convert = args.llama_convert or Path(args.peer_python).parent.parent / "llama.cpp" / "convert_hf_to_gguf.py"
    point = latency.Point(threads=args.threads)
    tokenizer = Tokenizer.from_file(str(DEMO_CHECKPOINT / "tokenizer.json"))
    items = prompts(tokenizer, DEMO_CHECKPOINT / "heldout", args.max_prompt)
    ids = [tokenizer.encode(p["text"]).ids for p in items]
    eos = json.loads((DEMO_CHECKPOINT / "config.json").read_text())["eos_token_id"]
    report = {"tool": "benchmarks.lookup", "command": "python -m benchmarks.lookup " +
              " ".join(argv if argv is not None else sys.argv[1:]), "new_tokens": args.new_tokens,
              "threads": args.threads, "rounds": args.rounds, "machine": machine.describe(False),
              "prompts": [{k: v for k, v in p.items() if k != "text"} | {"prompt_tokens": len(i)}
                          for p, i in zip(items, ids)], "systems": {}}
    systems = report["systems"]
    for name in args.systems:
        system_name = DEMO_SYSTEMS[name]
        print(f"{name}: preparing the demo checkpoint ...", file=sys.stderr, flush=True)
        row = prepare_system(SYSTEMS[system_name], DEMO_CHECKPOINT, args.work / "demo", point,
                             pythons.get(name, sys.executable), convert)
        systems[name] = {"artifact_system": system_name, **{k: row.get(k) for k in
                         ("status", "reason", "artifact", "versions", "python")}, "rounds": []}
        if row["status"] != "ok":
            print(f"  {row['status']}: {row['reason'][:300]}", file=sys.stderr, flush=True)
    names = [n for n, s in systems.items() if s["status"] == "ok"]
    if not args.no_cost:
        checkpoint = args.cost_checkpoint or random_checkpoint("phi-1_5")
        vocab = json.loads((checkpoint / "config.json").read_text())["vocab_size"]
        for name in names:
            row = prepare_system(SYSTEMS[COST_SYSTEMS[name]], checkpoint, args.work / checkpoint.name, point,
                                 pythons.get(name, sys.executable), convert)
            if row["status"] != "ok":
                systems[name]["cost"] = {"status": row["status"], "reason": row.get("reason")}
                continue
            cost = (verify_cost(Path(row["artifact"]), args.threads) if name == "phi-edge" else
                    call(pythons[name], "cost", name, {"artifact": row["artifact"], "threads": args.threads,
                                                       "past": 256, "max_s": 9, "repeats": 12, "vocab_size": vocab},
                         module="benchmarks.peer_lookup"))
            a, b, err = fit(cost)
            systems[name]["cost"] = {**cost, "system": COST_SYSTEMS[name], "checkpoint": str(checkpoint),
                                     "fit_ms": {"a": a, "b": b, "max_relative_error": err}}
            print(f"{name} verify cost ms: " + ", ".join(f"{k}: {v:.1f}" for k, v in cost["ms"].items()),
                  file=sys.stderr, flush=True)
    line = systems.get("phi-edge", {}).get("cost", {}).get("fit_ms")
    sized = line["b"] / (line["a"] + line["b"]) if line else None  # c: cost(S) / cost(1) = 1 + c (S - 1)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            order = modes(name, sized is not None) if r % 2 == 0 else modes(name, sized is not None)[::-1]
            s = systems[name]
            a = {"artifact": s["artifact"], "prompts": ids, "new_tokens": args.new_tokens, "threads": args.threads,
                 "eos": eos, "order": list(order), "n_ctx": max(map(len, ids)) + args.new_tokens + 16}
            try:
                result = (ours_lookup(Path(s["artifact"]), ids, args.new_tokens, args.threads, eos, order, sized)
                          if name == "phi-edge" else call(pythons[name], "lookup", name, a,
                                                          module="benchmarks.peer_lookup"))
            except RuntimeError as e:
                s.update(status="failed", reason=str(e))
                print(f"  {name} failed: {str(e)[:300]}", file=sys.stderr, flush=True)
                continue
            s["settings"] = result["settings"]
            s["rounds"].append(result)
            print(f"round {r + 1}, {name}: done", file=sys.stderr, flush=True)
    for s in systems.values():
        if s["status"] == "ok" and s["rounds"]:
            c = s.get("cost", {}).get("fit_ms")
            s["per_prompt"] = summarize(s["rounds"], len(ids), (c["a"], c["b"]) if c else None)
    print(table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    ok = [s for s in systems.values() if s["status"] == "ok" and s.get("per_prompt")]
    return 0 if ok and all(r["identical"] for s in ok for rows in s["per_prompt"].values() for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
