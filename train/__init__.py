"""phi in PyTorch: the model, its checkpoints and the phi-1.5 training recipe.

`train.load_pretrained(path)` and `train.save_pretrained(model, path)` are loaded lazily so that light
modules of this package (config, data) can be imported without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import PRESETS, PhiConfig, load_config, preset
from .config_phi3 import Phi3Config

if TYPE_CHECKING:
    from .checkpoint import load_pretrained, save_pretrained
    from .model import KVCache, PhiForCausalLM
    from .phi3 import Phi3ForCausalLM

_LAZY = {"load_pretrained": "checkpoint", "save_pretrained": "checkpoint",
         "PhiForCausalLM": "model", "KVCache": "model", "Phi3ForCausalLM": "phi3"}

__all__ = ["PRESETS", "PhiConfig", "Phi3Config", "load_config", "preset", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
