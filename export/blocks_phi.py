"""phi-1, phi-1.5 and phi-2 blocks (parallel attention and MLP over one LayerNorm) for export/graph.py.

Per block (x is the residual stream, s the previous block's attention + MLP sum, b its combined bias):

    x, h = SkipLayerNormalization(s, x, gamma, beta, b)       # x += s + b; h = LayerNorm(x)
    qkv  = MatMulNBits(h, Wqkv) + bqkv                        # one packed projection (B, S, (H + 2 Hkv) D)
    a    = GroupQueryAttention(qkv, past, seqlens, cos, sin)  # rotary inside, cache shared in place
    m    = MatMulNBits(FastGelu(MatMulNBits(h, W1), b1), W2)  # tanh-approximated GELU
    s    = a W_dense + m;  b = b_dense + b2

The first block uses LayerNormalization (no residual yet); the final LayerNorm is one more
SkipLayerNormalization, on the last position only when the package returns last-position logits.
"""

from __future__ import annotations

import numpy as np

from .compat import MS
from .graph import last_positions


def phi_blocks(g, config, contract, shared, x: str, tensors, progress) -> tuple[str, np.ndarray]:
    """Returns (final normed hidden state, lm_head bias)."""
    bits = g.opt.bits
    s = b = None
    kv = iter(contract.kv_names())
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        gamma = g.float_const(f"{p}ln.weight", tensors(p + "input_layernorm.weight"))
        beta = g.float_const(f"{p}ln.bias", tensors(p + "input_layernorm.bias"))
        if s is None:
            h = g.node("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=config.layer_norm_eps)[0]
        else:
            h, _, _, x = g.node("SkipLayerNormalization", [s, x, gamma, beta, b],
                                [f"{p}ln_out", "", "", f"{p}residual"], domain=MS, epsilon=config.layer_norm_eps)
        qkv_w = np.concatenate([tensors(p + f"self_attn.{n}_proj.weight") for n in "qkv"])
        qkv_b = np.concatenate([tensors(p + f"self_attn.{n}_proj.bias") for n in "qkv"])
        qkv = g.linear(h, f"{p}qkv", qkv_w, qkv_b, bits)
        del qkv_w
        attn = shared.attention(g, config, p, qkv, kv)
        a = g.linear(attn, f"{p}dense", tensors(p + "self_attn.dense.weight"), None, bits)
        f = g.linear(h, f"{p}fc1", tensors(p + "mlp.fc1.weight"), None, bits)
        f = g.node("FastGelu", [f, g.float_const(f"{p}fc1.bias", tensors(p + "mlp.fc1.bias"))], domain=MS)[0]
        m = g.linear(f, f"{p}fc2", tensors(p + "mlp.fc2.weight"), None, bits)
        s = g.node("Add", [a, m])[0]
        b = g.float_const(f"{p}out.bias", tensors(p + "self_attn.dense.bias") + tensors(p + "mlp.fc2.bias"))
        progress()
    if contract.logits == "last":  # only the last position's logits are needed to continue the text
        s, x = last_positions(g, contract, s, x)
    gamma = g.float_const("final_ln.weight", tensors("model.final_layernorm.weight"))
    beta = g.float_const("final_ln.bias", tensors("model.final_layernorm.bias"))
    h = g.node("SkipLayerNormalization", [s, x, gamma, beta, b], ["final_ln_out"], domain=MS,
               epsilon=config.layer_norm_eps)[0]
    return h, tensors("lm_head.bias")
