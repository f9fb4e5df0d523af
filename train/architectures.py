"""The one table from a config's model_type to its PyTorch model and its checkpoint tensors.

    "phi"   PhiForCausalLM  (train/model.py):  phi-1, phi-1.5, phi-2
    "phi3"  Phi3ForCausalLM (train/phi3.py):   Phi-3-mini, Phi-3.5-mini, Phi-4-mini, Phi-3-medium, Phi-4

A new architecture is a config class (train/config*.py), a model module and one row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .config import PhiConfig
from .config_phi3 import Phi3Config


@dataclass(frozen=True)
class Architecture:
    model: type  # the *ForCausalLM class
    shapes: Callable[[object], dict[str, tuple[int, ...]]]  # HF tensor name -> shape
    layouts: tuple[str, ...]  # checkpoint layouts it is published in (train/layouts.py)


def _table() -> dict[str, Architecture]:
    from . import phi3
    from .checkpoint import phi_shapes
    from .layouts import HF, LAYOUTS
    from .model import PhiForCausalLM

    return {"phi": Architecture(PhiForCausalLM, phi_shapes, LAYOUTS),
            "phi3": Architecture(phi3.Phi3ForCausalLM, phi3.expected_shapes, (HF,))}


def architecture(config: PhiConfig | Phi3Config) -> Architecture:
    return _table()[config.model_type]


def build_model(config: PhiConfig | Phi3Config):
    return architecture(config).model(config)
