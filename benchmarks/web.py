"""python -m benchmarks.web [--package DIR] [--rounds N] [--systems ...] [--prompt-tokens N] [--new-tokens N] [--json OUT]

The runtime in the browser against the Python runtime on the same package: time to first token, decode tokens/s,
the bytes a decode step copies and the peak resident memory, for one prompt (128 tokens by default) and greedy new
tokens, in headless Chromium (a fresh browser per run, the page loaded from `python -m runtime.web`) and in
`runtime.load` (onnxruntime). Systems (--systems, default all):

    python-1t, python-2t     the Python runtime, 1 and 2 threads
    wasm-1t, wasm-2t         onnxruntime-web's wasm backend, 1 and 2 threads
    wasm-phone               wasm, 2 threads, the page as a phone (4x slower CPU emulation)
    webgpu-swiftshader       onnxruntime-web's WebGPU backend on Chromium's SwiftShader adapter: Vulkan emulated on
                             the CPU. It runs the real WebGPU code path (shaders, buffers, the cache kept on the
                             "GPU"), so it shows what loads, what fits and what a step copies; its speed is a CPU
                             emulation's and says nothing about a phone's GPU.

Medians over --rounds, interleaved. Peak memory: Chromium's processes (browser, renderer, GPU) sampled every 100 ms;
the Python run's ru_maxrss. Needs runtime/web/setup.sh's npm packages and chromium.
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
    from tokenizers import Tokenizer

    from runtime.manifest import load_manifest

    manifest = load_manifest(package, verify=False)
    tok = Tokenizer.from_file(str(package / manifest.tokenizer["file"]))
    return tok.decode(tok.encode(TEXT * 4).ids[:tokens], skip_special_tokens=True)


def browser_run(url: str, prompt: str, new_tokens: int, threads: int, phone: bool, backend: str = "wasm",
                timeout_s: int = 1800) -> dict:
    link = (f"{url}?prompt={quote(prompt)}&max_new_tokens={new_tokens}&temperature=0&stop_at_eos=0"
            f"&threads={threads}&template=completion&backend={backend}&autorun=1")
    args = ["node", "test/browser.mjs", link, "", "--timeout-s", str(timeout_s)]
    args += ["--cpu-slowdown", "4"] if phone else ["--desktop"]
    args += ["--webgpu"] if backend == "webgpu" else []
    out = subprocess.run(args, cwd=WEB, capture_output=True, text=True, timeout=timeout_s + 120)
    if out.returncode != 0:
        raise RuntimeError(f"browser run failed: {out.stderr[-2000:]}")
    page = json.loads(out.stdout.strip().splitlines()[-1])
    if page["error"]:
        raise RuntimeError(page["error"])
    return {**page["statsJson"], "peak_rss_bytes": page["peakRssBytes"]}


def python_run(package: Path, prompt: str, new_tokens: int, threads: int) -> dict:
    code = ("import json, sys, runtime; from runtime.engine import EngineOptions; from runtime.loop import "
            "GenerationConfig; from runtime.sampling import SamplingConfig\n"
            f"m = runtime.load({str(package)!r}, EngineOptions(threads={threads}))\n"
            "cfg = GenerationConfig(max_new_tokens=%d, stop_at_eos=False, sampling=SamplingConfig(temperature=0))\n"
            "m.generate(sys.argv[1], cfg)\n"  # warm-up, as a page's first run is not
            "import resource; s = m.generate(sys.argv[1], cfg).stats.to_json()\n"
            "s['peak_rss_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; s['backend'] = 'cpu'\n"
            "print(json.dumps(s))" % new_tokens)
    out = subprocess.run([sys.executable, "-c", code, prompt], capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


SYSTEMS = ("python-1t", "python-2t", "wasm-1t", "wasm-2t", "wasm-phone", "webgpu-swiftshader")


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.split("\n\n")[1])
    parser.add_argument("--package", type=Path, default=DEMO)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    prompt = prompt_of(args.package, args.prompt_tokens)
    server = subprocess.Popen([sys.executable, "-m", "runtime.web", "--port", "0", "--package", str(args.package)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = server.stdout.readline().split()[1]
    new = args.new_tokens
    table = {"python-1t": ("python onnxruntime, 1 thread", lambda: python_run(args.package, prompt, new, 1)),
             "python-2t": ("python onnxruntime, 2 threads", lambda: python_run(args.package, prompt, new, 2)),
             "wasm-1t": ("chromium wasm, 1 thread", lambda: browser_run(url, prompt, new, 1, False)),
             "wasm-2t": ("chromium wasm, 2 threads", lambda: browser_run(url, prompt, new, 2, False)),
             "wasm-phone": ("chromium wasm, 2 threads, phone (4x slower CPU)",
                            lambda: browser_run(url, prompt, new, 2, True)),
             "webgpu-swiftshader": ("chromium webgpu on SwiftShader (CPU emulation, not a GPU figure)",
                                    lambda: browser_run(url, prompt, new, 1, False, "webgpu"))}
    systems = {table[k][0]: table[k][1] for k in args.systems}
    samples: dict[str, list[dict]] = {k: [] for k in systems}
    try:
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for name in order:
                samples[name].append(systems[name]())
                last = samples[name][-1]
                print(f"round {r + 1}: {name}: TTFT {last['ttft_s']:.2f} s, {last['decode_tokens_per_s'] or 0:.2f} "
                      f"tok/s, peak {last['peak_rss_bytes'] / 2**20:.0f} MiB", file=sys.stderr)
    finally:
        server.terminate()
    rows = []
    for name, runs in samples.items():
        speeds = [r["decode_tokens_per_s"] for r in runs if r["decode_tokens_per_s"] is not None]
        rows.append({"system": name, "prompt_tokens": runs[0]["prompt_tokens"], "new_tokens": runs[0]["new_tokens"],
                     "load_s": median_or_none(r.get("load_s") for r in runs),
                     "ttft_ms": statistics.median(r["ttft_s"] * 1000 for r in runs),
                     "decode_tokens_per_s": median_or_none(speeds), "min": min(speeds, default=None),
                     "max": max(speeds, default=None),
                     "copied_bytes_per_step": median_or_none(r.get("copied_bytes_per_step") for r in runs),
                     "peak_rss_mib": statistics.median(r["peak_rss_bytes"] for r in runs) / 2**20, "runs": runs})

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    print("| system | prompt tokens | load s | TTFT ms | decode tok/s (min-max) | bytes copied a step | peak MiB |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['system']} | {r['prompt_tokens']} | {f(r['load_s'], 2)} | {r['ttft_ms']:.0f} | "
              f"{f(r['decode_tokens_per_s'])} ({f(r['min'])}-{f(r['max'])}) | {f(r['copied_bytes_per_step'], 0)} | "
              f"{r['peak_rss_mib']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"package": str(args.package), "new_tokens": args.new_tokens,
                                         "rounds": args.rounds, "results": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
