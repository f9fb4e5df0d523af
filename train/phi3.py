"""The phi-3 decoder in PyTorch (Phi-3-mini, Phi-3.5-mini, Phi-4-mini, Phi-3-medium, Phi-4), with parameter
names identical to transformers' Phi3ForCausalLM. Each block is sequential and pre-norm:

    x -> RMSNorm -> qkv_proj -> attention (rotary, GQA, sliding window) -> o_proj --+--> x'
    x'-> RMSNorm -> gate_up_proj -> silu(gate) * up -> down_proj -------------------+--> x''

No biases anywhere; a final RMSNorm and lm_head (tied to the embedding on Phi-4-mini). The rotary table is
LongRoPE's short or long one (train/config_phi3.py), chosen per forward call by the sequence length it
reaches; a cached sequence that crosses the switch is recomputed with the long table, as transformers'
generate does. The KV cache and attention are shared with phi (train/model.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .config_phi3 import Phi3Config
from .model import CausalLM, KVCache, _init_weights, apply_rotary, cache_start, run_layers


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # in fp32 whatever x's dtype
        return self.weight * h.to(x.dtype)


def rotary_tables(config: Phi3Config, long: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_position_embeddings, rotary_dim) with LongRoPE's short or long factors and scaling."""
    dim = config.rotary_dim
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    scale = 1.0
    if config.longrope is None:
        inv_freq = 1.0 / (config.rope_base ** exponent)
    else:
        factors = config.longrope.long_factor if long else config.longrope.short_factor
        inv_freq = 1.0 / (torch.tensor(factors, dtype=torch.float32) * config.rope_base ** exponent)
        scale = config.longrope.scaling(config.max_position_embeddings)
    freqs = torch.outer(torch.arange(config.max_position_embeddings, dtype=torch.float32), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * scale, emb.sin() * scale


class Phi3Rotary(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.switch = config.longrope.original_max_position_embeddings if config.longrope else None
        cos, sin = rotary_tables(config, long=False)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        if self.switch is not None:
            cos, sin = rotary_tables(config, long=True)
            self.register_buffer("cos_long", cos, persistent=False)
            self.register_buffer("sin_long", sin, persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if end > self.cos.shape[0]:
            raise ValueError(f"sequence reaches position {end} but the model's context is {self.cos.shape[0]} "
                             f"positions; shorten the input")
        if self.switch is not None and end > self.switch:  # this call reaches past the original context
            return self.cos_long[start:end], self.sin_long[start:end]
        return self.cos[start:end], self.sin[start:end]


class Phi3Attention(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.window = config.window
        out = (config.n_heads + 2 * config.kv_heads) * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, out, bias=False)
        self.o_proj = nn.Linear(config.n_heads * config.head_dim, config.hidden_size, bias=False)
        self.backend = "auto"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, hidden)
        q_size, kv_size = self.n_heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, past + T, D)
        out = attention(q, k, v, self.backend, self.window)  # (B, H, T, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class Phi3MLP(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(up * F.silu(gate))


class Phi3DecoderLayer(nn.Module):
    def __init__(self, config: Phi3Config, index: int):
        super().__init__()
        self.index = index
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Phi3Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = Phi3MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, self.index, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Phi3Model(nn.Module):
    def __init__(self, config: Phi3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Phi3DecoderLayer(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Phi3Rotary(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start, t = cache_start(cache, input_ids.shape[1]), input_ids.shape[1]
        switch = self.rotary.switch
        if cache is not None and switch is not None and start <= switch < start + t and start > 0:
            # The sequence crosses LongRoPE's switch: the cached keys were rotated with the short factors, so
            # the whole sequence is computed again with the long ones (transformers' generate does the same).
            new = t
            input_ids = torch.cat([cache.ids[:, :start], input_ids], dim=1)
            start, t, cache.length = 0, start + t, 0
            return self._forward(input_ids, cache, start, t)[:, -new:]
        return self._forward(input_ids, cache, start, t)

    def _forward(self, input_ids: torch.Tensor, cache: KVCache | None, start: int, t: int) -> torch.Tensor:
        if cache is not None:
            cache.ids[:, start:start + t] = input_ids
        cos, sin = self.rotary(start, t)
        return self.norm(run_layers(self, self.embed_tokens(input_ids), cos, sin, cache))  # (B, T, hidden)


class Phi3ForCausalLM(CausalLM):
    """model(input_ids (B, T)) -> logits (B, T, vocab). Pass a KVCache to decode incrementally."""

    def __init__(self, config: Phi3Config):
        super().__init__()
        self.config = config
        self.model = Phi3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(_init_weights)


def expected_shapes(config: Phi3Config) -> dict[str, tuple[int, ...]]:
    h, f, v, d = config.hidden_size, config.intermediate_size, config.vocab_size, config.head_dim
    qkv = (config.n_heads + 2 * config.kv_heads) * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        shapes.update({f"{p}self_attn.qkv_proj.weight": (qkv, h), f"{p}self_attn.o_proj.weight": (h, config.n_heads * d),
                       f"{p}mlp.gate_up_proj.weight": (2 * f, h), f"{p}mlp.down_proj.weight": (h, f),
                       f"{p}input_layernorm.weight": (h,), f"{p}post_attention_layernorm.weight": (h,)})
    shapes["model.norm.weight"] = (h,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, h)
    return shapes
