"""A model package ready to generate: manifest + tokenizer + ONNX Runtime backend, and prompt templates.

    model = runtime.load("runtime/demo")              # or runtime.load() for the bundled demo package
    out = model.generate("def add(a, b):", GenerationConfig(max_new_tokens=32), on_text=print)
    out.text, out.tokens, out.stats.to_json()
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import hub
from .backend import CancelToken
from .engine import EngineOptions, OrtBackend
from .recompute import with_recompute
from .loop import Generation, GenerationConfig, generate_ids
from .manifest import Manifest, fill_template, load_manifest
from .speculate import DEFAULT_COST, verify_cost
from .text import clean_text, load_tokenizer
from .threads import device_key, remembered

if TYPE_CHECKING:
    from .chat import ChatSession

DEFAULT_PACKAGE = Path(__file__).resolve().parent / "demo"


def apply_template(manifest: Manifest, name: str, prompt: str, part: str = "prompt",
                   system: str | None = None) -> str:
    """The template's `part` ("prompt", or "turn" for chat) with the user's text in place of {prompt}; with a
    `system` message the first turn uses the template's "system" part ({system} and {prompt})."""
    if name not in manifest.templates:
        raise ValueError(f"template {name!r} is not in {manifest.folder}'s manifest; choose one of "
                         f"{', '.join(manifest.templates)}")
    return fill_template(manifest.templates[name], prompt, part, system, name)


def template_stops(manifest: Manifest, name: str) -> tuple[str, ...]:
    return tuple(manifest.templates[name].get("stop", ()))


def undecodable(tokenizer, vocab_size: int) -> np.ndarray:
    """(vocab_size,) bool: embedding rows with no token in the tokenizer. Published checkpoints pad their
    vocabulary (phi-2: 51200 rows for 50295 tokens); sampling such a row would emit nothing visible."""
    ids = np.fromiter((i for i in tokenizer.get_vocab(with_added_tokens=True).values() if 0 <= i < vocab_size),
                      np.int64)
    mask = np.ones(vocab_size, bool)
    mask[ids] = False
    return mask


class ModelBusyError(RuntimeError):
    """A call that asked not to wait (wait=False) found the model generating for another caller."""


class TextGenerator:
    """One loaded package: one KV cache, so one generation at a time.

    Safe to share between threads: generate, generate_ids and every ChatSession call on this model take its lock
    for the whole call, so a second caller waits for the first to finish (or, with wait=False, gets
    ModelBusyError at once). Cancel a call from any thread with its `cancel` token. For generations that should
    run at the same time, load the package once per thread (the weights are memory-mapped and shared).
    """

    def __init__(self, manifest: Manifest, backend: OrtBackend, load_s: float | None = None):
        # LongRoPE and sliding-window packages: the wrapper recomputes what their caches cannot hold in place
        # (runtime/recompute.py)
        self.manifest, self.backend, self.load_s = manifest, with_recompute(backend, manifest), load_s
        self.lock = threading.RLock()
        self.tokenizer = load_tokenizer(manifest.folder / manifest.tokenizer["file"])
        eos = manifest.tokenizer.get("eos_token_id")
        self.eos_token_id: int | None = None if eos is None else int(eos)
        self.stop_token_ids = manifest.stop_token_ids  # any of them ends generation (<|end|>, <|endoftext|>)
        self.suppress = undecodable(self.tokenizer, backend.vocab_size)  # (vocab,) bool: rows never sampled
        self.cache_owner: object | None = None  # the chat session whose conversation the cache holds, if any
        self._engine = backend  # the ONNX Runtime backend under any wrapper: its options and thread count
        self._draft_cost: float | None = None  # measured on first use (draft_cost)

    @contextlib.contextmanager
    def exclusive(self, wait: bool = True) -> Iterator[None]:
        """Holds the model's lock for a block: generation calls from other threads wait until it ends."""
        if not self.lock.acquire(blocking=bool(wait)):
            raise ModelBusyError("the model is generating for another caller; wait for it (wait=True) or load the "
                                 "package again for a second, independent model")
        try:
            yield
        finally:
            self.lock.release()

    def draft_cost(self) -> float:
        """c of this package's verify cost line on this device, cost(S) = cost(1) (1 + c (S - 1)): measured once
        (runtime.speculate.verify_cost, a few steps taken back) and kept on disk beside the thread count, keyed by
        package, device, profile and threads; DEFAULT_COST where the cache has no room to measure it."""
        if self._draft_cost is None:
            engine = self._engine
            key = f"{device_key(self.manifest, engine.options.profile)}/threads {engine.threads}"
            self._draft_cost = remembered("verify-cost", key, lambda: verify_cost(self.backend))
        return DEFAULT_COST if self._draft_cost is None else self._draft_cost

    def resolve(self, config: GenerationConfig) -> GenerationConfig:
        """`config` with its draft cost measured where drafting asks for it and it is not given."""
        if config.draft != "none" and config.draft_cost is None:
            return replace(config, draft_cost=self.draft_cost())
        return config

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(clean_text(text)).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))

    def generate(self, prompt: str, config: GenerationConfig = GenerationConfig(), *, template: str = "completion",
                 on_text: Callable[[str], None] | None = None, cancel: CancelToken | None = None,
                 system: str | None = None, wait: bool = True) -> Generation:
        """Continues `prompt` (through `template`) from an empty cache; the template's stop strings apply.
        `wait`: False raises ModelBusyError instead of waiting while another thread generates on this model."""
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("the prompt is empty; pass some text to continue" if isinstance(prompt, str) else
                             f"the prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(config, GenerationConfig):
            raise ValueError(f"config must be a runtime.GenerationConfig, got {type(config).__name__}")
        ids = self.encode(apply_template(self.manifest, template, prompt, system=system))
        stops = tuple(dict.fromkeys(config.stop + template_stops(self.manifest, template)))
        with self.exclusive(wait):
            self.backend.truncate(0)
            return self.generate_ids(ids, replace(config, stop=stops), on_text=on_text, cancel=cancel)

    def generate_ids(self, ids: list[int], config: GenerationConfig = GenerationConfig(), *,
                     on_text: Callable[[str], None] | None = None, cancel: CancelToken | None = None,
                     wait: bool = True) -> Generation:
        """Continues the cache as it is with `ids`. For a fresh sequence from another thread, hold the model across
        both: `with model.exclusive(): model.backend.truncate(0); model.generate_ids(ids)` (the lock is reentrant)."""
        with self.exclusive(wait):
            self.cache_owner = None
            config = self.resolve(config)
            return generate_ids(self.backend, ids, config, eos_token_id=self.stop_token_ids, decode=self.decode,
                                on_text=on_text, cancel=cancel, load_s=self.load_s, suppress=self.suppress)

    def chat(self, template: str = "chat", drop_oldest: bool = False, system: str | None = None) -> ChatSession:
        from .chat import ChatSession

        return ChatSession(self, template=template, drop_oldest=drop_oldest, system=system)


def load(package: str | Path = DEFAULT_PACKAGE, options: EngineOptions = EngineOptions()) -> TextGenerator:
    """Loads a model package folder (default: the demo package shipped in runtime/demo), or a Hugging Face id
    (ORG/NAME[@REVISION][:SUBFOLDER]: downloaded, and a checkpoint exported, once; runtime/hub.py)."""
    t0 = time.perf_counter()
    package = Path(package)
    if not package.exists() and package.resolve() == DEFAULT_PACKAGE:
        raise FileNotFoundError(f"the demo package {DEFAULT_PACKAGE} is missing; export it with python -m export "
                                f"train/demo {DEFAULT_PACKAGE} --block-size 32 --target web, or pass --package DIR")
    package = hub.resolve(package)  # a Hugging Face id: downloaded (and exported) once, then cached (runtime/hub.py)
    manifest = load_manifest(package, verify=options.verify)
    backend = OrtBackend(manifest, options)
    generator = TextGenerator(manifest, backend)
    generator.load_s = time.perf_counter() - t0
    return generator
