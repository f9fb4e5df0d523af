"""Phi-3 family blocks (sequential, pre-norm RMSNorm, SiLU-gated MLP, no biases) for export/graph.py.

Per block (x is the residual stream, m the previous block's MLP output):

    x, h  = SkipSimplifiedLayerNormalization(m, x, w_in)      # x += m; h = RMSNorm(x)
    qkv   = MatMulNBits(h, Wqkv)                              # packed (B, S, (H + 2 Hkv) D)
    a     = GroupQueryAttention(qkv, ...)                     # GQA, partial rotary, LongRoPE tables, window
    x, h2 = SkipSimplifiedLayerNormalization(a Wo, x, w_post) # x += attention; h2 = RMSNorm(x)
    g, u  = Split(MatMulNBits(h2, Wgate_up))                  # packed gate and up
    m     = MatMulNBits(u * g * Sigmoid(g), Wdown)            # SiLU gate

The first block starts with SimplifiedLayerNormalization (no residual yet); the final RMSNorm is one more
SkipSimplifiedLayerNormalization, on the last position only for last-position packages.
"""

from __future__ import annotations

from .compat import MS
from .graph import last_positions


def phi3_blocks(g, config, contract, shared, x: str, tensors, progress) -> tuple[str, None]:
    """Returns (final normed hidden state, no lm_head bias)."""
    bits = g.opt.bits
    eps = config.rms_norm_eps
    m = None
    kv = iter(contract.kv_names())
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        w_in = g.float_const(f"{p}input_norm.weight", tensors(p + "input_layernorm.weight"))
        if m is None:
            h = g.node("SimplifiedLayerNormalization", [x, w_in], axis=-1, epsilon=eps)[0]
        else:
            h, _, _, x = g.node("SkipSimplifiedLayerNormalization", [m, x, w_in],
                                [f"{p}norm_out", "", "", f"{p}residual"], domain=MS, epsilon=eps)
        qkv = g.linear(h, f"{p}qkv", tensors(p + "self_attn.qkv_proj.weight"), None, bits)
        attn = shared.attention(g, config, p, qkv, kv)
        a = g.linear(attn, f"{p}o_proj", tensors(p + "self_attn.o_proj.weight"), None, bits)
        w_post = g.float_const(f"{p}post_norm.weight", tensors(p + "post_attention_layernorm.weight"))
        h2, _, _, x = g.node("SkipSimplifiedLayerNormalization", [a, x, w_post],
                             [f"{p}post_norm_out", "", "", f"{p}attn_residual"], domain=MS, epsilon=eps)
        gate_up = g.linear(h2, f"{p}gate_up", tensors(p + "mlp.gate_up_proj.weight"), None, bits)
        gate, up = g.node("Split", [gate_up], 2, axis=-1)  # two equal halves
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate])[0]])[0]
        m = g.linear(g.node("Mul", [up, silu])[0], f"{p}down", tensors(p + "mlp.down_proj.weight"), None, bits)
        progress()
    if contract.logits == "last":  # only the last position's logits are needed to continue the text
        m, x = last_positions(g, contract, m, x)
    w = g.float_const("final_norm.weight", tensors("model.norm.weight"))
    h = g.node("SkipSimplifiedLayerNormalization", [m, x, w], ["final_norm_out"], domain=MS, epsilon=eps)[0]
    return h, None
