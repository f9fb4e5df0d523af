"""Export choices (deployment knobs, apart from the model's shape) and the quantization recipe table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from runtime.contract import KV_DTYPES, LOGITS_MODES

# precision -> (bits of the transformer blocks' matmuls or None for float, float dtype of the graph)
PRECISIONS: dict[str, tuple[int | None, str]] = {
    "fp32": (None, "float32"),
    "fp16": (None, "float16"),
    "int8": (8, "float32"),
    "int4": (4, "float32"),
}
# Where the package will run. "web": onnxruntime-web (runtime/web), whose WebGPU attention takes only a float KV cache
# and whose per-buffer limits bound every weight: a float32 cache (float16 only on request, for GPUs with WebGPU's
# shader-f16), and no weight tensor over WEB_BUFFER (WebGPU's default maxStorageBufferBindingSize, which every adapter
# offers). "any": no such checks (the Python runtime and Android take every choice).
TARGETS = ("any", "web")
WEB_BUFFER = 128 << 20
METHODS = ("rtn", "rtn-ort", "hqq")  # export/quantize.py: round to nearest (ours, ORT's), HQQ (ORT's)
EDGE_POLICIES = ("fp32", "int8", "int4")  # embedding and lm_head: 8-bit keeps accuracy, 4-bit saves memory
# (lm_head, embedding) of a quantized package when the options leave them None, per model_type (benchmarks/RESULTS.md,
# "Embedding and lm_head precision" and issue 23). int8 for both families: int4 triples the KL from fp32 on the demo
# models. The phi-3 family had int4 while its body was block 32 (Phi-4-mini's tied 200064 x 3072 matrix is its
# largest weight); with block-128 bodies an int8 matrix stored once costs less than the block-32 int4 package did
# (about 2.3 against 2.4 GB streamed a token at Phi-4-mini size) and halves the demo Phi-4-mini's KL (0.0039 ->
# 0.0022, onnxruntime-genai's recipe 0.0036). These are int4 packages' defaults; an int8 package keeps int8 ones.
EDGE_DEFAULTS: dict[str, tuple[str, str]] = {"phi": ("int8", "int8"), "phi3": ("int8", "int8")}
# The quantization block when the options leave it None: 128 where it divides the model's hidden and MLP sizes (every
# published phi), else the largest power of two below it that does. Against block 32 (onnxruntime-genai's and
# llama.cpp's Q4_0 default) it decodes 1.2-1.3x faster at phi-1.5 size on 2 x86 cores and prefills faster, for a
# little more KL on the demo models, still below onnxruntime-genai's own recipe's (benchmarks/RESULTS.md, issue 23).
DEFAULT_BLOCK = 128


def default_block(sizes) -> int:
    """DEFAULT_BLOCK, halved until it divides every size in `sizes` (the matmuls' input dimensions), at least 16."""
    block = DEFAULT_BLOCK
    while block > 16 and any(k % block for k in sizes):
        block //= 2
    return block


@dataclass(frozen=True)
class ExportOptions:
    precision: str = "int4"
    block_size: int | None = None  # None: default_block of the model's sizes (set by for_model)
    method: str = "rtn"
    symmetric: bool = False
    accuracy_level: int = 4  # MatMulNBits: 4 = activations quantized to int8 on CPU
    lm_head: str | None = None  # quantization of the output projection when precision is int4/int8; None: the
    # architecture's default (EDGE_DEFAULTS, set by for_model)
    embedding: str | None = None  # the token embedding's (GatherBlockQuantized), likewise. A tied model whose two
    # have the same bits stores the matrix once (export/graph.py tied_embedding)
    max_length: int | None = None  # default: the model's context
    logits: str = "last"  # "last": prefill returns the last position only; "all": every position (quality tools)
    no_eos: bool = False  # allow a package with no end-of-text id (generation then never stops on its own)
    kv_dtype: str | None = None  # KV cache dtype (runtime/contract.py KV_DTYPES); None: the graph's float type.
    # int8 / int4 keep the cache quantized with per-channel scales calibrated at export (export/kvcache.py): a quarter
    # / an eighth of float32's memory and faster decoding, but ONNX Runtime 1.32's quantized CPU attention is 2.3-2.8x
    # slower in prefill (long prompts 10-40 % slower at Phi-3-mini size), so not the default (benchmarks/RESULTS.md,
    # "KV cache memory"). "float16" in a float32 graph runs GroupQueryAttention in float16 between casts.
    calibration: str | None = None  # UTF-8 text for the KV scales of an int8 / int4 cache; None: the stdlib sample
    target: str = "any"  # TARGETS: "web" keeps what onnxruntime-web's WebGPU provider runs

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.method not in METHODS:
            raise ValueError(f"unknown quantization method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 16 or self.block_size & (self.block_size - 1)):
            raise ValueError(f"block size {self.block_size} is not supported; MatMulNBits takes a power of two "
                             f">= 16 (32, 64, 128, ...)")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"accuracy level {self.accuracy_level} is not one of 0-4")
        for name in ("lm_head", "embedding"):
            if getattr(self, name) not in (*EDGE_POLICIES, None):
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is unknown; choose one of "
                                 f"{', '.join(EDGE_POLICIES)}")
        if self.logits not in LOGITS_MODES:
            raise ValueError(f"--logits {self.logits!r} is unknown; choose one of {', '.join(LOGITS_MODES)}")
        if self.kv_dtype is not None and self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"--kv-dtype {self.kv_dtype!r} is unknown; choose one of {', '.join(KV_DTYPES)}")
        if self.calibration is not None and KV_DTYPES[self.cache_dtype][2] is None:
            raise ValueError(f"--calibration sets the scales of a quantized KV cache, and --kv-dtype {self.cache_dtype} "
                             f"is not one; add --kv-dtype int8 (or int4) or drop --calibration")
        if self.float_dtype == "float16" and self.kv_dtype == "float32":
            raise ValueError("a float16 graph keeps its KV cache in float16; drop --kv-dtype float32")
        if self.target not in TARGETS:
            raise ValueError(f"--target {self.target!r} is unknown; choose one of {', '.join(TARGETS)}")
        if self.target == "web" and KV_DTYPES[self.cache_dtype][2] is not None:
            raise ValueError(f"--target web keeps a float KV cache (onnxruntime-web's WebGPU attention takes no "
                             f"{self.cache_dtype} cache); drop --kv-dtype {self.cache_dtype}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"--max-length must be at least 2, got {self.max_length}")
        if self.method == "hqq" and self.bits == 8:
            raise ValueError("HQQ's zero points are floats, which ONNX Runtime's 8-bit MatMulNBits does not take on "
                             "CPU; use --method rtn for int8 (HQQ is for int4)")
        if self.method == "hqq" and self.symmetric:
            raise ValueError("HQQ fits a zero point per block; it has no symmetric variant (drop --symmetric)")

    @property
    def bits(self) -> int | None:
        return PRECISIONS[self.precision][0]

    @property
    def float_dtype(self) -> str:
        return PRECISIONS[self.precision][1]

    @property
    def cache_dtype(self) -> str:
        return self.kv_dtype or self.float_dtype

    @property
    def float_cache_dtype(self) -> str:
        """The cache dtype of the graph as built: a quantized cache is calibrated on the float one first."""
        return self.float_dtype if KV_DTYPES[self.cache_dtype][2] else self.cache_dtype

    def method_for(self, bits: int) -> str:
        """HQQ's float zero points exist for 4 bits only on CPU; 8-bit layers (an int8 lm_head) use RTN."""
        return "rtn" if bits == 8 and self.method == "hqq" else self.method

    def for_model(self, model_type: str, sizes=()) -> ExportOptions:
        """These options with the architecture's lm_head and embedding defaults filled in (never fewer bits than the
        blocks': an int8 package keeps int8 ones), and the block size for a model whose matmuls' input dimensions
        are `sizes` (default_block) unless given."""
        head, embedding = ("int8", "int8") if self.bits == 8 else EDGE_DEFAULTS[model_type]
        return replace(self, lm_head=self.lm_head or head, embedding=self.embedding or embedding,
                       block_size=self.block_size or default_block(sizes))

    def edge_bits(self, which: str) -> int | None:
        """Bits of the embedding or lm_head (after for_model); None keeps them in the graph's float type."""
        if self.bits is None:
            return None
        policy = getattr(self, which)
        if policy is None:
            raise ValueError(f"{which} has no policy yet: call ExportOptions.for_model(model_type) first")
        return None if policy == "fp32" else int(policy[3:])

    def to_json(self) -> dict:
        return asdict(self)
