"""The phi graph in ONNX Runtime's fused CPU operators, built layer by layer from streamed weights.

Per block (x is the residual stream, s the previous block's attention + MLP sum, b its combined bias):

    x, h = SkipLayerNormalization(s, x, gamma, beta, b)       # x += s + b; h = LayerNorm(x)
    qkv  = MatMulNBits(h, Wqkv) + bqkv                        # one packed projection (B, S, (H + 2 Hkv) D)
    a    = GroupQueryAttention(qkv, past, seqlens, cos, sin)  # rotary inside, cache shared in place
    m    = MatMulNBits(FastGelu(MatMulNBits(h, W1), b1), W2)  # tanh-approximated GELU
    s    = a W_dense + m;  b = b_dense + b2

The first block uses LayerNormalization (no residual yet); the final LayerNorm is one more
SkipLayerNormalization, on the last position only when the package returns last-position logits.
GroupQueryAttention accumulates Q.K^T in fp32 whatever the graph's float type.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from runtime.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, Contract

from .compat import MS
from .options import ExportOptions
from .quantize import quantize
from .weights import WeightWriter

_ONNX_DTYPE = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int64": TensorProto.INT64}


class GraphBuilder:
    def __init__(self, writer: WeightWriter, options: ExportOptions):
        self.w, self.opt = writer, options
        self.nodes: list = []
        self.fdtype = np.dtype(options.float_dtype)
        self.recipe: dict[str, str] = {}  # weight name -> how it is stored (manifest)

    def node(self, op: str, inputs: list[str], outputs: list[str] | int = 1, domain: str = "", **attrs) -> list[str]:
        name = f"{op}_{len(self.nodes)}"
        if isinstance(outputs, int):
            outputs = [f"{name}_out{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs

    def const(self, name: str, array: np.ndarray) -> str:
        return self.w.add(name, array)

    def float_const(self, name: str, array: np.ndarray) -> str:
        return self.w.add(name, np.asarray(array, dtype=np.float32).astype(self.fdtype))

    def linear(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None, bits: int | None) -> str:
        """x @ weight.T + bias, weight (N, K) as stored in PyTorch."""
        n, k = weight.shape
        if bits is None:
            out = self.node("MatMul", [x, self.float_const(f"{name}.weight_t", weight.T)])[0]
            self.recipe[name] = self.opt.float_dtype
            return self.node("Add", [out, self.float_const(f"{name}.bias", bias)])[0] if bias is not None else out
        method = self.opt.method_for(bits)
        q = quantize(weight, method, bits, self.opt.block_size, self.opt.symmetric)
        inputs = [x, self.const(f"{name}.qweight", q.packed), self.const(f"{name}.scales", q.scales)]
        inputs.append(self.const(f"{name}.zero_points", q.zero_points) if q.zero_points is not None else "")
        inputs.append("")  # g_idx
        if bias is not None:
            inputs.append(self.float_const(f"{name}.bias", bias))
        self.recipe[name] = f"int{bits} {method} block {self.opt.block_size}" + \
            (" symmetric" if self.opt.symmetric else "")
        return self.node("MatMulNBits", inputs, domain=MS, K=k, N=n, bits=bits, block_size=self.opt.block_size,
                         accuracy_level=self.opt.accuracy_level)[0]

    def embedding(self, ids: str, weight: np.ndarray, bits: int | None) -> str:
        if bits is None:
            self.recipe["embed_tokens"] = self.opt.float_dtype
            return self.node("Gather", [self.float_const("embed_tokens.weight", weight), ids])[0]
        # GatherBlockQuantized takes row-blocked data (V, H) quantized along H: the same packing as
        # MatMulNBits' (N, K) with N = V, K = H, so the same quantizer serves both.
        q = quantize(weight, "rtn", bits, self.opt.block_size, False)
        v, h = weight.shape
        data = q.packed.reshape(v, -1)
        zp = q.zero_points.reshape(v, -1)
        self.recipe["embed_tokens"] = f"int{bits} rtn block {self.opt.block_size}"
        out = self.node("GatherBlockQuantized", [self.const("embed_tokens.qweight", data), ids,
                                                 self.const("embed_tokens.scales", q.scales.astype(self.fdtype)),
                                                 self.const("embed_tokens.zero_points", zp)],
                        domain=MS, gather_axis=0, quantize_axis=1, block_size=self.opt.block_size, bits=bits)[0]
        return out


def rotary_cache(rotary_dim: int, base: float, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_length, rotary_dim / 2) for GroupQueryAttention's rotate-half rotary."""
    inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim))
    freqs = np.outer(np.arange(max_length, dtype=np.float64), inv_freq)
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def build_graph(config, contract: Contract, options: ExportOptions, max_length: int,
                tensors: Callable[[str], np.ndarray], writer: WeightWriter,
                progress: Callable[[], None] = lambda: None) -> tuple:
    """Returns (GraphProto, recipe). `tensors(name)` gives an HF-named float32 tensor, loaded on demand."""
    g = GraphBuilder(writer, options)
    bits = options.bits
    fdt = options.float_dtype
    # seqlens_k = real tokens so far - 1 (per row); total_sequence_length = attention_mask's width.
    mask_sum = g.node("ReduceSum", [ATTENTION_MASK, g.const("one_axis", np.array([1], np.int64))], keepdims=0)[0]
    seqlens = g.node("Cast", [g.node("Sub", [mask_sum, g.const("one_i64", np.array(1, np.int64))])[0]],
                     to=TensorProto.INT32)[0]
    width = g.node("Gather", [g.node("Shape", [ATTENTION_MASK])[0], g.const("idx1", np.array(1, np.int64))], axis=0)[0]
    total = g.node("Cast", [width], to=TensorProto.INT32)[0]
    cos, sin = rotary_cache(config.rotary_dim, config.rope_base, max_length)
    cos_name, sin_name = g.float_const("rotary.cos", cos), g.float_const("rotary.sin", sin)

    x = g.embedding(INPUT_IDS, tensors("model.embed_tokens.weight"), options.edge_bits("embedding"))
    progress()
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
        (past_k, present_k), (past_v, present_v) = next(kv), next(kv)
        attn = g.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, seqlens, total, cos_name, sin_name],
                      [f"{p}attn", present_k, present_v], domain=MS, num_heads=config.n_heads,
                      kv_num_heads=config.kv_heads, do_rotary=1, rotary_interleaved=0)[0]
        a = g.linear(attn, f"{p}dense", tensors(p + "self_attn.dense.weight"), None, bits)
        f = g.linear(h, f"{p}fc1", tensors(p + "mlp.fc1.weight"), None, bits)
        f = g.node("FastGelu", [f, g.float_const(f"{p}fc1.bias", tensors(p + "mlp.fc1.bias"))], domain=MS)[0]
        m = g.linear(f, f"{p}fc2", tensors(p + "mlp.fc2.weight"), None, bits)
        s = g.node("Add", [a, m])[0]
        b = g.float_const(f"{p}out.bias", tensors(p + "self_attn.dense.bias") + tensors(p + "mlp.fc2.bias"))
        progress()
    if contract.logits == "last":  # only the last position's logits are needed to continue the text
        last = [g.const("last_start", np.array([-1], np.int64)), g.const("last_end", np.array([2**62], np.int64)),
                g.const("seq_axis", np.array([1], np.int64))]
        s = g.node("Slice", [s, *last])[0]
        x = g.node("Slice", [x, *last])[0]
    gamma = g.float_const("final_ln.weight", tensors("model.final_layernorm.weight"))
    beta = g.float_const("final_ln.bias", tensors("model.final_layernorm.bias"))
    h = g.node("SkipLayerNormalization", [s, x, gamma, beta, b], ["final_ln_out"], domain=MS,
               epsilon=config.layer_norm_eps)[0]
    head_w = tensors("model.embed_tokens.weight") if config.tie_word_embeddings else tensors("lm_head.weight")
    logits = g.linear(h, "lm_head", head_w, tensors("lm_head.bias"), options.edge_bits("lm_head"))
    if fdt != "float32":
        logits = g.node("Cast", [logits], to=TensorProto.FLOAT)[0]
    g.node("Identity", [logits], [LOGITS])
    progress()

    inputs = [helper.make_tensor_value_info(t.name, _ONNX_DTYPE[t.dtype], list(t.shape)) for t in contract.inputs()]
    outputs = [helper.make_tensor_value_info(t.name, _ONNX_DTYPE[t.dtype], list(t.shape)) for t in contract.outputs()]
    graph = helper.make_graph(g.nodes, "phi", inputs, outputs, initializer=writer.initializers)
    return graph, g.recipe
