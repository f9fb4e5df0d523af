"""The peers' side of benchmarks.lookup: their own prompt-lookup decoding, and the cost of one verify step.
Runs in the peers' Python, one action per process, like benchmarks.peer_runners:

    python -m benchmarks.peer_lookup lookup SYSTEM '{"artifact", "prompts", "new_tokens", "threads", "eos", "order"}'
    python -m benchmarks.peer_lookup cost   SYSTEM '{"artifact", "threads", "past", "max_s", "repeats"}'

`lookup` decodes every prompt greedily in each of `order`'s modes ("plain", or a key of LOOKUP[SYSTEM]) until
EOS or new_tokens, and reports per run: the tokens, decode tok/s (first to last new token, as peer_runners
times it), and the decode forward passes with the tokens they were fed (prefill excluded). The peers' modes:
- onnxruntime-genai's own n-gram decoding (0.18+), `GeneratorParams.set_speculative_options(...)`: "ngram"
  (ngram_size 3, K = 8 fixed: its defaults beyond the two required) and "ngram-adaptive" (adding its cooldown and
  adaptive K down to 1). Passes and fed tokens follow from `get_speculative_stats()`: a round's verify pass
  feeds its drafts, a re-anchor pass feeds one token, and every fallback step but the first (the prefill's
  token) feeds one: passes = verify + reanchor + fallback - 1, fed = drafts evaluated + reanchor + fallback - 1.
- llama.cpp: `Llama(draft_model=LlamaPromptLookupDecoding(max_ngram_size=2, num_pred_tokens=2))`, the setting
  llama-cpp-python's README gives for CPU-only machines; passes and fed tokens from `Llama.eval` calls.
`cost` times one forward of S = 1 .. max_s tokens after `past` cached positions (median over `repeats`, S
interleaved), the way each verifies drafts: genai `append_tokens` then `rewind_to`, llama.cpp `eval` with
`logits_all` (which its draft path turns on) after moving `n_tokens` back.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable

from .peer_runners import genai_model

LOOKUP = {"onnxruntime-genai": {"ngram": {"ngram_size": 3, "max_draft_tokens": 8},
                               "ngram-adaptive": {"ngram_size": 3, "max_draft_tokens": 8, "cooldown": True,
                                                  "min_adaptive_k": 1}},
          "llama.cpp": {"lookup": {"max_ngram_size": 2, "num_pred_tokens": 2}}}

# generate(prompt, n, mode, emit) -> {"passes": decode forward passes, "fed": tokens they were fed}
Generate = Callable[[list[int], int, str, Callable[[int], None]], dict]


def genai_session(a: dict) -> Generate:
    import onnxruntime_genai as og

    model = genai_model(a["artifact"], a["threads"])

    def generate(prompt: list[int], n: int, mode: str, emit: Callable[[int], None]) -> dict:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + n, do_sample=False)
        if mode != "plain":
            params.set_speculative_options(**LOOKUP["onnxruntime-genai"][mode])
        gen = og.Generator(model, params)
        gen.append_tokens(prompt)
        count = 0
        while not gen.is_done():
            gen.generate_next_token()
            emit(int(gen.get_next_tokens()[0]))
            count += 1
        if mode == "plain":
            return {"passes": count - 1, "fed": count - 1}
        s = gen.get_speculative_stats()
        single = s["target_reanchor_forward_passes"] + max(s["standard_fallback_steps"] - 1, 0)
        return {"passes": s["target_verify_forward_passes"] + single, "fed": s["draft_tokens_evaluated"] + single,
                "drafted": s["draft_tokens_evaluated"], "accepted": s["draft_tokens_accepted"]}

    return generate


def _llama(a: dict, **extra):
    from llama_cpp import Llama

    return Llama(model_path=a["artifact"], n_ctx=a["n_ctx"], n_batch=512, n_threads=a["threads"],
                 n_threads_batch=a["threads"], verbose=False, **extra)


def llama_session(a: dict) -> Generate:
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    models = {"plain": _llama(a), "lookup": _llama(a, draft_model=LlamaPromptLookupDecoding(
        **LOOKUP["llama.cpp"]["lookup"]))}
    sizes: list[int] = []
    for llm in models.values():
        inner = llm.eval
        llm.eval = lambda tokens, inner=inner: (sizes.append(len(tokens)), inner(tokens))[1]

    def generate(prompt: list[int], n: int, mode: str, emit: Callable[[int], None]) -> dict:
        llm = models[mode]
        llm.reset()
        sizes.clear()
        for i, token in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True)):
            emit(int(token))
            if token == a["eos"] or i + 1 == n:
                break
        decode = sizes[1:]  # the first eval is the prompt
        return {"passes": len(decode), "fed": sum(decode)}

    return generate


SESSIONS = {"onnxruntime-genai": genai_session, "llama.cpp": llama_session}


def lookup(system: str, a: dict) -> dict:
    generate = SESSIONS[system](a)
    for mode in a["order"]:  # warm-up
        generate(a["prompts"][0], 8, mode, lambda t: None)
    runs = []
    for i, prompt in enumerate(a["prompts"]):
        for mode in a["order"]:
            marks, tokens = [], []

            def emit(token: int) -> None:
                marks.append(time.perf_counter())
                tokens.append(token)

            counts = generate(prompt, a["new_tokens"], mode, emit)
            if tokens and tokens[-1] == a["eos"]:
                tokens.pop(), marks.pop()  # as our runtime counts: EOS ends the run and is not a new token
            rate = (len(tokens) - 1) / (marks[-1] - marks[0]) if len(tokens) > 1 else None
            runs.append({"prompt": i, "mode": mode, "tokens": tokens, "decode_tok_s": rate, **counts})
    return {"settings": LOOKUP[system], "runs": runs}


def cost(system: str, a: dict) -> dict:
    past, max_s = a["past"], a["max_s"]
    rng = random.Random(0)
    ids = [rng.randrange(1, a["vocab_size"]) for _ in range(past + max_s)]
    if system == "onnxruntime-genai":
        import onnxruntime_genai as og

        model = genai_model(a["artifact"], a["threads"])
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=past + max_s + 1, do_sample=False)
        gen = og.Generator(model, params)
        gen.append_tokens(ids[:past])

        def step(s: int) -> None:
            gen.rewind_to(past)
            gen.append_tokens(ids[past:past + s])
    else:
        llm = _llama({**a, "n_ctx": past + max_s + 1}, logits_all=True)
        llm.eval(ids[:past])

        def step(s: int) -> None:
            llm.n_tokens = past  # eval drops the cache past n_tokens first
            llm.eval(ids[past:past + s])
    times: dict[int, list[float]] = {s: [] for s in range(1, max_s + 1)}
    for r in range(a["repeats"] + 1):
        for s in range(1, max_s + 1):
            t0 = time.perf_counter()
            step(s)
            if r:  # the first round warms up
                times[s].append(time.perf_counter() - t0)
    ms = {s: 1e3 * statistics.median(v) for s, v in times.items()}
    return {"past": past, "threads": a["threads"], "ms": ms, "relative": {s: ms[s] / ms[1] for s in ms}}


def main(argv: list[str]) -> int:
    action, system, args = argv[0], argv[1], json.loads(argv[2])
    if action not in ("lookup", "cost"):
        raise ValueError(f"unknown action {action!r}; one of lookup, cost")
    print(json.dumps((lookup if action == "lookup" else cost)(system, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
