"""python -m benchmarks.overhead --model PACKAGE [--prompt-len 128] [--new-tokens 64] [--threads 2]

How much of decode time the runtime spends outside ONNX Runtime's session.run: sampling, detokenizing,
stop checks, binding. Greedy, no EOS stop, one warm-up call then `repeats` measured calls.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runtime.engine import EngineOptions
from runtime.loop import GenerationConfig
from runtime.pipeline import load
from runtime.sampling import SamplingConfig

from .latency import prompt_ids


def measure(package: Path, prompt_len: int, new_tokens: int, threads: int, repeats: int) -> dict:
    model = load(package, EngineOptions(threads=threads, context=prompt_len + new_tokens))
    backend = model.backend
    session = backend.session
    inside = [0.0]
    run = session.run_with_iobinding

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            inside[0] += time.perf_counter() - t

    session.run_with_iobinding = timed
    ids = prompt_ids(prompt_len, backend.vocab_size)
    config = GenerationConfig(max_new_tokens=new_tokens, sampling=SamplingConfig(temperature=0), stop_at_eos=False)
    fractions = []
    for i in range(repeats + 1):
        backend.truncate(0)
        backend.step(ids)  # prefill outside the measured window
        inside[0] = 0.0
        t = time.perf_counter()
        # The decode phase exactly as generate runs it, with text streaming and stop checks switched on.
        out = model.generate_ids([ids[-1]], GenerationConfig(max_new_tokens=new_tokens, sampling=config.sampling,
                                                            stop_at_eos=False, stop=("\x00never",)))
        total = time.perf_counter() - t
        if i:  # the first call warms up
            fractions.append((total - inside[0]) / total)
    return {"outside_session_run": sorted(fractions)[len(fractions) // 2], "new_tokens": len(out.tokens),
            "decode_tokens_per_s": out.stats.decode_tokens_per_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    r = measure(a.model, a.prompt_len, a.new_tokens, a.threads, a.repeats)
    print(f"time outside session.run: {100 * r['outside_session_run']:.2f} % of decode "
          f"({r['new_tokens']} tokens, {r['decode_tokens_per_s']:.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
