"""python -m benchmarks.attribution --ours PACKAGE --genai FOLDER [--prompt-len 128] [--new-tokens 64] [--rounds 3]

Where a decode token's milliseconds go, in this project's package and onnxruntime-genai's, from ONNX Runtime's
own profiler (SessionOptions.enable_profiling). Four ways of running, each in a fresh process, alternated over
--rounds rounds (A B C D, then D C B A):

    same loop, our graph     one minimal IO-binding loop (this module's `drive`: fp32 KV bound in place as
    same loop, genai graph   past and present, ids and mask bound per step, greedy argmax) over each model.onnx
    our loop                 runtime.load + generate_ids, greedy (and at the CLI's default sampling)
    genai's loop             og.Generator (append_tokens, generate_next_token) in --peer-python

The profile is parsed into session runs ("model_run" events) and the node events inside each run. A run whose
duration is over 3x the median is a prompt run; it starts a generation. The first generation of a process warms
up and is dropped, and so is each generation's prompt run, so what is left is decode steps. Per decode token:

    wall            the loop's own clock from one token to the next
    session run     the model_run event: ONNX Runtime's time inside Run()
    op type X       the sum of X's kernel times (node events named *_kernel_time) inside the run
    executor        session run - all kernels: node scheduling, fences, input/output binding inside Run
    outside run     wall - session run: the caller's loop (Python or C++), sampling, binding, copies

Greedy unless told otherwise; no EOS stop. The profiler itself adds a few microseconds per node to every way
alike; rates without it are benchmarks.peers' business.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .latency import prompt_ids

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("same loop, our graph", "same loop, genai graph", "our loop", "genai's loop")
PROMPT_FACTOR = 3  # a run this many times the median run's duration is a prompt run
HEAD_OPS = ("MatMulNBits", "MatMul")  # the last of these in a run is the lm_head


# ---------------------------------------------------------------- the profile
def decode_runs(events: list[dict]) -> list[dict]:
    """ONNX Runtime profile events -> one dict per measured decode run: {"run": us, "kernels": {op: us}}.
    Prompt runs split generations; the first generation and each prompt run are dropped (module docstring)."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if not runs:
        raise ValueError("the profile holds no model_run events; was enable_profiling on?")
    nodes = sorted((e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")),
                   key=lambda e: e["ts"])
    median = statistics.median(r["dur"] for r in runs)
    out, generation, i = [], -1, 0
    for run in runs:
        kernels: dict[str, float] = defaultdict(float)
        end, head = run["ts"] + run["dur"], None
        while i < len(nodes) and nodes[i]["ts"] < run["ts"]:
            i += 1
        while i < len(nodes) and nodes[i]["ts"] <= end:
            op = nodes[i]["args"].get("op_name", "?")
            kernels[op] += nodes[i]["dur"]
            if op in HEAD_OPS:
                head = (op, nodes[i]["dur"])
            i += 1
        if head is not None:  # the run's last matrix product is the lm_head in every phi graph
            kernels[head[0]] -= head[1]
            kernels[f"{head[0]} (lm_head)"] = head[1]
        if run["dur"] > PROMPT_FACTOR * median:
            generation += 1
            continue
        if generation >= 1:
            out.append({"run": run["dur"], "kernels": dict(kernels)})
    return out


def per_token(runs: list[dict]) -> dict:
    """Mean milliseconds per decode run: session run, each op type's kernels, and the executor's rest."""
    if not runs:
        raise ValueError("no decode runs were measured; raise --new-tokens or --repeats")
    ops = sorted({op for r in runs for op in r["kernels"]})
    kernels = {op: sum(r["kernels"].get(op, 0.0) for r in runs) / len(runs) / 1e3 for op in ops}
    run = sum(r["run"] for r in runs) / len(runs) / 1e3
    return {"runs": len(runs), "session_run_ms": run, "kernels_ms": kernels,
            "executor_ms": run - sum(kernels.values())}


def read_profile(path: str) -> list[dict]:
    try:
        return json.loads(Path(path).read_text())
    finally:
        Path(path).unlink(missing_ok=True)


# ---------------------------------------------------------------- the ways of running (each in a fresh process)
def _options(threads: int, prefix: str):
    from runtime.engine import EngineOptions, session_options

    so = session_options(EngineOptions(threads=threads), threads)  # the engine's entries (latency profile)
    so.enable_profiling = True
    so.profile_file_prefix = prefix
    return so


def drive(model: Path, threads: int, prompt: list[int], new_tokens: int, repeats: int, prefix: str,
          head_dim: int) -> dict:
    """The minimal loop over any GroupQueryAttention graph with our I/O names (ours and genai's builder share
    them): fp32 KV buffers bound once as both past and present, ids and mask bound each step, the last row's
    argmax fed back. `logits_to_keep` is bound to 1 where the graph has it."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), _options(threads, prefix), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    vocab = session.get_outputs()[0].shape[-1]
    capacity = len(prompt) + new_tokens
    binding = session.io_binding()
    for name, arg in inputs.items():
        if name.startswith("past_key_values."):
            heads = arg.shape[1]  # genai's graph leaves head_dim symbolic ("kv_cache_dim")
            buffer = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, capacity, head_dim), np.float32))
            binding.bind_ortvalue_input(name, buffer)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), buffer)
    if "logits_to_keep" in inputs:
        binding.bind_cpu_input("logits_to_keep", np.ones(1, np.int64))
    all_rows = "logits_to_keep" not in inputs
    mask = np.ones((1, capacity), np.int64)
    logits = np.empty((1, len(prompt), vocab), np.float32)
    walls, cpus = [], []
    for g in range(repeats + 1):
        ids, past = np.asarray([prompt], np.int64), 0
        for t in range(new_tokens):
            rows = ids.shape[1] if all_rows else 1
            out = logits[:, :rows]
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("attention_mask", mask[:, :past + ids.shape[1]])
            binding.bind_ortvalue_output("logits", ort.OrtValue.ortvalue_from_numpy(out))
            session.run_with_iobinding(binding)
            past += ids.shape[1]
            ids = np.asarray([[int(np.argmax(out[0, -1]))]], np.int64)
            if t == 0:
                w0, c0 = time.perf_counter(), time.process_time()
        if g:
            walls.append((time.perf_counter() - w0) / (new_tokens - 1))
            cpus.append((time.process_time() - c0) / (new_tokens - 1))
    return {"wall_ms": 1e3 * statistics.median(walls), "cpu_ms": 1e3 * statistics.median(cpus),
            "profile": session.end_profiling()}


def our_loop(package: Path, threads: int, prompt: list[int], new_tokens: int, repeats: int, prefix: str,
             sampling: str = "greedy") -> dict:
    """runtime.load + generate_ids with the profiler on: the engine's own session options, plus profiling."""
    import runtime.engine as engine
    from runtime import load
    from runtime.loop import GenerationConfig
    from runtime.sampling import SamplingConfig

    plain = engine.session_options

    def profiled(options, n: int):  # the engine's own entries, with the profiler on
        so = plain(options, n)
        so.enable_profiling, so.profile_file_prefix = True, prefix
        return so

    engine.session_options = profiled
    try:
        model = load(package, engine.EngineOptions(threads=threads, context=len(prompt) + new_tokens))
    finally:
        engine.session_options = plain
    walls, cpus = [], []
    for g in range(repeats + 1):
        s = SamplingConfig(temperature=0) if sampling == "greedy" else SamplingConfig(seed=g)
        model.backend.truncate(0)
        out = model.generate_ids(prompt, GenerationConfig(max_new_tokens=new_tokens, sampling=s, stop_at_eos=False))
        if g:
            walls.append(1e3 * out.stats.decode_s / (new_tokens - 1))
            cpus.append(1e3 * out.stats.cpu_s_per_token)
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus),
            "profile": model.backend.session.end_profiling()}


def run_way(way: str, a: argparse.Namespace, prompt: list[int]) -> dict:
    """One way in a fresh process; its per-token figures."""
    prefix = str(Path(tempfile.mkdtemp(prefix="phi-edge-profile-")) / "ort")
    head_dim = json.loads((a.ours / "manifest.json").read_text())["io"]["kv_cache"]["head_dim"]
    args = {"prompt": prompt, "new_tokens": a.new_tokens, "threads": a.threads, "repeats": a.repeats,
            "prefix": prefix, "head_dim": head_dim}
    if way == "genai's loop":
        from .peers import call

        result = call(a.peer_python, "profile", "onnxruntime-genai", {**args, "artifact": str(a.genai)})
    else:
        model = {"same loop, our graph": a.ours / "model.onnx", "same loop, genai graph": a.genai / "model.onnx",
                 "our loop": a.ours}[way]
        proc = subprocess.run([sys.executable, "-m", "benchmarks.attribution", "--way", way, "--way-args",
                               json.dumps({**args, "model": str(model)})], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode:
            raise RuntimeError(f"{way} failed:\n{proc.stderr[-3000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = per_token(decode_runs(read_profile(result["profile"])))
    os.rmdir(Path(prefix).parent)
    return {"wall_ms": result["wall_ms"], "cpu_ms": result["cpu_ms"], **figures,
            "outside_run_ms": result["wall_ms"] - figures["session_run_ms"]}


def _way_main(way: str, args: dict) -> dict:
    common = (args["threads"], args["prompt"], args["new_tokens"], args["repeats"], args["prefix"])
    if way == "our loop":
        return our_loop(Path(args["model"]), *common)
    return drive(Path(args["model"]), *common, args["head_dim"])


# ---------------------------------------------------------------- the table
def merge(rounds: list[dict]) -> dict:
    """Median over rounds of every per-token figure."""
    out = {k: statistics.median(r[k] for r in rounds) for k in ("wall_ms", "cpu_ms", "session_run_ms",
                                                                  "executor_ms", "outside_run_ms")}
    ops = {op for r in rounds for op in r["kernels_ms"]}
    out["kernels_ms"] = {op: statistics.median(r["kernels_ms"].get(op, 0.0) for r in rounds) for op in ops}
    return out


def table(results: dict[str, dict]) -> str:
    ways = [w for w in WAYS if w in results]
    ops = sorted({op for w in ways for op in results[w]["kernels_ms"]},
                 key=lambda op: -max(results[w]["kernels_ms"].get(op, 0.0) for w in ways))
    lines = ["| ms per decode token | " + " | ".join(ways) + " |", "|---|" + "---:|" * len(ways)]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(f"{get(results[w]):.2f}" for w in ways) + " |")

    row("wall (loop clock)", lambda r: r["wall_ms"])
    row("CPU (process, all threads)", lambda r: r["cpu_ms"])
    row("outside session run", lambda r: r["outside_run_ms"])
    row("session run", lambda r: r["session_run_ms"])
    for op in ops:
        row(f"  {op}", lambda r, op=op: r["kernels_ms"].get(op, 0.0))
    row("  executor (run - kernels)", lambda r: r["executor_ms"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.attribution", description=__doc__.split("\n\n")[1])
    p.add_argument("--ours", type=Path, help="this project's package")
    p.add_argument("--genai", type=Path, help="onnxruntime-genai's builder output (model.onnx, genai_config.json)")
    p.add_argument("--peer-python", default="/opt/phi-peers/bin/python", help="Python with onnxruntime-genai")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="measured generations per process, after one warm-up")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=WAYS, metavar="WAY")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--way", default=None, help=argparse.SUPPRESS)  # internal: one way, JSON on stdout
    p.add_argument("--way-args", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.way is not None:
        print(json.dumps(_way_main(a.way, json.loads(a.way_args))))
        return 0
    for flag, folder, need in (("--ours", a.ours, "manifest.json"), ("--genai", a.genai, "genai_config.json")):
        if folder is None or not (folder / need).is_file():
            print(f"error: {flag} {folder} has no {need}; pass the package folder", file=sys.stderr)
            return 2
    manifest = json.loads((a.ours / "manifest.json").read_text())
    prompt = prompt_ids(a.prompt_len, manifest["model"]["vocab_size"])
    rounds: dict[str, list[dict]] = {w: [] for w in a.ways}
    for i in range(a.rounds):
        for way in (a.ways if i % 2 == 0 else a.ways[::-1]):
            rounds[way].append(run_way(way, a, prompt))
            print(f"round {i + 1}, {way}: {rounds[way][-1]['wall_ms']:.2f} ms/token", file=sys.stderr, flush=True)
    results = {w: merge(r) for w, r in rounds.items()}
    print(table(results))
    if a.json:
        from . import machine

        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"tool": "benchmarks.attribution", "command": "python -m benchmarks.attribution "
                                      + " ".join(argv if argv is not None else sys.argv[1:]),
                                      "machine": machine.describe(False), "results": results, "rounds": rounds},
                                     indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
