"""On-device text generation from a model package with ONNX Runtime; no torch.

    import runtime
    model = runtime.load("runtime/demo")                        # manifest + tokenizer + session + KV cache
    out = model.generate("def add(a, b):", runtime.GenerationConfig(max_new_tokens=32), on_text=print)
    out.text, out.tokens, out.finish_reason, out.stats.to_json()   # keys: runtime.stats
    chat = model.chat(); chat.send("Hello")                      # KV cache kept across turns

One model, one generation at a time: calls from several threads take turns on the model's lock (wait=False
raises ModelBusyError instead of waiting); cancel from any thread with a threading.Event.

CLIs: python -m runtime.generate PROMPT, python -m runtime.chat. Modules load lazily, so export/ can
import runtime.contract and runtime.manifest without pulling in onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backend import Backend, CancelToken
    from .chat import ChatSession, ContextFullError, Turn
    from .engine import PROFILES, EngineOptions, OrtBackend
    from .loop import Generation, GenerationConfig, generate_ids, prefill
    from .manifest import Manifest, load_manifest
    from .pipeline import DEFAULT_PACKAGE, ModelBusyError, TextGenerator, load
    from .sampling import Sampler, SamplingConfig
    from .stats import GenerationStats
    from .text import IncrementalDecoder, StopMatcher, TextStream

_LAZY = {
    "Backend": "backend", "CancelToken": "backend",
    "ChatSession": "chat", "ContextFullError": "chat", "Turn": "chat",
    "PROFILES": "engine", "EngineOptions": "engine", "OrtBackend": "engine",
    "Generation": "loop", "GenerationConfig": "loop", "generate_ids": "loop", "prefill": "loop",
    "Manifest": "manifest", "load_manifest": "manifest",
    "DEFAULT_PACKAGE": "pipeline", "ModelBusyError": "pipeline", "TextGenerator": "pipeline", "load": "pipeline",
    "Sampler": "sampling", "SamplingConfig": "sampling",
    "GenerationStats": "stats",
    "IncrementalDecoder": "text", "StopMatcher": "text", "TextStream": "text",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
