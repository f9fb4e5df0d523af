"""The peers' side of benchmarks.peers: runs in the peers' Python (--peer-python), one action per process.

    python -m benchmarks.peer_runners check   SYSTEM '{}'                         -> {"ok": ..., "reason", "versions"}
    python -m benchmarks.peer_runners prepare SYSTEM '{"checkpoint", "out", ...}' -> {"artifact": path}
    python -m benchmarks.peer_runners run     SYSTEM '{"artifact", "prompt", ...}'  -> runtime.stats keys
    python -m benchmarks.peer_runners profile onnxruntime-genai '{"artifact", "prefix", ...}' -> benchmarks.attribution

Imports nothing of the project but runtime.stats (stdlib only), so it runs in a venv that holds only the
peer's own packages. Every system generates through its own public API, greedy ("sampling": "greedy") or at
its own default settings ("default": what its config or generate() call uses when not told); a timing callback
sees each new token as it is produced:

    t0 --prefill + first token--> t1 --(new_tokens - 1) tokens--> t2      (wall and process CPU time)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from runtime import stats as keys

# system -> (modules that must import, distributions whose versions are reported)
REQUIREMENTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "onnxruntime-genai": (("onnxruntime_genai",), ("onnxruntime-genai",)),
    "optimum": (("optimum.onnxruntime", "torch"), ("optimum", "optimum-onnx", "onnxruntime", "transformers", "torch")),
    "transformers": (("transformers", "torch"), ("transformers", "torch")),
    "llama.cpp": (("llama_cpp",), ("llama-cpp-python",)),
}


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check(system: str, _: dict) -> dict:
    modules, dists = REQUIREMENTS[system]
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return {"ok": False, "reason": f"{module} is not importable by {sys.executable}; install "
                                           f"{' '.join(dists)} there or pass --peer-python"}
    return {"ok": True, "versions": {d: _version(d) for d in dists}}


# ---------------------------------------------------------------- prepare: checkpoint -> the peer's artifact
def prepare_genai(a: dict) -> str:
    out = Path(a["out"])
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", a["checkpoint"], "-o", str(out),
           "-p", "int4", "-e", "cpu", "-c", str(out.parent / "hf-cache"),
           "--extra_options", f"block_size={a['block_size']}",  # 0.18 ignores the old int4_block_size
           *(f"{k}={v}" for k, v in a.get("extra", {}).items())]  # e.g. kv_cache_quant_scheme, kv_cache_scale_file
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    sizes = {at.i for n in graph.node if n.op_type == "MatMulNBits" for at in n.attribute if at.name == "block_size"}
    if sizes != {a["block_size"]}:
        raise RuntimeError(f"the builder wrote MatMulNBits block sizes {sorted(sizes)}, not {a['block_size']}")
    return str(out)


def prepare_optimum(a: dict) -> str:
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(a["checkpoint"], export=True)
    model.save_pretrained(a["out"])
    return a["out"]


def prepare_transformers(a: dict) -> str:
    return a["checkpoint"]  # runs the checkpoint as it is


def prepare_llama(a: dict) -> str:
    """convert_hf_to_gguf.py (the converter llama.cpp ships) to f16, then llama.cpp's quantizer to Q4_0."""
    import ctypes

    import llama_cpp

    convert = Path(a["llama_convert"])
    if not convert.is_file():
        raise FileNotFoundError(f"{convert} is missing: copy convert_hf_to_gguf.py, gguf-py/ (and conversion/ if any) from "
                                f"llama-cpp-python's sdist (vendor/llama.cpp) there, or pass --llama-convert")
    out = Path(a["out"])
    out.mkdir(parents=True, exist_ok=True)
    f16, q4 = out / "model-f16.gguf", out / "model-q4_0.gguf"
    # The checkpoint's stand-in tokenizer (byte-level BPE with GPT-2's pre-tokenizer regex) is not in the
    # converter's table of known vocabularies, which it identifies by hashing token ids; name its pre-tokenizer.
    shim = (f"import sys; sys.path[:0] = [{str(convert.parent)!r}, {str(convert.parent / 'gguf-py')!r}]\n"
            "try:\n    import conversion.base as b  # the converter split into a package (newer llama.cpp)\n"
            "except ImportError:\n    import convert_hf_to_gguf as b  # one file (llama-cpp-python <= 0.3.16)\n"
            "b.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
            f"sys.argv = ['convert_hf_to_gguf.py', {a['checkpoint']!r}, '--outfile', {str(f16)!r}, "
            "'--outtype', 'f16']\n"
            "import convert_hf_to_gguf\nconvert_hf_to_gguf.main()\n")
    subprocess.run([sys.executable, "-c", shim], check=True, stdout=sys.stderr)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = a["threads"]
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(q4).encode(), ctypes.byref(params)):
        raise RuntimeError(f"llama_model_quantize failed on {f16}")
    f16.unlink()
    return str(q4)


# ---------------------------------------------------------------- run: generation with a token callback
Emit = Callable[[int], None]


def genai_model(artifact: str, threads: int, session: dict | None = None):
    """og.Model over the builder's folder with its intra-op thread count (and any other `session` options, e.g.
    enable_profiling) overlaid on genai_config.json in memory; the folder is left as the builder wrote it."""
    import onnxruntime_genai as og

    config = og.Config(artifact)
    options = {"intra_op_num_threads": threads, **(session or {})}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return og.Model(config)


def runner_genai(a: dict, session: dict | None = None) -> tuple[Callable[[list[int], int, Emit], None], str]:
    import onnxruntime_genai as og

    model = genai_model(a["artifact"], a["threads"], session)
    greedy = a.get("sampling", "greedy") == "greedy"

    def generate(prompt: list[int], n: int, emit: Emit) -> None:
        params = og.GeneratorParams(model)
        length = len(prompt) + n
        # "default": the search options genai_config.json holds (what its examples run), only the length set
        params.set_search_options(max_length=length, min_length=length, **({"do_sample": False} if greedy else {}))
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)  # prefill
        for _ in range(n):
            gen.generate_next_token()  # a decode step (except the first call) + the pick
            emit(int(gen.get_next_tokens()[0]))

    search = json.loads((Path(a["artifact"]) / "genai_config.json").read_text()).get("search", {})
    how = "greedy" if greedy else "genai_config.json search " + json.dumps(
        {k: search.get(k) for k in ("do_sample", "temperature", "top_k", "top_p")})
    return generate, f"onnxruntime_genai Generator (append_tokens, generate_next_token), {how}"


def _hf_generate(model, torch, greedy: bool) -> Callable[[list[int], int, Emit], None]:
    from transformers.generation.streamers import BaseStreamer

    class Timing(BaseStreamer):
        def __init__(self, emit: Emit):
            self.emit, self.prompt_seen = emit, False

        def put(self, value) -> None:
            if not self.prompt_seen:  # generate() first puts the prompt
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                self.emit(int(t))

        def end(self) -> None:
            pass

    def generate(prompt: list[int], n: int, emit: Emit) -> None:
        ids = torch.tensor([prompt])
        # "default" sampling: the checkpoint's generation_config.json, as generate() reads it when not told
        search = {"do_sample": False, "num_beams": 1} if greedy else {}
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           streamer=Timing(emit), pad_token_id=0, **search)

    return generate


def runner_transformers(a: dict):
    import torch
    from transformers import PhiForCausalLM

    torch.set_num_threads(a["threads"])
    model = PhiForCausalLM.from_pretrained(a["artifact"], torch_dtype=torch.float32,
                                           attn_implementation="eager").eval()
    return (_hf_generate(model, torch, a.get("sampling", "greedy") == "greedy"),
            "PhiForCausalLM.generate, fp32, eager attention")


def runner_optimum(a: dict):
    import onnxruntime as ort
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    torch.set_num_threads(a["threads"])
    so = ort.SessionOptions()
    so.intra_op_num_threads = a["threads"]
    model = ORTModelForCausalLM.from_pretrained(a["artifact"], session_options=so, provider="CPUExecutionProvider")
    return _hf_generate(model, torch, a.get("sampling", "greedy") == "greedy"), "ORTModelForCausalLM.generate, fp32"


def runner_llama(a: dict):
    from llama_cpp import Llama

    n_ctx = a["prompt_len"] + a["new_tokens"]
    llm = Llama(model_path=a["artifact"], n_ctx=n_ctx, n_batch=a["prompt_len"], n_threads=a["threads"],
                n_threads_batch=a["threads"], verbose=False)

    greedy = a.get("sampling", "greedy") == "greedy"
    # "default": Llama.generate's own defaults (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8)
    search = {"top_k": 1, "temp": 0.0} if greedy else {}

    def generate(prompt: list[int], n: int, emit: Emit) -> None:
        llm.reset()  # forget the cached prefix: every call prefills the whole prompt
        for i, token in enumerate(llm.generate(prompt, reset=True, **search)):
            emit(int(token))
            if i + 1 == n:
                break

    how = "greedy (temp 0)" if greedy else "its default sampling (top-k 40, top-p 0.95, min-p 0.05, temp 0.8)"
    return generate, f"llama_cpp.Llama.generate, {how}"


SYSTEMS = {
    "onnxruntime-genai": (prepare_genai, runner_genai),
    "optimum": (prepare_optimum, runner_optimum),
    "transformers": (prepare_transformers, runner_transformers),
    "llama.cpp": (prepare_llama, runner_llama),
}


def timed(generate: Callable[[list[int], int, Emit], None], prompt: list[int], n: int) -> dict:
    marks: list[tuple[float, float]] = []
    tokens: list[int] = []

    def emit(token: int) -> None:
        marks.append((time.perf_counter(), time.process_time()))
        tokens.append(token)

    t0, c0 = time.perf_counter(), time.process_time()
    generate(prompt, n, emit)
    if len(tokens) != n:
        raise RuntimeError(f"asked for {n} new tokens, the peer produced {len(tokens)}")
    (t1, c1), (t2, c2) = marks[0], marks[-1]
    return {keys.PROMPT_TOKENS: len(prompt), keys.NEW_TOKENS: n, keys.TTFT_S: t1 - t0,
            keys.PREFILL_S: t1 - t0,  # the peers' APIs do not split prefill from the first pick
            keys.PREFILL_TOKENS_PER_S: len(prompt) / (t1 - t0), keys.DECODE_S: t2 - t1,
            keys.DECODE_TOKENS_PER_S: (n - 1) / (t2 - t1), keys.CPU_S: c2 - c0,
            keys.CPU_S_PER_TOKEN: (c2 - c1) / (n - 1), keys.FINISH_REASON: keys.LENGTH, "tokens": tokens}


def run(system: str, a: dict) -> dict:
    t = time.perf_counter()
    generate, api = SYSTEMS[system][1](a)
    load_s = time.perf_counter() - t
    samples = []
    for i in range(a["repeats"] + 1):  # the first call warms up and is not reported
        s = timed(generate, a["prompt"], a["new_tokens"])
        if i:
            samples.append(s)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    for s in samples:
        s[keys.PEAK_RSS_BYTES], s[keys.LOAD_S] = rss, load_s
    return {"api": api, keys.LOAD_S: load_s, "samples": samples}


def profile(system: str, a: dict) -> dict:
    """onnxruntime-genai under its own loop with ONNX Runtime's profiler on (benchmarks.attribution): per-token
    wall and CPU medians of the measured generations, and the profile file's path."""
    import glob
    import statistics

    if system != "onnxruntime-genai":
        raise ValueError(f"profile runs onnxruntime-genai only, not {system}")
    generate, _ = runner_genai(a, {"enable_profiling": a["prefix"]})
    walls, cpus = [], []
    for i in range(a["repeats"] + 1):
        s = timed(generate, a["prompt"], a["new_tokens"])
        if i:
            walls.append(1e3 * s[keys.DECODE_S] / (a["new_tokens"] - 1))
            cpus.append(1e3 * s[keys.CPU_S_PER_TOKEN])
    del generate  # the last reference to the model: ONNX Runtime writes the profile as the session closes
    import gc

    gc.collect()
    files = glob.glob(a["prefix"] + "*.json")
    if len(files) != 1:
        raise RuntimeError(f"expected one profile file {a['prefix']}*.json, found {files}")
    return {"wall_ms": statistics.median(walls), "cpu_ms": statistics.median(cpus), "profile": files[0]}


def main(argv: list[str]) -> int:
    action, system, args = argv[0], argv[1], json.loads(argv[2])
    if action == "check":
        result = check(system, args)
    elif action == "prepare":
        os.makedirs(Path(args["out"]).parent, exist_ok=True)
        result = {"artifact": SYSTEMS[system][0](args)}
    elif action == "run":
        result = run(system, args)
    elif action == "profile":
        result = profile(system, args)
    else:
        raise ValueError(f"unknown action {action!r}; one of check, prepare, run")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
