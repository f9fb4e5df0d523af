"""Weight layouts of published phi checkpoints, mapped to transformers' PhiForCausalLM names.

- "hf": transformers' PhiForCausalLM (model.embed_tokens, model.layers.N.self_attn.{q,k,v}_proj, ...).
- "phi-msft": the remote-code PhiForCausalLM of the first phi-1.5 / phi-2 uploads (transformer.embd.wte,
  transformer.h.N.{ln, mixer.Wqkv, mixer.out_proj, mlp.fc1, mlp.fc2}, lm_head.{ln, linear}).
- "mixformer": MixFormerSequential of the first phi-1 / phi-1.5 uploads (layers.0.wte,
  layers.1..L.{ln, mixer.Wqkv, ...}, layers.L+1.{ln, linear}).

Wqkv stacks the q, k and v rows in that order. The layout is detected from tensor names only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .config import PhiConfig

HF, MSFT, MIXFORMER = "hf", "phi-msft", "mixformer"
LAYOUTS = (HF, MSFT, MIXFORMER)

# Stored tensors that are buffers, not parameters; they are recomputed from the config.
_IGNORED = re.compile(r".*(rotary_emb\.inv_freq|\.masked_bias|\.attn\.bias)$")

# Per-block parameter names: HF suffix <-> suffix shared by both older layouts.
_BLOCK = {
    "input_layernorm": "ln",
    "self_attn.dense": "mixer.out_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


@dataclass(frozen=True)
class Piece:
    """One HF tensor taken from rows [start, stop) of a stored tensor (the whole tensor when start is None)."""

    hf_name: str
    start: int | None = None
    stop: int | None = None


def detect_layout(names: Iterable[str]) -> str:
    names = set(names)
    if any(n.startswith(("model.embed_tokens.", "model.layers.")) for n in names):
        return HF
    if "transformer.embd.wte.weight" in names:
        return MSFT
    if "layers.0.wte.weight" in names:
        return MIXFORMER
    sample = ", ".join(sorted(names)[:4]) or "no tensors at all"
    raise ValueError(f"unknown checkpoint layout: tensor names ({sample}, ...) match none of transformers' "
                     f"PhiForCausalLM, phi-msft or MixFormerSequential; is this a phi checkpoint?")


def _prefixes(layout: str, config: PhiConfig) -> dict[str, str]:
    """Maps each older-layout name prefix to its HF prefix."""
    L = config.n_layers
    if layout == MSFT:
        prefixes = {"transformer.embd.wte.": "model.embed_tokens.", "lm_head.ln.": "model.final_layernorm.",
                    "lm_head.linear.": "lm_head."}
        prefixes.update({f"transformer.h.{i}.": f"model.layers.{i}." for i in range(L)})
    else:
        prefixes = {"layers.0.wte.": "model.embed_tokens.", f"layers.{L + 1}.ln.": "model.final_layernorm.",
                    f"layers.{L + 1}.linear.": "lm_head."}
        prefixes.update({f"layers.{i + 1}.": f"model.layers.{i}." for i in range(L)})
    return prefixes


_LAYER_INDEX = {MSFT: re.compile(r"^transformer\.h\.(\d+)\."), MIXFORMER: re.compile(r"^layers\.(\d+)\.")}
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def stored_layers(layout: str, names) -> int:
    """How many transformer blocks the stored tensor names hold (without knowing config.json's count)."""
    pattern = _LAYER_INDEX.get(layout, _HF_LAYER)
    found = {int(m.group(1)) for name in names if (m := pattern.match(name))}
    if not found:
        return 0
    if layout == MIXFORMER:  # layers.0 is the embedding, layers.1..L the blocks, layers.L+1 the head
        return max(0, max(found) - 1)
    return max(found) + 1


def map_name(layout: str, name: str, config: PhiConfig) -> list[Piece] | None:
    """The HF tensors one stored tensor becomes; None for an ignored buffer. Unknown names raise ValueError."""
    if _IGNORED.match(name):
        return None
    if layout == HF:
        return [Piece(name)]
    prefixes = _prefixes(layout, config)
    for old, new in sorted(prefixes.items(), key=lambda kv: -len(kv[0])):
        if not name.startswith(old):
            continue
        rest = name[len(old):]
        if not new.startswith("model.layers."):
            return [Piece(new + rest)]
        m = re.fullmatch(r"(.+)\.(weight|bias)", rest)
        if m and m.group(1) == "mixer.Wqkv":
            q = config.n_heads * config.head_dim
            kv = config.kv_heads * config.head_dim
            bounds = [(0, q), (q, q + kv), (q + kv, q + 2 * kv)]
            return [Piece(f"{new}{hf}.{m.group(2)}", a, b) for hf, (a, b) in zip(_QKV, bounds)]
        for hf, stored in _BLOCK.items():
            if m and m.group(1) == stored:
                return [Piece(f"{new}{hf}.{m.group(2)}")]
        break
    raise ValueError(f"tensor {name!r} is not part of a phi model in the {layout} layout; the checkpoint "
                     f"may be damaged or of another architecture")


def hf_to_layout(state: dict, layout: str, config: PhiConfig) -> dict:
    """Rewrites an HF-named state dict in an older layout (q, k, v rows stacked into Wqkv)."""
    if layout == HF:
        return dict(state)
    import torch  # only this direction needs tensors

    prefixes = _prefixes(layout, config)
    inverse = {new: old for old, new in prefixes.items()}
    out = {}
    for name, tensor in state.items():
        for hf_prefix in sorted(inverse, key=len, reverse=True):
            if name.startswith(hf_prefix):
                rest = name[len(hf_prefix):]
                break
        else:
            raise ValueError(f"tensor {name!r} is not an HF phi parameter")
        old = inverse[hf_prefix]
        if not hf_prefix.startswith("model.layers."):
            out[old + rest] = tensor
            continue
        module, kind = rest.rsplit(".", 1)
        if module in _QKV:
            if module == _QKV[0]:
                parts = [state[f"{hf_prefix}{m}.{kind}"] for m in _QKV]
                out[f"{old}mixer.Wqkv.{kind}"] = torch.cat(parts, dim=0)
            continue
        out[f"{old}{_BLOCK[module]}.{kind}"] = tensor
    return out
