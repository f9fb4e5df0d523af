"""The one generation loop: prefill, then sample -> show text -> check stops -> decode step, over a Backend.

    prompt ids --prefill (chunks)--> logits --sample--> token --TextStream--> on_text(piece)
                                       ^                  |
                                       +--- step([token]) + (unless a stop, EOS, max_new_tokens, full
                                                             cache or cancellation ends the call)

With a drafter (config.draft, runtime/speculate.py) a decode step may verify drafted tokens: step_all([token,
d1 .. dK]) returns K + 1 rows, which are queued as (row, draft) pairs; each pair gives the next token through
Sampler.verify, and the first rejected draft empties the queue and truncates the cache past the last position
whose token was kept. The tokens are exactly those of plain decoding (greedy) or follow the same distribution.

The last sampled token is never fed back, so after a call the cache holds the prompt and all new tokens but
the last: backend.length == start + len(prompt) + len(tokens) - 1 (chat relies on it).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np

from .backend import Backend, CancelToken
from .sampling import Sampler, SamplingConfig
from .speculate import DEFAULT_COST, DRAFTS, NgramDrafter
from .stats import CANCELLED, CONTEXT, EOS, LENGTH, STOP, GenerationStats, peak_rss_bytes
from .text import Decode, TextStream


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()  # stop strings, matched on the decoded text and never shown
    stop_at_eos: bool = True  # False: keep going past the end-of-text token (benchmarks, random models)
    prefill_chunk: int = 0  # prefill at most this many tokens per step; 0: the whole prompt at once
    draft: str = "none"  # "ngram": speculative decoding by prompt lookup (runtime/speculate.py); same tokens
    draft_tokens: int = 8  # the most tokens one step verifies (K); fewer when fewer pay (runtime/speculate.py)
    draft_cost: float | None = None  # c of the verify cost line cost(S) = cost(1) (1 + c (S - 1)); None: measured
    # on this device once per package (TextGenerator.draft_cost), DEFAULT_COST where it cannot be

    def __post_init__(self) -> None:
        if self.draft not in DRAFTS:
            raise ValueError(f"draft {self.draft!r} is unknown; choose one of {', '.join(DRAFTS)}")
        for name, low, meaning in (("max_new_tokens", 1, ""), ("draft_tokens", 1, ""),
                                   ("prefill_chunk", 0, " (0: the whole prompt at once)")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}{meaning}, got {value!r}")
        if self.draft_cost is not None and (isinstance(self.draft_cost, bool) or not isinstance(
                self.draft_cost, (int, float)) or not 0 <= self.draft_cost < float("inf")):
            raise ValueError(f"draft_cost must be a number >= 0 (the verify cost per drafted token, as a fraction of "
                             f"a step) or None to measure it, got {self.draft_cost!r}")
        if not isinstance(self.sampling, SamplingConfig):
            raise ValueError(f"sampling must be a runtime.SamplingConfig, got {type(self.sampling).__name__}")
        if not isinstance(self.stop_at_eos, bool):
            raise ValueError(f"stop_at_eos must be True or False, got {self.stop_at_eos!r}")
        if isinstance(self.stop, str):
            raise ValueError(f"stop must be a tuple of strings, got the string {self.stop!r}; "
                             f"wrap it: ({self.stop!r},)")
        if not isinstance(self.stop, (tuple, list)) or not all(isinstance(x, str) for x in self.stop):
            raise ValueError(f"stop must be a tuple (or list) of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(self.stop))  # a list is accepted and kept as a tuple


@dataclass(frozen=True)
class Generation:
    text: str  # what was shown: stop strings and anything after them left out
    tokens: list[int]  # every sampled token, the EOS that ended the call included
    finish_reason: str  # runtime.stats.FINISH_REASONS
    stats: GenerationStats


def check_fits(backend: Backend, n_prompt: int) -> None:
    free = backend.capacity - backend.length
    if n_prompt > free:
        used = f" ({backend.length} already in use)" if backend.length else ""
        raise ValueError(f"the prompt has {n_prompt} tokens but the context holds {backend.capacity}{used}; "
                         f"shorten the prompt or load the package with a larger context")


def prefill(backend: Backend, ids: Sequence[int], chunk: int = 0,
            cancel: CancelToken | None = None) -> np.ndarray | None:
    """Feeds the prompt in chunks of `chunk` tokens (0: all at once); logits after it, None if cancelled."""
    if not ids:
        raise ValueError("the prompt has no tokens; pass some text")
    check_fits(backend, len(ids))
    step = chunk or len(ids)
    logits = None
    for start in range(0, len(ids), step):
        if cancel is not None and cancel.is_set():
            return None
        logits = backend.step(ids[start:start + step])
    return logits


def _show(stream: TextStream, token: int, on_text: Callable[[str], None] | None) -> bool:
    """Pushes a token's text out; True when a stop string was reached."""
    piece = stream.push(token)
    if piece and on_text is not None:
        on_text(piece)
    return stream.stopped


def _draft_limit(backend: Backend, remaining: int) -> int:
    """How many tokens may be drafted after the next token: the tokens still wanted, the free cache, and the length
    a verify step may reach and still be taken back in place (runtime/recompute.py: LongRoPE's switch, a sliding
    window's next eviction), so a rejected draft never costs a recomputation."""
    limit = min(remaining - 1, backend.capacity - backend.length - 1)
    until = getattr(backend, "rollback_limit", None)
    if until is not None:
        limit = min(limit, until - backend.length - 1)
    return limit


def generate_ids(backend: Backend, prompt: Sequence[int], config: GenerationConfig = GenerationConfig(), *,
                 eos_token_id: int | Collection[int] | None = None, decode: Decode | None = None,
                 on_text: Callable[[str], None] | None = None, cancel: CancelToken | None = None,
                 load_s: float | None = None, context: Sequence[int] = (),
                 suppress: np.ndarray | None = None) -> Generation:
    """Continues the backend's cache with `prompt`; `decode` (ids -> text) enables text and stop strings.

    `context` are the ids already in the cache before `prompt` (a chat's earlier turns): the repetition
    penalty sees them as transformers does when it is given the whole conversation, and the drafter looks
    them up. `suppress` (vocab,) bool marks ids never to sample (embedding rows the tokenizer has no token for).
    """
    t0, c0 = time.perf_counter(), time.process_time()
    stop_ids = frozenset() if eos_token_id is None else frozenset(
        [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)  # any of them ends the call
    sample = Sampler(config.sampling, suppress)
    sample.observe(context)
    stream = TextStream(decode, config.stop, context=prompt) if decode is not None else None
    if config.stop and stream is None:
        raise ValueError("stop strings need text: pass decode= (the tokenizer's decode)")
    drafter = None
    if config.draft == "ngram":
        if not getattr(backend, "can_step_all", False):
            raise ValueError("this package returns logits for one position per step, so drafted tokens cannot be "
                             "verified; re-export it with this version of the project or pass --draft none")
        drafter = NgramDrafter(config.draft_tokens, [*context, *prompt],
                               DEFAULT_COST if config.draft_cost is None else config.draft_cost)
    sample.observe(prompt)
    logits = prefill(backend, prompt, config.prefill_chunk, cancel)
    t_prefill = time.perf_counter()
    t1 = c1 = None  # wall and CPU time of the first token
    tokens: list[int] = []
    queue: deque[tuple[np.ndarray, int | None]] = deque()  # (logits row, the token drafted there or None)
    if logits is not None:
        queue.append((logits, None))
    steps = drafted = accepted = 0
    verifying = kept = 0  # drafts in the current verify step, and how many of them were kept so far
    finish = None
    while queue:
        row, draft = queue.popleft()
        keep = backend.length - len(queue)  # the cache holds everything before this row's token
        if draft is None:
            token = sample(row)
            if verifying:  # the extra row of a verify step whose drafts were all kept
                drafter.feedback(verifying, verifying)
                verifying = 0
        else:
            token = sample.verify(row, draft)
            if token == draft:
                accepted += 1
                kept += 1
            else:  # the rest of the drafts follow a token that was not kept
                drafter.feedback(verifying, kept)
                verifying = 0
                queue.clear()
                backend.truncate(keep)
        sample.observe([token])
        tokens.append(token)
        if drafter is not None:
            drafter.extend([token])
        if t1 is None:
            t1, c1 = time.perf_counter(), time.process_time()
        if config.stop_at_eos and token in stop_ids:
            finish = EOS
        elif stream is not None and _show(stream, token, on_text):
            finish = STOP
        elif len(tokens) >= config.max_new_tokens:
            finish = LENGTH
        elif not queue and backend.length >= backend.capacity:
            finish = CONTEXT
        elif cancel is not None and cancel.is_set():
            finish = CANCELLED
        if finish is not None:
            if queue:  # verified rows left over: forget the positions after this token
                queue.clear()
                backend.truncate(keep)
            break
        if queue:
            continue  # the next row is already computed
        steps += 1
        proposal = drafter.propose(_draft_limit(backend, config.max_new_tokens - len(tokens))) if drafter else []
        if proposal:
            rows = backend.step_all([token, *proposal])  # (K + 1, vocab)
            drafted += len(proposal)
            verifying, kept = len(proposal), 0
            queue.extend(zip(rows[:-1], proposal))
            queue.append((rows[-1], None))
        else:
            queue.append((backend.step([token]), None))
    finish = finish or CANCELLED
    if stream is not None:
        piece = stream.flush()
        if piece and on_text is not None:
            on_text(piece)
    t2, c2 = time.perf_counter(), time.process_time()
    first_t, first_c = (t1, c1) if t1 is not None else (t2, c2)
    stats = GenerationStats(prompt_tokens=len(prompt), new_tokens=len(tokens),
                            ttft_s=None if t1 is None else t1 - t0, prefill_s=t_prefill - t0, decode_s=t2 - first_t,
                            cpu_s=c2 - c0, decode_cpu_s=c2 - first_c, peak_rss_bytes=peak_rss_bytes(),
                            finish_reason=finish, load_s=load_s, decode_steps=steps, draft_tokens=drafted,
                            accepted_tokens=accepted)
    return Generation(stream.text if stream is not None else "", tokens, finish, stats)
