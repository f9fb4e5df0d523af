"""python -m benchmarks.web [--package DIR] [--rounds N] [--json OUT]

The runtime in the browser against the Python runtime on the same package: time to first token and decode
tokens/s for one prompt (about 128 tokens) and 64 greedy new tokens, in headless Chromium (onnxruntime-web's
wasm backend, 1 and 2 threads, a fresh browser per run, the page loaded from `python -m runtime.web`) and in
`runtime.load` (onnxruntime, 1 and 2 threads); also the page as a phone (4x slower CPU emulation). Medians over
--rounds, interleaved. Needs runtime/web/setup.sh's npm packages and chromium.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "runtime" / "web"
DEMO = ROOT / "runtime" / "demo"
TEXT = ("import os\nimport sys\n\n\ndef read_config(path):\n    \"\"\"Read a key = value file into a dict.\"\"\"\n"
        "    config = {}\n    with open(path) as f:\n        for line in f:\n            line = line.strip()\n"
        "            if not line or line.startswith('#'):\n                continue\n"
        "            key, value = line.split('=', 1)\n            config[key.strip()] = value.strip()\n"
        "    return config\n\n\ndef main(argv):\n    if len(argv) < 2:\n        print('usage: tool CONFIG')\n"
        "        return 2\n    config = read_config(argv[1])\n    for key in sorted(config):\n")


def prompt_of(package: Path, tokens: int = 128) -> str:
    import runtime

    model = runtime.load(package)
    return model.decode(model.encode(TEXT * 4)[:tokens])


def browser_run(url: str, prompt: str, new_tokens: int, threads: int, phone: bool) -> dict:
    link = (f"{url}?prompt={quote(prompt)}&max_new_tokens={new_tokens}&temperature=0&stop_at_eos=0"
            f"&threads={threads}&autorun=1")
    args = ["node", "test/browser.mjs", link, ""] + (["--cpu-slowdown", "4"] if phone else ["--desktop"])
    out = subprocess.run(args, cwd=WEB, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"browser run failed: {out.stderr[-2000:]}")
    page = json.loads(out.stdout.strip().splitlines()[-1])
    if page["error"]:
        raise RuntimeError(page["error"])
    return page["statsJson"]


def python_run(package: Path, prompt: str, new_tokens: int, threads: int) -> dict:
    code = ("import json, sys, runtime; from runtime.engine import EngineOptions; from runtime.loop import "
            "GenerationConfig; from runtime.sampling import SamplingConfig\n"
            f"m = runtime.load({str(package)!r}, EngineOptions(threads={threads}))\n"
            "cfg = GenerationConfig(max_new_tokens=%d, stop_at_eos=False, sampling=SamplingConfig(temperature=0))\n"
            "m.generate(sys.argv[1], cfg)\n"  # warm-up, as a page's first run is not
            "print(json.dumps(m.generate(sys.argv[1], cfg).stats.to_json()))" % new_tokens)
    out = subprocess.run([sys.executable, "-c", code, prompt], capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.split("\n\n")[1])
    parser.add_argument("--package", type=Path, default=DEMO)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    prompt = prompt_of(args.package)
    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0", "--package", str(args.package)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = server.stdout.readline().split()[1]
    systems = {"python onnxruntime, 1 thread": lambda: python_run(args.package, prompt, args.new_tokens, 1),
               "python onnxruntime, 2 threads": lambda: python_run(args.package, prompt, args.new_tokens, 2),
               "chromium wasm, 1 thread": lambda: browser_run(url, prompt, args.new_tokens, 1, False),
               "chromium wasm, 2 threads": lambda: browser_run(url, prompt, args.new_tokens, 2, False),
               "chromium wasm, 2 threads, phone (4x slower CPU)": lambda: browser_run(url, prompt, args.new_tokens, 2, True)}
    samples: dict[str, list[dict]] = {k: [] for k in systems}
    try:
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for name in order:
                samples[name].append(systems[name]())
                print(f"round {r + 1}: {name}: {samples[name][-1]['decode_tokens_per_s']:.1f} tok/s", file=sys.stderr)
    finally:
        server.terminate()
    rows = []
    for name, runs in samples.items():
        rows.append({"system": name, "prompt_tokens": runs[0]["prompt_tokens"],
                     "ttft_ms": statistics.median(r["ttft_s"] * 1000 for r in runs),
                     "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
                     "min": min(r["decode_tokens_per_s"] for r in runs), "max": max(r["decode_tokens_per_s"] for r in runs),
                     "runs": runs})
    print("| system | prompt tokens | TTFT ms | decode tok/s (min-max) |\n|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['prompt_tokens']} | {r['ttft_ms']:.0f} | {r['decode_tokens_per_s']:.1f} "
              f"({r['min']:.1f}-{r['max']:.1f}) |")
    if args.json:
        args.json.write_text(json.dumps({"package": str(args.package), "new_tokens": args.new_tokens,
                                         "rounds": args.rounds, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
