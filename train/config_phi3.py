"""The phi-3 family's shape (transformers' Phi3ForCausalLM, model_type "phi3") as one typed config, its
presets, and config.json both ways. Like train/config.py, only the model's shape lives here; no torch.

Phi-3-mini (4k, 128k), Phi-3.5-mini, Phi-4-mini, Phi-3-medium and Phi-4 all share one block (sequential,
pre-norm RMSNorm, packed qkv_proj, SiLU-gated gate_up_proj, no biases) and differ in shape, grouped-query
attention, partial rotary, tied embeddings, sliding window and LongRoPE (../shared/PHI-3.md).

LongRoPE (the 128k models): rotary inverse frequencies divided per frequency by `short_factor` while a step's
sequence (cached + new positions) is at most `original_max_position_embeddings` long, by `long_factor` once
it is longer, and cos/sin multiplied by an attention factor, exactly as transformers computes them:

    inv_freq = 1 / (factor_i * base ** (2i / rotary_dim))
    attention_factor = sqrt(1 + ln(max_position / original_max) / ln(original_max))   (unless given)

When a cached sequence first grows past the switch, the keys already cached were rotated with the short
factors; like transformers' generate, the model then computes the whole sequence again with the long ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_TYPE = "phi3"
# The longest context a config may declare: 16x the longest phi (131072). The rotary tables are built for every
# position (in training and in the package), so a config.json with 10**12 is refused, not allocated.
MAX_POSITIONS = 1 << 21
_SILU = ("silu", "swish")


def positive_int(d: dict[str, Any], key: str) -> int:
    """config.json's `key` as a positive integer, refused by name otherwise (before anything divides by it)."""
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json's {key} must be a positive integer, got {value!r}; restore it from the "
                         f"checkpoint's source")
    return value


@dataclass(frozen=True)
class LongRope:
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    factor: float | None = None  # rope "factor"; None: max_position_embeddings / original (transformers' rule)
    attention_factor: float | None = None  # None: derived from the factor

    def __post_init__(self) -> None:
        if len(self.short_factor) != len(self.long_factor) or not self.short_factor:
            raise ValueError(f"LongRoPE short_factor ({len(self.short_factor)}) and long_factor "
                             f"({len(self.long_factor)}) must be non-empty and of one length (rotary_dim / 2)")
        if not all(isinstance(x, (int, float)) and x > 0 and math.isfinite(x)
                   for x in self.short_factor + self.long_factor):
            raise ValueError("LongRoPE factors must be finite numbers > 0")
        if not isinstance(self.original_max_position_embeddings, int) or self.original_max_position_embeddings < 2:
            raise ValueError(f"original_max_position_embeddings must be an integer >= 2, got "
                             f"{self.original_max_position_embeddings!r}")

    def scaling(self, max_position_embeddings: int) -> float:
        """The factor cos and sin are multiplied by."""
        if self.attention_factor is not None:
            return float(self.attention_factor)
        factor = self.factor if self.factor is not None else \
            max_position_embeddings / self.original_max_position_embeddings
        if factor <= 1.0:
            return 1.0
        return math.sqrt(1 + math.log(factor) / math.log(self.original_max_position_embeddings))


@dataclass(frozen=True)
class Phi3Config:
    """Shape of a phi-3 decoder. Defaults are Phi-3-mini-4k's."""

    vocab_size: int = 32064
    hidden_size: int = 3072
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 32
    head_dim: int = 96
    rotary_dim: int = 96  # rotary embedding on the first rotary_dim channels of each head
    intermediate_size: int = 8192
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_base: float = 10000.0
    longrope: LongRope | None = None
    sliding_window: int | None = None  # a query sees the keys of its last `sliding_window` positions
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 32000
    pad_token_id: int | None = 32000

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Phi3Config.{name} must be a positive integer, got {value!r}")
        if self.max_position_embeddings > MAX_POSITIONS:
            raise ValueError(f"Phi3Config.max_position_embeddings must be at most {MAX_POSITIONS}, got "
                             f"{self.max_position_embeddings}")
        if self.n_heads * self.head_dim != self.hidden_size:
            raise ValueError(f"Phi3Config.head_dim: n_heads ({self.n_heads}) x head_dim ({self.head_dim}) must "
                             f"equal hidden_size ({self.hidden_size})")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"Phi3Config.n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if not isinstance(self.rotary_dim, int) or not 0 < self.rotary_dim <= self.head_dim or self.rotary_dim % 2:
            raise ValueError(f"Phi3Config.rotary_dim must be an even integer in 2..head_dim ({self.head_dim}), "
                             f"got {self.rotary_dim!r}")
        if not (self.rms_norm_eps > 0 and math.isfinite(self.rms_norm_eps)):
            raise ValueError(f"Phi3Config.rms_norm_eps must be positive, got {self.rms_norm_eps!r}")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ValueError(f"Phi3Config.rope_base must be > 1, got {self.rope_base!r}")
        if self.longrope is not None and len(self.longrope.short_factor) != self.rotary_dim // 2:
            raise ValueError(f"LongRoPE factors have {len(self.longrope.short_factor)} entries but rotary_dim "
                             f"{self.rotary_dim} needs {self.rotary_dim // 2}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"Phi3Config.sliding_window must be a positive integer or null, got "
                             f"{self.sliding_window!r}")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ValueError(f"Phi3Config.{name} ({value}) is outside the vocabulary (0..{self.vocab_size - 1})")

    model_type = MODEL_TYPE

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads

    @property
    def partial_rotary_factor(self) -> float:
        return self.rotary_dim / self.head_dim

    @property
    def window(self) -> int | None:
        """The attention window when it is shorter than the context, else None (full causal attention)."""
        return self.sliding_window if self.sliding_window and self.sliding_window < self.max_position_embeddings \
            else None

    def num_parameters(self) -> int:
        h, f, v, d = self.hidden_size, self.intermediate_size, self.vocab_size, self.head_dim
        attn = h * (self.n_heads + 2 * self.n_kv_heads) * d + self.n_heads * d * h
        per_layer = attn + 3 * h * f + 2 * h
        return v * h * (1 if self.tie_word_embeddings else 2) + self.n_layers * per_layer + h

    def replace(self, **changes: Any) -> Phi3Config:
        return dataclasses.replace(self, **changes)

    def to_hf_dict(self) -> dict[str, Any]:
        factor = self.partial_rotary_factor
        assert int(self.head_dim * factor) == self.rotary_dim, (self.head_dim, factor)
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_base, "partial_rotary_factor": factor}
        d: dict[str, Any] = {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": MODEL_TYPE,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "original_max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_base,
            "partial_rotary_factor": factor,
            "sliding_window": self.sliding_window,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0, "embd_pdrop": 0.0, "resid_pdrop": 0.0,
        }
        if self.longrope is not None:
            lr = self.longrope
            rope.update(rope_type="longrope", short_factor=list(lr.short_factor), long_factor=list(lr.long_factor),
                        original_max_position_embeddings=lr.original_max_position_embeddings)
            for key in ("factor", "attention_factor"):
                if getattr(lr, key) is not None:
                    rope[key] = getattr(lr, key)
            d["original_max_position_embeddings"] = lr.original_max_position_embeddings
            # published config.json files (and transformers 4.x) read rope_scaling
            d["rope_scaling"] = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
            d["rope_scaling"]["type"] = "longrope"
        d["rope_parameters"] = rope  # transformers >= 5
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> Phi3Config:
        act = d.get("hidden_act", "silu")
        if act not in _SILU:
            raise ValueError(f"config.json has activation {act!r}; phi-3 gates its MLP with SiLU")
        hidden, heads = positive_int(d, "hidden_size"), positive_int(d, "num_attention_heads")
        head_dim = d.get("head_dim") or hidden // heads
        rope = d.get("rope_parameters") or {}
        scaling = d.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type")) or rope.get("rope_type", rope.get("type")) or "default"
        factor = rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
        base = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        longrope = None
        if kind in ("longrope", "su", "yarn"):  # "su" and "yarn" are the first 128k releases' names for it
            source = scaling if "short_factor" in scaling else rope
            if "short_factor" not in source or "long_factor" not in source:
                if kind == "yarn":
                    raise ValueError("config.json's rope type 'yarn' has no short_factor and long_factor lists, so it "
                                     "is YaRN (factor, beta_fast, beta_slow), which no phi-3 model uses and this "
                                     "project does not implement (transformers reads 'yarn' as LongRoPE for phi-3)")
                raise ValueError(f"config.json's rope type {kind!r} (LongRoPE) lacks short_factor or long_factor; "
                                 f"restore the checkpoint's rope_scaling")
            original = source.get("original_max_position_embeddings", d.get("original_max_position_embeddings"))
            if isinstance(original, bool) or not isinstance(original, int):
                raise ValueError(f"config.json's LongRoPE needs original_max_position_embeddings (an integer), got "
                                 f"{original!r}; restore the checkpoint's config")
            longrope = LongRope(tuple(float(x) for x in source["short_factor"]),
                                tuple(float(x) for x in source["long_factor"]), int(original),
                                source.get("factor"), source.get("attention_factor"))
        elif kind != "default":
            raise ValueError(f"config.json asks for rope type {kind!r}; phi-3 uses the default rotary embedding or "
                             f"LongRoPE ('longrope', or its first names 'su' and 'yarn'), as transformers' Phi3Config "
                             f"accepts")
        eos = d.get("eos_token_id")
        if isinstance(eos, list):  # generation ids: the first is the end-of-text token
            eos = eos[0] if eos else None
        return cls(
            vocab_size=d["vocab_size"], hidden_size=hidden, n_layers=d["num_hidden_layers"], n_heads=heads,
            n_kv_heads=d.get("num_key_value_heads") or heads, head_dim=head_dim,
            rotary_dim=int(head_dim * factor), intermediate_size=d["intermediate_size"],
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            rms_norm_eps=d.get("rms_norm_eps", 1e-5), rope_base=base, longrope=longrope,
            sliding_window=d.get("sliding_window"), tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=eos, pad_token_id=d.get("pad_token_id"),
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2) + "\n")


def _ramp(n: int, start: float, step: float) -> tuple[float, ...]:
    return tuple(round(start + step * i, 4) for i in range(n))


def _placeholder_longrope(rotary_dim: int, original: int) -> LongRope:
    # The published factor lists come with each checkpoint's config.json; these stand in for random models.
    return LongRope(_ramp(rotary_dim // 2, 1.0, 0.0), _ramp(rotary_dim // 2, 1.0, 0.5), original)


_MINI = dict(vocab_size=32064,  # Llama 2's 32000 pieces + added tokens, padded
             hidden_size=3072, n_layers=32, n_heads=32, n_kv_heads=32, head_dim=96,  # 3072 / 32
             rotary_dim=96, intermediate_size=8192, rms_norm_eps=1e-5, rope_base=10000.0,
             bos_token_id=1, eos_token_id=32000, pad_token_id=32000)  # <s>, <|endoftext|>
_MEDIUM = dict(vocab_size=32064, hidden_size=5120, n_layers=40, n_heads=40, n_kv_heads=10,
               head_dim=128,  # 5120 / 40
               rotary_dim=128, intermediate_size=17920, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000,
               pad_token_id=32000)

PRESETS: dict[str, Phi3Config] = {
    # Phi-3-mini-4k (arXiv 2404.14219; ../shared/PHI-3.md): 3.8 B, sliding window 2047.
    "phi-3-mini-4k": Phi3Config(**_MINI, max_position_embeddings=4096, sliding_window=2047),
    # Phi-3-mini-128k and Phi-3.5-mini: the same shape with LongRoPE to 131072 (original 4096).
    "phi-3-mini-128k": Phi3Config(**_MINI, max_position_embeddings=131072,
                                  longrope=_placeholder_longrope(96, 4096)),
    "phi-3.5-mini": Phi3Config(**_MINI, max_position_embeddings=131072, longrope=_placeholder_longrope(96, 4096)),
    # Phi-4-mini: 24 heads / 8 kv heads of 128, rotary 96 = 0.75 x 128, tied embeddings, 200k vocabulary.
    "phi-4-mini": Phi3Config(vocab_size=200064, hidden_size=3072, n_layers=32, n_heads=24, n_kv_heads=8,
                             head_dim=128,  # 3072 / 24
                             rotary_dim=96, intermediate_size=8192, max_position_embeddings=131072,
                             longrope=_placeholder_longrope(96, 4096), tie_word_embeddings=True,
                             bos_token_id=199999, eos_token_id=199999, pad_token_id=199999),  # <|endoftext|>
    # Phi-3-medium-4k: 14 B, 40 heads / 10 kv heads.
    "phi-3-medium-4k": Phi3Config(**_MEDIUM, max_position_embeddings=4096),
    # Phi-4 (14 B): the medium shape, 100k vocabulary, 16k context, theta 250000.
    "phi-4": Phi3Config(**{**_MEDIUM, "vocab_size": 100352, "bos_token_id": 100257, "eos_token_id": 100257,
                           "pad_token_id": 100257}, max_position_embeddings=16384, rope_base=250000.0),
    # The demo model's size (train/make_demo.sh) with Phi-4-mini's features: GQA (4 heads / 2 kv heads of 64), rotary
    # 48 = 0.75 x 64, SwiGLU, RMSNorm, tied embeddings. Trained on the demo corpus to measure phi-3-family
    # quantization choices (benchmarks/RESULTS.md).
    "demo-phi-4-mini": Phi3Config(vocab_size=4096, hidden_size=256, n_layers=6, n_heads=4, n_kv_heads=2, head_dim=64,
                                  rotary_dim=48, intermediate_size=768, max_position_embeddings=512,
                                  tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0),
    # Tiny shapes for tests: phi-3-like (MHA, full rotary, LongRoPE switching at 32, sliding window 48) and
    # phi-4-mini-like (GQA 2/1, rotary 48 = 0.75 x 64, tied, LongRoPE).
    "tiny-phi-3": Phi3Config(vocab_size=512, hidden_size=128, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=32,
                             rotary_dim=32, intermediate_size=256, max_position_embeddings=128,
                             longrope=LongRope(_ramp(16, 1.0, 0.05), _ramp(16, 1.5, 0.4), 32), sliding_window=48,
                             bos_token_id=1, eos_token_id=2, pad_token_id=2),
    "tiny-phi-4-mini": Phi3Config(vocab_size=512, hidden_size=128, n_layers=2, n_heads=2, n_kv_heads=1,
                                  head_dim=64, rotary_dim=48, intermediate_size=256, max_position_embeddings=128,
                                  longrope=LongRope(_ramp(24, 1.0, 0.02), _ramp(24, 2.0, 0.3), 32),
                                  tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0),
}
