"""python -m benchmarks.genai_loops PACKAGE [--rounds N] [--threads N] [--peer-python PY] [--json OUT]

One onnxruntime-genai package (genai_config.json + model.onnx), two generation loops: our runtime reading it as it
is (runtime/genai.py) and onnxruntime-genai's own Generator (benchmarks/peer_runners.py, in the peers' Python). The
graph, the weights and ONNX Runtime are the same, so the difference is the loop's: binding, sampling, the cache
handling around each session run. Greedy, a 128-token prompt, 64 new tokens, fresh processes, rounds interleaved
(the order alternates); decode tok/s and CPU per token, with each round's ratio (ours / genai).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.latency import prompt_ids as benchmark_prompt

ROOT = Path(__file__).resolve().parents[1]
OURS = """
import json, resource, sys, runtime
from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig
from runtime.sampling import SamplingConfig
model = runtime.load(sys.argv[1], EngineOptions(threads=int(sys.argv[2])))
ids, new = json.loads(sys.argv[3]), int(sys.argv[4])
config = GenerationConfig(max_new_tokens=new, stop_at_eos=False, sampling=SamplingConfig(temperature=0))
model.generate_ids(ids, config)  # warm-up, as the peer's first call
s = model.generate_ids(ids, config)
print(json.dumps({**s.stats.to_json(), "tokens": s.tokens}))
"""


def prompt_ids(package: Path, n: int = 128) -> list[int]:
    """benchmarks.peers' prompt: the same ids for every system of the package's vocabulary."""
    return benchmark_prompt(n, json.loads((package / "genai_config.json").read_text())["model"]["vocab_size"])


def ours(package: Path, ids: list[int], new: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, "-c", OURS, str(package), str(threads), json.dumps(ids), str(new)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def genai(python: str, package: Path, ids: list[int], new: int, threads: int) -> dict:
    args = {"artifact": str(package), "prompt": ids, "new_tokens": new, "threads": threads, "repeats": 1,
            "sampling": "greedy", "prompt_len": len(ids)}
    out = subprocess.run([python, "-m", "benchmarks.peer_runners", "run", "onnxruntime-genai", json.dumps(args)],
                         capture_output=True, text=True, cwd=ROOT, timeout=900)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])["samples"][0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.genai_loops", description=__doc__.split("\n\n")[1])
    p.add_argument("package", type=Path)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--peer-python", default="/opt/phi-peers/bin/python")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    ids = prompt_ids(args.package)
    rows: dict[str, list[dict]] = {"ours": [], "genai": []}
    for r in range(args.rounds):
        for name in (("ours", "genai") if r % 2 == 0 else ("genai", "ours")):
            run = (ours(args.package, ids, args.new_tokens, args.threads) if name == "ours" else
                   genai(args.peer_python, args.package, ids, args.new_tokens, args.threads))
            rows[name].append(run)
            print(f"round {r + 1} {name}: {run['decode_tokens_per_s']:.2f} tok/s", file=sys.stderr)
    same = rows["ours"][0]["tokens"] == rows["genai"][0]["tokens"]
    ratios = [o["decode_tokens_per_s"] / g["decode_tokens_per_s"] for o, g in zip(rows["ours"], rows["genai"])]
    cpu = [o["cpu_s_per_token"] / g["cpu_s_per_token"] for o, g in zip(rows["ours"], rows["genai"])]
    for name, runs in rows.items():
        speeds = [x["decode_tokens_per_s"] for x in runs]
        print(f"{name}: decode {statistics.median(speeds):.2f} tok/s ({min(speeds):.2f}-{max(speeds):.2f}), CPU "
              f"{1e3 * statistics.median(x['cpu_s_per_token'] for x in runs):.1f} ms/token, TTFT "
              f"{1e3 * statistics.median(x['ttft_s'] for x in runs):.0f} ms")
    print(f"ours / genai decode: {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}); CPU per token "
          f"genai / ours: {statistics.median(1 / c for c in cpu):.2f}x; same greedy tokens: {same}")
    if args.json:
        args.json.write_text(json.dumps({"package": str(args.package), "rows": rows, "ratios": ratios,
                                         "same_tokens": same}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
