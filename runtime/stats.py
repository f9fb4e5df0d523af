"""Per-call generation statistics, with their keys named once.

benchmarks/ and the Android app write and read the same keys, so import them from here rather than
retyping the strings. Times are wall-clock seconds (time.perf_counter); CPU time is the process's user +
system time (time.process_time), which counts every ONNX Runtime worker thread.

    call start --prefill--> first token --decode (new_tokens - 1 steps)--> last token
    |<------ ttft_s ------>|<------------------ decode_s ------------------>|
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

LOAD_S = "load_s"  # package load: manifest, tokenizer, session (once per model, repeated in each call's stats)
PROMPT_TOKENS = "prompt_tokens"  # tokens prefilled in this call
NEW_TOKENS = "new_tokens"  # tokens sampled in this call (an EOS that ended the call counts)
TTFT_S = "ttft_s"  # call start to the first sampled token: prefill + one sample
PREFILL_S = "prefill_s"
PREFILL_TOKENS_PER_S = "prefill_tokens_per_s"  # prompt_tokens / prefill_s
DECODE_S = "decode_s"  # first token to last token
DECODE_TOKENS_PER_S = "decode_tokens_per_s"  # (new_tokens - 1) / decode_s
CPU_S = "cpu_s"  # process CPU seconds of the whole call
CPU_S_PER_TOKEN = "cpu_s_per_token"  # process CPU seconds of the decode phase per token after the first
PEAK_RSS_BYTES = "peak_rss_bytes"  # the process's peak resident set size so far
FINISH_REASON = "finish_reason"  # one of FINISH_REASONS
DECODE_STEPS = "decode_steps"  # forward passes after the prompt's; fewer than new_tokens - 1 with accepted drafts
DRAFT_TOKENS = "draft_tokens"  # tokens drafted by prompt lookup and verified (runtime/speculate.py)
ACCEPTED_TOKENS = "accepted_tokens"  # drafted tokens that were kept
PACKAGE_BYTES = "package_bytes"  # model files on disk; per model like LOAD_S, reported by benchmarks/, not per call

KEYS = (LOAD_S, PROMPT_TOKENS, NEW_TOKENS, TTFT_S, PREFILL_S, PREFILL_TOKENS_PER_S, DECODE_S,
        DECODE_TOKENS_PER_S, CPU_S, CPU_S_PER_TOKEN, PEAK_RSS_BYTES, FINISH_REASON, DECODE_STEPS, DRAFT_TOKENS,
        ACCEPTED_TOKENS)

# Why a call ended: a stop string, the end-of-text token, max_new_tokens, a full KV cache, cancellation.
STOP, EOS, LENGTH, CONTEXT, CANCELLED = "stop", "eos", "length", "context", "cancelled"
FINISH_REASONS = (STOP, EOS, LENGTH, CONTEXT, CANCELLED)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process; ru_maxrss is KiB on Linux and bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _rate(count: float, seconds: float) -> float | None:
    return count / seconds if seconds > 0 and count > 0 else None


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    ttft_s: float | None  # None when no token was sampled (cancelled during prefill)
    prefill_s: float
    decode_s: float
    cpu_s: float
    decode_cpu_s: float
    peak_rss_bytes: int
    finish_reason: str
    load_s: float | None = None
    decode_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0

    def __post_init__(self) -> None:
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"finish_reason {self.finish_reason!r} is not one of {', '.join(FINISH_REASONS)}")
        if self.prompt_tokens < 0 or self.new_tokens < 0:
            raise ValueError(f"token counts must be >= 0, got prompt_tokens={self.prompt_tokens}, "
                             f"new_tokens={self.new_tokens}")

    @property
    def prefill_tokens_per_s(self) -> float | None:
        return _rate(self.prompt_tokens, self.prefill_s)

    @property
    def decode_tokens_per_s(self) -> float | None:
        return _rate(self.new_tokens - 1, self.decode_s)

    @property
    def cpu_s_per_token(self) -> float | None:
        steps = self.new_tokens - 1
        return self.decode_cpu_s / steps if steps > 0 else None

    def to_json(self) -> dict[str, float | int | str | None]:
        return {LOAD_S: self.load_s, PROMPT_TOKENS: self.prompt_tokens, NEW_TOKENS: self.new_tokens,
                TTFT_S: self.ttft_s, PREFILL_S: self.prefill_s, PREFILL_TOKENS_PER_S: self.prefill_tokens_per_s,
                DECODE_S: self.decode_s, DECODE_TOKENS_PER_S: self.decode_tokens_per_s, CPU_S: self.cpu_s,
                CPU_S_PER_TOKEN: self.cpu_s_per_token, PEAK_RSS_BYTES: self.peak_rss_bytes,
                FINISH_REASON: self.finish_reason, DECODE_STEPS: self.decode_steps, DRAFT_TOKENS: self.draft_tokens,
                ACCEPTED_TOKENS: self.accepted_tokens}
