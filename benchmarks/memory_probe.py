"""One system's memory and decode speed against the tokens it holds, in this process (benchmarks.memory runs it in a
fresh one per system and round; for onnxruntime-genai in the peers' Python, so it imports only the standard
library at the top).

    python -m benchmarks.memory_probe ours|genai '{"artifact", "levels", "decode", "chunk", "threads", "vocab",
                                                   "max_length"}'  -> JSON on the last line of stdout

After loading, the prompt (token ids from a fixed generator) is fed in chunks of `chunk` until `levels[i]` tokens are
held; then `decode` greedy tokens are timed one by one and RSS read (VmRSS now, VmHWM the peak so far). Level 0 holds
one token. Both systems are fed the same ids in the same chunks. With "fresh_per_level" each level starts a new
sequence and fills it from empty (onnxruntime-genai 0.18's int8 cache on CPU refuses an append_tokens after
generate_next_token: "total_sequence_length must equal past_sequence_length + kv_sequence_length").
"""

from __future__ import annotations

import json
import random
import sys
import time


def rss() -> tuple[int, int]:
    """(current, peak) resident bytes of this process, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def prompt(n: int, vocab: int) -> list[int]:
    rng = random.Random(0)
    return [rng.randrange(1, vocab) for _ in range(n)]


def ours(a: dict):
    """(feed(ids), next_token() -> None, api) over runtime.load with the package's default settings."""
    import numpy as np

    import runtime

    model = runtime.load(a["artifact"], runtime.EngineOptions(threads=a["threads"]))
    backend = model.backend
    last = [None]

    def feed(ids: list[int]) -> None:
        last[0] = backend.step(ids)

    def next_token() -> None:
        last[0] = backend.step([int(np.argmax(last[0]))])

    def restart() -> None:
        backend.truncate(0)

    return feed, next_token, restart, "runtime.load (default context plan) + backend.step"


def genai(a: dict):
    import onnxruntime_genai as og

    from benchmarks.peer_runners import genai_model

    model = genai_model(a["artifact"], a["threads"])
    params = og.GeneratorParams(model)
    if a.get("max_length"):
        params.set_search_options(max_length=a["max_length"], do_sample=False)
    else:
        params.set_search_options(do_sample=False)  # max_length: genai_config.json's, the model's context
    gen = [og.Generator(model, params)]

    def feed(ids: list[int]) -> None:
        gen[0].append_tokens(ids)

    def next_token() -> None:
        gen[0].generate_next_token()

    def restart() -> None:
        gen[0] = None  # the old generator's cache is freed before the new one's is made
        gen[0] = og.Generator(model, params)

    api = "og.Generator append_tokens / generate_next_token, max_length " + str(a.get("max_length") or "default")
    return feed, next_token, restart, api


def main(argv: list[str]) -> int:
    kind, a = argv[0], json.loads(argv[1])
    t = time.perf_counter()
    feed, next_token, restart, api = {"ours": ours, "genai": genai}[kind](a)
    load_s = time.perf_counter() - t
    loaded = rss()
    ids = prompt(max(a["levels"]) + 1, a["vocab"])
    held, rows = 0, []
    for level in a["levels"]:
        if a.get("fresh_per_level") and held:  # a new sequence filled to each level from empty
            restart()
            held = 0
        target = max(level, 1)
        t = time.perf_counter()
        while held < target:
            n = min(a["chunk"], target - held)
            feed(ids[held:held + n])
            held += n
        fill_s = time.perf_counter() - t
        at = held
        t, c = time.perf_counter(), time.process_time()
        for _ in range(a["decode"]):
            next_token()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        held += a["decode"]
        now, peak = rss()
        rows.append({"level": level, "held": at, "fill_s": fill_s, "decode_tokens_per_s": a["decode"] / wall,
                     "cpu_s_per_token": cpu / a["decode"], "rss_bytes": now, "peak_rss_bytes": peak})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"api": api, "load_s": load_s, "rss_loaded_bytes": loaded[0], "levels": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
