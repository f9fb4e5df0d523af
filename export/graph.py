"""A decoder graph in ONNX Runtime's fused CPU operators, built layer by layer from streamed weights.

What every architecture shares lives here: the quantized linear and embedding, the attention inputs
(seqlens and total length from attention_mask), the rotary cos/sin tables (two, chosen by the total length,
for LongRoPE), the GroupQueryAttention node over the shared in-place KV cache, and the lm_head. Each
architecture's blocks are in their own module (export/blocks_phi.py, export/blocks_phi3.py), picked by the
config's model_type in BLOCKS. GroupQueryAttention accumulates Q.K^T in fp32 whatever the graph's float type.

    input_ids -> embedding -> blocks (architecture) -> [last position] -> final norm -> lm_head -> logits
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto, helper

from runtime.contract import ATTENTION_MASK, INPUT_IDS, LOGITS, LOGITS_TO_KEEP, Contract

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
        self._quantized: dict[str, tuple] = {}  # name -> MatMulNBits' (qweight, scales, zero points, N, K)

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

    def linear(self, x: str, name: str, weight: np.ndarray | None, bias: np.ndarray | None, bits: int | None) -> str:
        """x @ weight.T + bias, weight (N, K) as stored in PyTorch (None when `name` is already quantized: the
        lm_head of a tied embedding)."""
        if bits is None:
            out = self.node("MatMul", [x, self.float_const(f"{name}.weight_t", weight.T)])[0]
            self.recipe[name] = self.opt.float_dtype
            return self.node("Add", [out, self.float_const(f"{name}.bias", bias)])[0] if bias is not None else out
        if name not in self._quantized:
            self._write_quantized(name, quantize(weight, self.opt.method_for(bits), bits, self.opt.block_size,
                                                 self.opt.symmetric))
        qweight, scales, zero_points, n, k = self._quantized[name]
        inputs = [x, qweight, scales, zero_points, ""]  # "": g_idx
        if bias is not None:
            inputs.append(self.float_const(f"{name}.bias", bias))
        return self.node("MatMulNBits", inputs, domain=MS, K=k, N=n, bits=bits, block_size=self.opt.block_size,
                         accuracy_level=self.opt.accuracy_level)[0]

    def _write_quantized(self, name: str, q) -> None:
        """MatMulNBits' weight, scales and zero points ("" when symmetric) of `name`, written once."""
        zero = self.const(f"{name}.zero_points", q.zero_points) if q.zero_points is not None else ""
        self._quantized[name] = (self.const(f"{name}.qweight", q.packed), self.const(f"{name}.scales", q.scales),
                                 zero, q.n, q.k)
        self.recipe[name] = f"int{q.bits} {self.opt.method_for(q.bits)} block {q.block_size}" + \
            (" symmetric" if self.opt.symmetric else "")

    def can_share(self, bits: int | None, lm_head_bits: int | None) -> bool:
        """A tied embedding can gather from the lm_head's quantized weight when both have the same bits and the
        zero points are integers (GatherBlockQuantized takes no float zero points: HQQ's 4-bit)."""
        return bits is not None and bits == lm_head_bits and self.opt.method_for(bits) != "hqq"

    def tied_embedding(self, ids: str, weight: np.ndarray, bits: int) -> str:
        """The embedding of a tied model read from the lm_head's MatMulNBits weight (V, blocks, blob) as it is:
        GatherBlockQuantized along its last axis, one block per row of blob bytes, so the package and the memory
        map hold one copy of the 200064 x 3072 matrix (Phi-4-mini). Scales and zero points are small (V, blocks, 1)
        copies: MatMulNBits only takes them 1-D or 2-D. A Reshape of the weight to (V, H * bits / 8) would be folded
        by ONNX Runtime into a second resident copy (measured: +311 MiB of anonymous memory at Phi-4-mini size)."""
        q = quantize(weight, self.opt.method_for(bits), bits, self.opt.block_size, self.opt.symmetric)
        self._write_quantized("lm_head", q)
        v, blocks, _ = q.packed.shape
        inputs = [self._quantized["lm_head"][0], ids, self.const("embed_tokens.scales", q.scales.reshape(v, blocks, 1))]
        if q.zero_points is not None:
            zero = q.zero_points
            if bits == 4:  # MatMulNBits packs two blocks' zero points per byte; here each block has its own byte
                zero = np.stack([zero & 0x0F, zero >> 4], axis=-1).reshape(v, -1)[:, :blocks]
            inputs.append(self.const("embed_tokens.zero_points", np.ascontiguousarray(zero).reshape(v, blocks, 1)))
        self.recipe["embed_tokens"] = f"lm_head's int{bits} weight (tied)"
        gathered = self.node("GatherBlockQuantized", inputs, domain=MS, gather_axis=0, quantize_axis=2,
                             block_size=self.opt.block_size, bits=bits)[0]  # (B, S, blocks, block)
        return self.node("Reshape", [gathered, self.const("embed_tokens.shape", np.array([0, 0, -1], np.int64))])[0]

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


def rotary_cache(rotary_dim: int, base: float, max_length: int, factors=None,
                 scale: float = 1.0, linear: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin (max_length, rotary_dim / 2) for GroupQueryAttention's rotate-half rotary. LongRoPE (`factors`)
    divides each frequency by its factor and scales cos and sin (train/config_phi3.py), computed in float32
    as transformers computes it; the plain table is computed in float64, its frequencies divided by `linear`
    (rope "linear" scaling)."""
    if factors is None:
        inv_freq = 1.0 / (base ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)) / linear
        freqs = np.outer(np.arange(max_length, dtype=np.float64), inv_freq)
        return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)
    exponent = np.arange(0, rotary_dim, 2).astype(np.float32) / np.float32(rotary_dim)
    inv_freq = np.float32(1.0) / (np.asarray(factors, np.float32) * np.power(np.float32(base), exponent))
    freqs = np.outer(np.arange(max_length, dtype=np.float32), inv_freq.astype(np.float32))  # float32 products
    return (np.cos(freqs) * np.float32(scale)).astype(np.float32), (np.sin(freqs) * np.float32(scale)).astype(np.float32)


class Shared:
    """The graph-wide values every block uses: attention lengths and rotary tables."""

    def __init__(self, g: GraphBuilder, config, max_length: int, window_cache: bool = False):
        self.window_cache = window_cache  # GroupQueryAttention evicts past the window (runtime/contract.py)
        # seqlens_k = real tokens so far - 1 (per row); total_sequence_length = attention_mask's width.
        mask_sum = g.node("ReduceSum", [ATTENTION_MASK, g.const("one_axis", np.array([1], np.int64))], keepdims=0)[0]
        self.seqlens = g.node("Cast", [g.node("Sub", [mask_sum, g.const("one_i64", np.array(1, np.int64))])[0]],
                              to=TensorProto.INT32)[0]
        mask_width = g.node("Gather", [g.node("Shape", [ATTENTION_MASK])[0],
                                       g.const("idx1", np.array(1, np.int64))], axis=0)[0]
        self.total = g.node("Cast", [mask_width], to=TensorProto.INT32)[0]
        # A float16 cache in a float32 graph: attention runs in float16 between casts (GroupQueryAttention takes
        # one type for its query, cache and rotary tables).
        self.cast16 = g.opt.float_cache_dtype == "float16" and g.opt.float_dtype == "float32"
        longrope = getattr(config, "longrope", None)
        if longrope is None:
            cos, sin = rotary_cache(config.rotary_dim, config.rope_base, max_length,
                                    linear=getattr(config, "rope_linear_factor", 1.0))
            self.cos, self.sin = self._table(g, "rotary.cos", cos), self._table(g, "rotary.sin", sin)
            return
        scale = longrope.scaling(config.max_position_embeddings)
        tables = {}
        for kind, factors in (("short", longrope.short_factor), ("long", longrope.long_factor)):
            cos, sin = rotary_cache(config.rotary_dim, config.rope_base, max_length, factors, scale)
            tables[kind] = (self._table(g, f"rotary.cos_{kind}", cos), self._table(g, f"rotary.sin_{kind}", sin))
        # The long tables once the sequence (cached + new) is longer than the original context; the runtime
        # recomputes a cached sequence that crosses the switch (manifest "rope_switch"), as transformers does.
        switch = g.const("rotary.switch", np.array(longrope.original_max_position_embeddings, np.int32))
        long = g.node("Greater", [self.total, switch])[0]
        half = config.rotary_dim // 2
        branches = []
        for kind in ("long", "short"):
            outs = [f"rotary.{n}_{kind}_out" for n in ("cos", "sin")]
            nodes = [helper.make_node("Identity", [src], [dst], name=f"rotary_{kind}_{i}")
                     for i, (src, dst) in enumerate(zip(tables[kind], outs))]
            infos = [helper.make_tensor_value_info(o, _ONNX_DTYPE["float16" if self.cast16 else g.opt.float_dtype],
                                                   [max_length, half])
                     for o in outs]
            branches.append(helper.make_graph(nodes, f"rotary_{kind}", [], infos))
        self.cos, self.sin = g.node("If", [long], ["rotary.cos", "rotary.sin"], then_branch=branches[0],
                                    else_branch=branches[1])

    def _table(self, g: GraphBuilder, name: str, table: np.ndarray) -> str:
        return g.const(name, table.astype(np.float16)) if self.cast16 else g.float_const(name, table)

    def attention(self, g: GraphBuilder, config, p: str, qkv: str, kv) -> str:
        """GroupQueryAttention over the packed qkv, rotary inside; past and present share one buffer."""
        (past_k, present_k), (past_v, present_v) = next(kv), next(kv)
        window = getattr(config, "window", None)
        extra = {} if window is None else {"local_window_size": window}  # the keys a query sees, its own included
        if self.window_cache:
            extra["sliding_window_cache"] = 1
        if self.cast16:
            qkv = g.node("Cast", [qkv], to=TensorProto.FLOAT16)[0]
        out = g.node("GroupQueryAttention", [qkv, "", "", past_k, past_v, self.seqlens, self.total, self.cos,
                                             self.sin], [f"{p}attn", present_k, present_v], domain=MS,
                     num_heads=config.n_heads, kv_num_heads=config.kv_heads, do_rotary=1, rotary_interleaved=0,
                     **extra)[0]
        return g.node("Cast", [out], to=TensorProto.FLOAT)[0] if self.cast16 else out


def last_positions(g: GraphBuilder, contract: Contract, *values: str) -> list[str]:
    """Each value (B, S, hidden) cut to its last logits_to_keep positions (B, min(S, logits_to_keep), hidden); to
    its last position in a package without that input."""
    if contract.keeps_logits:
        start = g.node("Neg", [LOGITS_TO_KEEP])[0]
    else:
        start = g.const("last_start", np.array([-1], np.int64))
    last = [start, g.const("last_end", np.array([2**62], np.int64)), g.const("seq_axis", np.array([1], np.int64))]
    return [g.node("Slice", [v, *last])[0] for v in values]


def build_graph(config, contract: Contract, options: ExportOptions, max_length: int,
                tensors: Callable[[str], np.ndarray], writer: WeightWriter,
                progress: Callable[[], None] = lambda: None) -> tuple:
    """Returns (GraphProto, recipe). `tensors(name)` gives an HF-named float32 tensor, loaded on demand."""
    from .blocks_phi import phi_blocks
    from .blocks_phi3 import phi3_blocks

    blocks = {"phi": phi_blocks, "phi3": phi3_blocks}[config.model_type]
    g = GraphBuilder(writer, options)
    shared = Shared(g, config, max_length, contract.window is not None)
    embedding_bits, head_bits = options.edge_bits("embedding"), options.edge_bits("lm_head")
    tied = config.tie_word_embeddings and g.can_share(embedding_bits, head_bits)  # one quantized copy of both
    embed = g.tied_embedding if tied else g.embedding
    x = embed(INPUT_IDS, tensors("model.embed_tokens.weight"), embedding_bits)
    progress()
    h, head_bias = blocks(g, config, contract, shared, x, tensors, progress)  # (B, S or 1, hidden) after the norm
    head_w = None if tied else tensors("model.embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight")
    logits = g.linear(h, "lm_head", head_w, head_bias, head_bits)
    if options.float_dtype != "float32":
        logits = g.node("Cast", [logits], to=TensorProto.FLOAT)[0]
    g.node("Identity", [logits], [LOGITS])
    progress()

    inputs = [helper.make_tensor_value_info(t.name, _ONNX_DTYPE[t.dtype], list(t.shape)) for t in contract.inputs()]
    outputs = [helper.make_tensor_value_info(t.name, _ONNX_DTYPE[t.dtype], list(t.shape)) for t in contract.outputs()]
    graph = helper.make_graph(g.nodes, "decoder", inputs, outputs, initializer=writer.initializers)
    return graph, g.recipe
