"""The phi architecture as one typed config, its preset table, and Hugging Face config.json both ways.

Only the model's shape lives here. Precision, block size, threads, maximum length of a package and the
training recipe are deployment or training knobs and live in export/, runtime/ and train/recipe.py.
This module imports nothing heavy (no torch), so every layer of the project can read a config.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config_phi3 import MAX_POSITIONS, positive_int
from .config_phi3 import MODEL_TYPE as PHI3
from .config_phi3 import PRESETS as PHI3_PRESETS
from .config_phi3 import Phi3Config

# Activations the reference implementation accepts for phi: both are the tanh approximation of GELU.
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


@dataclass(frozen=True)
class PhiConfig:
    """Shape of a phi decoder. Defaults are phi-1.5's."""

    vocab_size: int = 51200
    hidden_size: int = 2048
    n_layers: int = 24
    n_heads: int = 32
    head_dim: int = 64
    rotary_dim: int = 32  # rotary embedding on the first rotary_dim channels of each head
    intermediate_size: int = 8192
    max_position_embeddings: int = 2048
    layer_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    rope_linear_factor: float = 1.0  # rope "linear" scaling (transformers' rope_type linear): positions / factor
    tie_word_embeddings: bool = False
    n_kv_heads: int | None = None  # None: multi-head attention (every published phi)
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    model_type = "phi"  # the architecture (train/architectures.py); a class attribute, not a field

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "head_dim", "intermediate_size",
                     "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PhiConfig.{name} must be a positive integer, got {value!r}")
        if self.max_position_embeddings > MAX_POSITIONS:
            raise ValueError(f"PhiConfig.max_position_embeddings must be at most {MAX_POSITIONS} (the rotary tables "
                             f"are built for every position), got {self.max_position_embeddings}")
        if self.n_heads * self.head_dim != self.hidden_size:
            raise ValueError(
                f"PhiConfig.head_dim: n_heads ({self.n_heads}) x head_dim ({self.head_dim}) must equal "
                f"hidden_size ({self.hidden_size}); set head_dim = {self.hidden_size // self.n_heads} "
                f"or change n_heads")
        if not isinstance(self.rotary_dim, int) or self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ValueError(f"PhiConfig.rotary_dim must be a positive even integer, got {self.rotary_dim!r}")
        if self.rotary_dim > self.head_dim:
            raise ValueError(f"PhiConfig.rotary_dim ({self.rotary_dim}) is larger than head_dim "
                             f"({self.head_dim}); rotary embedding covers at most a whole head")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise ValueError(f"PhiConfig.n_kv_heads ({self.n_kv_heads}) must be a positive divisor of "
                             f"n_heads ({self.n_heads})")
        if not (self.layer_norm_eps > 0 and math.isfinite(self.layer_norm_eps)):
            raise ValueError(f"PhiConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ValueError(f"PhiConfig.rope_base must be > 1, got {self.rope_base!r}")
        if isinstance(self.rope_linear_factor, bool) or not isinstance(self.rope_linear_factor, (int, float)) or \
                not (self.rope_linear_factor > 0 and math.isfinite(self.rope_linear_factor)):
            raise ValueError(f"PhiConfig.rope_linear_factor (rope_scaling factor) must be a number > 0, got "
                             f"{self.rope_linear_factor!r}")
        for name in ("bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"PhiConfig.{name} ({value}) is outside the vocabulary (0..{self.vocab_size - 1})")

    # Derived values
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def partial_rotary_factor(self) -> float:
        return self.rotary_dim / self.head_dim

    def num_parameters(self) -> int:
        h, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.kv_heads * self.head_dim
        attn = h * (h + 2 * kv) + (h + 2 * kv) + h * h + h
        mlp = 2 * h * f + f + h
        per_layer = attn + mlp + 2 * h
        head = (0 if self.tie_word_embeddings else v * h) + v
        return v * h + self.n_layers * per_layer + 2 * h + head

    def replace(self, **changes: Any) -> PhiConfig:
        return dataclasses.replace(self, **changes)

    # Hugging Face config.json (transformers' PhiConfig, model_type "phi")
    def to_hf_dict(self) -> dict[str, Any]:
        factor = self.partial_rotary_factor
        # transformers computes int(head_dim * factor); keep it exact for factors like 32 / 80.
        assert int(self.head_dim * factor) == self.rotary_dim, (self.head_dim, factor)
        rope = {"rope_type": "default", "rope_theta": self.rope_base, "partial_rotary_factor": factor}
        scaling = {}
        if self.rope_linear_factor != 1.0:
            rope.update(rope_type="linear", factor=self.rope_linear_factor)
            scaling = {"rope_scaling": {"type": "linear", "factor": self.rope_linear_factor}}  # transformers 4.x
        return {
            "architectures": ["PhiForCausalLM"],
            "model_type": "phi",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": "gelu_new",
            "qk_layernorm": False,
            "tie_word_embeddings": self.tie_word_embeddings,
            "partial_rotary_factor": factor,
            "rope_theta": self.rope_base,
            # transformers >= 5 reads rope settings from here; older versions read the two keys above.
            "rope_parameters": rope,
            **scaling,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "attention_dropout": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> PhiConfig:
        """Reads config.json of transformers' PhiForCausalLM and of the older phi-msft / MixFormer layouts."""
        model_type = d.get("model_type")
        reader = _CONFIG_READERS.get(model_type)
        if reader is None:
            raise ValueError(f"config.json has model_type {model_type!r}; expected one of "
                             f"{sorted(k for k in _CONFIG_READERS if k)} (a phi checkpoint)")
        return _read(reader, d)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PhiConfig:
        return cls.from_hf_dict(_read_json(path))


def _read(reader, d: dict[str, Any]):
    """reader(d), with a missing or mistyped field of config.json as one clear error."""
    try:
        return reader(d)
    except KeyError as e:
        raise ValueError(f"config.json lacks the required field {e.args[0]!r} for model_type "
                         f"{d.get('model_type')!r}; restore it from the checkpoint's source") from None
    except TypeError as e:
        raise ValueError(f"config.json has a field of the wrong type ({e}); restore it from the checkpoint's "
                         f"source") from None


def _rotary_dim(head_dim: int, factor: float) -> int:
    return int(head_dim * factor)  # the reference implementation truncates the same way


def _check_activation(act: str | None) -> None:
    if act is not None and act not in _TANH_GELU:
        raise ValueError(f"config.json has activation {act!r}; phi uses the tanh approximation of GELU "
                         f"({', '.join(_TANH_GELU)})")


def _from_phi(d: dict[str, Any]) -> PhiConfig:
    _check_activation(d.get("hidden_act"))
    if d.get("qk_layernorm"):
        raise ValueError("config.json sets qk_layernorm: true, which no published phi uses and this "
                         "implementation does not support")
    hidden, heads = positive_int(d, "hidden_size"), positive_int(d, "num_attention_heads")
    head_dim = hidden // heads
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type")) or "default"
    if kind not in ("default", "linear"):
        raise ValueError(f"config.json asks for rope type {kind!r} ({_ROPE_TYPES.get(kind, 'unknown')}), which this "
                         f"project does not implement for phi; supported are 'default' and 'linear'")
    linear = 1.0
    if kind == "linear":
        linear = rope.get("factor")
        if isinstance(linear, bool) or not isinstance(linear, (int, float)) or not linear > 0:
            raise ValueError(f"config.json's rope type 'linear' needs a numeric 'factor' > 0, got {linear!r}")
    factor = rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.5))
    kv = d.get("num_key_value_heads")
    return PhiConfig(
        vocab_size=d["vocab_size"], hidden_size=hidden, n_layers=d["num_hidden_layers"], n_heads=heads,
        head_dim=head_dim, rotary_dim=_rotary_dim(head_dim, factor),
        intermediate_size=d["intermediate_size"],
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        layer_norm_eps=d.get("layer_norm_eps", 1e-5),
        rope_base=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))), rope_linear_factor=float(linear),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        n_kv_heads=None if kv in (None, heads) else kv,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
    )


# Rope types transformers knows (modeling_rope_utils.ROPE_INIT_FUNCTIONS), named when one is refused.
_ROPE_TYPES = {"dynamic": "dynamic NTK scaling, whose base changes with the sequence length",
               "yarn": "YaRN", "longrope": "LongRoPE, used by the phi-3 family", "llama3": "Llama 3's scaling",
               "proportional": "proportional scaling", "linear": "linear position interpolation"}


def _from_msft(d: dict[str, Any]) -> PhiConfig:
    """phi-msft (remote-code PhiForCausalLM) and mixformer-sequential configs share these keys."""
    _check_activation(d.get("activation_function"))
    hidden, heads = positive_int(d, "n_embd"), positive_int(d, "n_head")
    kv = d.get("n_head_kv")
    return PhiConfig(
        vocab_size=d["vocab_size"], hidden_size=hidden, n_layers=d["n_layer"], n_heads=heads,
        head_dim=hidden // heads, rotary_dim=d["rotary_dim"],
        intermediate_size=d.get("n_inner") or 4 * hidden,
        max_position_embeddings=d.get("n_positions", 2048),
        layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
        rope_base=float(d.get("rotary_base", 10000.0)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        n_kv_heads=None if kv in (None, heads) else kv,
        bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
    )


_CONFIG_READERS = {"phi": _from_phi, "phi-msft": _from_msft, "mixformer-sequential": _from_msft}


# The preset table. Published shapes cite their source; derived values are written out.
_PHI_1_5_SHAPE = dict(
    vocab_size=51200,  # CodeGen tokenizer (50295 tokens) padded to 51200 rows
    hidden_size=2048, n_layers=24, n_heads=32,
    head_dim=64,  # 2048 / 32
    rotary_dim=32,  # partial_rotary_factor 0.5 = 32 / 64
    intermediate_size=8192,  # 4 x 2048
    max_position_embeddings=2048, layer_norm_eps=1e-5, rope_base=10000.0,
    bos_token_id=50256, eos_token_id=50256,  # <|endoftext|>
)

PRESETS: dict[str, PhiConfig | Phi3Config] = {
    # phi-1 (arXiv 2306.11644, sec. 2.3; microsoft/phi-1 config.json): 1.3 B, same shape as phi-1.5.
    "phi-1": PhiConfig(**_PHI_1_5_SHAPE),
    # phi-1.5 (arXiv 2309.05463, sec. 2; microsoft/phi-1_5 config.json): 24 layers, 32 heads of 64, rotary 32.
    "phi-1_5": PhiConfig(**_PHI_1_5_SHAPE),
    # phi-2 (microsoft/phi-2 config.json): 2.7 B.
    "phi-2": PhiConfig(
        vocab_size=51200, hidden_size=2560, n_layers=32, n_heads=32,
        head_dim=80,  # 2560 / 32
        rotary_dim=32,  # partial_rotary_factor 0.4 = 32 / 80
        intermediate_size=10240,  # 4 x 2560
        max_position_embeddings=2048, layer_norm_eps=1e-5, rope_base=10000.0,
        bos_token_id=50256, eos_token_id=50256,
    ),
    # Tiny shapes for tests: phi-1.5-like (rotary 0.5) and phi-2-like (head dim 80, rotary 0.4).
    "tiny-phi-1_5": PhiConfig(vocab_size=512, hidden_size=128, n_layers=2, n_heads=4, head_dim=32,
                              rotary_dim=16, intermediate_size=512, max_position_embeddings=128),
    "tiny-phi-2": PhiConfig(vocab_size=512, hidden_size=160, n_layers=2, n_heads=2, head_dim=80,
                            rotary_dim=32, intermediate_size=640, max_position_embeddings=128),
    # The demo model the runtime ships (train/README.md): about 7 M parameters, 4096-token BPE.
    "demo": PhiConfig(vocab_size=4096, hidden_size=256, n_layers=6, n_heads=8,
                      head_dim=32,  # 256 / 8
                      rotary_dim=16,  # partial factor 0.5 as phi-1.5
                      intermediate_size=1024, max_position_embeddings=512,
                      bos_token_id=0, eos_token_id=0),
    **PHI3_PRESETS,  # the phi-3 family (train/config_phi3.py)
}


def preset(name: str) -> PhiConfig | Phi3Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


# Phi models that are not these architectures: refused by name, with what they are.
_OTHER_ARCHITECTURES = {
    "phi3small": "Phi-3-small (Phi3SmallForCausalLM: block-sparse attention, tiktoken vocabulary)",
    "phimoe": "Phi-3.5-MoE (PhiMoEForCausalLM: mixture of experts)",
    "phi4flash": "Phi-4-mini-flash (Phi4FlashForCausalLM: SambaY hybrid with Mamba layers)",
    "phi3_v": "Phi-3-vision / Phi-3.5-vision (Phi3VForCausalLM: multimodal)",
    "phi4mm": "Phi-4-multimodal (Phi4MMForCausalLM: vision and speech)",
    "phi4_multimodal": "Phi-4-multimodal (Phi4MultimodalForCausalLM: vision and speech)",
}
_OTHER_CLASSES = {"Phi3SmallForCausalLM": "phi3small", "PhiMoEForCausalLM": "phimoe",
                  "Phi4FlashForCausalLM": "phi4flash", "Phi3VForCausalLM": "phi3_v", "Phi4MMForCausalLM": "phi4mm",
                  "Phi4MultimodalForCausalLM": "phi4_multimodal"}


def config_from_hf_dict(d: dict[str, Any]) -> PhiConfig | Phi3Config:
    """The config of any supported architecture from a config.json dict, by its model_type."""
    model_type = d.get("model_type")
    other = model_type if model_type in _OTHER_ARCHITECTURES else next(
        (_OTHER_CLASSES[a] for a in d.get("architectures") or [] if a in _OTHER_CLASSES), None)
    if other is not None:
        raise ValueError(f"config.json describes {_OTHER_ARCHITECTURES[other]}, which is not an architecture this "
                         f"project runs; supported are phi-1, phi-1.5, phi-2 (model_type phi) and the Phi3ForCausalLM "
                         f"family (Phi-3-mini, Phi-3.5-mini, Phi-4-mini, Phi-3-medium, Phi-4)")
    if model_type == PHI3:
        return _read(Phi3Config.from_hf_dict, d)
    if model_type not in _CONFIG_READERS:
        raise ValueError(f"config.json has model_type {model_type!r}; expected one of "
                         f"{sorted([*_CONFIG_READERS, PHI3])} (a phi checkpoint)")
    return PhiConfig.from_hf_dict(d)


def _read_json(path: Path) -> dict[str, Any]:
    """A config.json as a dict, with a missing, malformed or non-object file as one clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a checkpoint folder needs the config.json that describes the "
                                f"model")
    try:
        d = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} is not valid JSON ({e}); restore it from the checkpoint's source") from None
    if not isinstance(d, dict):
        raise ValueError(f"{path} holds a JSON {type(d).__name__}, not an object; restore it from the checkpoint's "
                         f"source")
    return d


def load_config(path: Path) -> PhiConfig | Phi3Config:
    """Reads a checkpoint's config.json, whichever supported architecture it describes."""
    return config_from_hf_dict(_read_json(path))
