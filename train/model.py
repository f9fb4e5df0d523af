"""The phi decoder in PyTorch, with parameter names identical to transformers' PhiForCausalLM.

Each block feeds one LayerNorm into attention and the MLP in parallel:

    x -> LayerNorm -> attention --+
                 \\-> MLP ---------+--> + x

Attention applies a rotary embedding (rotate-half, not interleaved) to the first `rotary_dim` channels of
each head; the MLP is fc1 -> GELU (tanh approximation) -> fc2. A final LayerNorm and an lm_head with bias
produce the logits. The optional KVCache makes this module the reference for cached decoding that the ONNX
export and the runtime are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attention
from .config import PhiConfig


class KVCache:
    """Preallocated keys and values for every layer, layout (B, kv_heads, max_len, head_dim).

    `length` positions are filled; a forward pass writes its new positions at [length, length + T) and then
    advances `length`. Nothing is concatenated or reallocated while decoding.
    """

    def __init__(self, config: PhiConfig, batch: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if max_len > config.max_position_embeddings:
            raise ValueError(f"KV cache of {max_len} positions exceeds the model's context "
                             f"({config.max_position_embeddings}); use a smaller max_len")
        shape = (batch, config.kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        self.ids = torch.zeros((batch, max_len), dtype=torch.long, device=device)  # the tokens cached
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores k, v (B, Hkv, T, D) after the filled positions; returns the keys and values so far."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class RotaryEmbedding(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        dim = config.rotary_dim
        inv_freq = 1.0 / (config.rope_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        inv_freq = inv_freq / config.rope_linear_factor  # rope "linear": positions interpolated (1.0: none)
        freqs = torch.outer(torch.arange(config.max_position_embeddings, dtype=torch.float32), inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)  # (max_pos, rotary_dim)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + length
        if end > self.cos.shape[0]:
            raise ValueError(f"sequence reaches position {end} but the model's context is "
                             f"{self.cos.shape[0]} positions; shorten the input")
        return self.cos[start:end], self.sin[start:end]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, D); rotates the first cos.shape[-1] channels, passes the rest through."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x_rot = x_rot * cos.to(x.dtype) + _rotate_half(x_rot) * sin.to(x.dtype)
    return torch.cat([x_rot, x_pass], dim=-1)


class PhiAttention(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.n_heads, self.kv_heads, self.head_dim = config.n_heads, config.kv_heads, d
        self.q_proj = nn.Linear(h, config.n_heads * d)
        self.k_proj = nn.Linear(h, config.kv_heads * d)
        self.v_proj = nn.Linear(h, config.kv_heads * d)
        self.dense = nn.Linear(config.n_heads * d, h)
        self.backend = "auto"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layer: int,
                cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, hidden)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, past + T, D)
        out = attention(q, k, v, self.backend)  # (B, H, T, D)
        return self.dense(out.transpose(1, 2).reshape(b, t, -1))


class PhiMLP(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class PhiDecoderLayer(nn.Module):
    def __init__(self, config: PhiConfig, index: int):
        super().__init__()
        self.index = index
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = PhiAttention(config)
        self.mlp = PhiMLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None) -> torch.Tensor:
        h = self.input_layernorm(x)
        return x + self.self_attn(h, cos, sin, self.index, cache) + self.mlp(h)


class PhiModel(nn.Module):
    def __init__(self, config: PhiConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(PhiDecoderLayer(config, i) for i in range(config.n_layers))
        self.final_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.rotary = RotaryEmbedding(config)
        self.gradient_checkpointing = False

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        start, t = cache_start(cache, input_ids.shape[1]), input_ids.shape[1]
        cos, sin = self.rotary(start, t)
        x = run_layers(self, self.embed_tokens(input_ids), cos, sin, cache)  # (B, T, hidden)
        return self.final_layernorm(x)


def cache_start(cache: KVCache | None, t: int) -> int:
    """The position the next `t` tokens start at; refuses tokens the cache cannot hold."""
    start = cache.length if cache is not None else 0
    if cache is not None and start + t > cache.max_len:
        raise ValueError(f"{start} cached + {t} new tokens exceed the KV cache of {cache.max_len} positions")
    return start


def run_layers(model: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               cache: KVCache | None) -> torch.Tensor:
    """x (B, T, hidden) through model.layers (recomputed in the backward pass when gradient checkpointing is on);
    the cache then holds T more positions."""
    for layer in model.layers:
        if model.gradient_checkpointing and model.training:
            x = checkpoint(layer, x, cos, sin, cache, use_reentrant=False)
        else:
            x = layer(x, cos, sin, cache)
    if cache is not None:
        cache.length += x.shape[1]
    return x


class CausalLM(nn.Module):
    """What every architecture's *ForCausalLM shares: `config`, `model.layers[i].self_attn`, `model.rotary`."""

    config: PhiConfig

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        return self.lm_head(self.model(input_ids, cache))

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.config, batch, max_len or self.config.max_position_embeddings, p.dtype, p.device)

    def set_attention_backend(self, backend: str) -> None:
        for layer in self.model.layers:
            layer.self_attn.backend = backend

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        self.model.gradient_checkpointing = enabled


class PhiForCausalLM(CausalLM):
    """model(input_ids (B, T)) -> logits (B, T, vocab). Pass a KVCache to decode incrementally."""

    def __init__(self, config: PhiConfig):
        super().__init__()
        self.config = config
        self.model = PhiModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(_init_weights)


def _init_weights(module: nn.Module, std: float = 0.02) -> None:
    """The reference implementation's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@torch.no_grad()
def greedy_generate(model: CausalLM, input_ids: list[int], max_new_tokens: int,
                    eos_token_id: int | None = None) -> list[int]:
    """Reference greedy decoding through the KV cache: prefill, then one token at a time."""
    cache = model.new_cache(1, min(len(input_ids) + max_new_tokens, model.config.max_position_embeddings))
    device = next(model.parameters()).device
    logits = model(torch.tensor([input_ids], device=device), cache)
    out: list[int] = []
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token == eos_token_id or cache.length >= cache.max_len:
            break
        logits = model(torch.tensor([[token]], device=device), cache)
    return out
