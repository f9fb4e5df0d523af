"""The ONNX I/O contract and KV-cache layout of a model package, defined once.

export/ writes graphs from this module and runtime/ (and the Android app, through manifest.json) reads
packages with it. It imports nothing but the standard library, so the torch-free runtime can use it.

One graph serves prefill and decode:

    inputs   input_ids                 int64    (batch, sequence_length)
             attention_mask            int64    (batch, total_sequence_length)   1 for every real token so far
             past_key_values.L.key     kv dtype (batch, kv_heads, kv_capacity, head_dim)
             past_key_values.L.value   kv dtype (batch, kv_heads, kv_capacity, head_dim)
             logits_to_keep            int64    (1,)                             "last" packages: how many of the
                                                                                 step's last positions get logits
    outputs  logits                    float32  (batch, logits_length, vocab)    logits_length min(S, logits_to_keep)
                                                                                 ("last") or sequence_length ("all")
             present.L.key / .value    the same buffers as past (shared in place, never copied)

KV layout: (batch, kv_heads, kv_capacity, head_dim), "BNSH"; position p of layer L lives at [:, :, p, :]. A runtime
chooses kv_capacity (at most the package's max_length) and may grow it between steps, copying the first P
positions into a larger buffer. KV dtypes (KV_DTYPES): float32, float16, int8 (round(x / scale) clamped to
-128..127) and int4 (two values per byte, low nibble first, stored as value + 8; the buffer is uint8 with a last
dimension of head_dim / 2). The scales of a quantized cache are initializers inside the graph (per channel, K
after the rotary embedding, calibrated at export: export/kvcache.py); a runtime only allocates the buffers. A step with
past length P and S new tokens passes attention_mask of shape (batch, P + S) and writes positions
[P, P + S) in place; ONNX Runtime's GroupQueryAttention reads only the first P + S positions.

Sliding-window packages (kv_cache "window": W, a model whose attention window is shorter than max_length) evict
instead: GroupQueryAttention's sliding_window_cache keeps a buffer of C >= W positions (fixed for the whole
sequence; the kernel refuses a smaller one), and a step whose total P + S passes C first drops the oldest
G = C - W + 1 rows at once, as often as needed. So the buffer holds rows [0, held(T)) for a sequence of T tokens,
held(T) = T while T <= C, else T - G * evictions(T), evictions(T) = ceil((T - C) / G). P, the mask and the
positions stay the sequence's own (up to max_length). Going back from T to n tokens is exact only when
evictions(n) == evictions(T) (runtime/window.py recomputes otherwise).

logits_to_keep (format version 2): a plain step feeds [1]; speculative decoding feeds [K + 1] to verify K drafted
tokens in one step (runtime/speculate.py). Version-1 packages lack it and always return one row. (It cannot be an
input with a default value: ONNX Runtime's IO binding refuses to bind an overridable initializer.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

FORMAT = "phi-edge-package"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: no logits_to_keep input

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS_TO_KEEP = "logits_to_keep"
LOGITS = "logits"
KV_KINDS = ("key", "value")
KV_LAYOUT = ("batch", "kv_heads", "kv_capacity", "head_dim")
LOGITS_MODES = ("last", "all")
# KV cache dtype -> (the buffer's element dtype, cache values per element, bits of a quantized cache or None)
KV_DTYPES: dict[str, tuple[str, int, int | None]] = {
    "float32": ("float32", 1, None), "float16": ("float16", 1, None), "int8": ("int8", 1, 8), "int4": ("uint8", 2, 4)}
ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int64": 8}

# Symbolic dimension names.
BATCH, SEQ, TOTAL, CAPACITY, LOGITS_LEN = (
    "batch", "sequence_length", "total_sequence_length", "kv_capacity", "logits_length")


def past_name(layer: int | str, kind: str) -> str:
    return f"past_key_values.{layer}.{kind}"


def present_name(layer: int | str, kind: str) -> str:
    return f"present.{layer}.{kind}"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32", "float16"
    shape: tuple[int | str, ...]  # ints are fixed, strings are symbolic

    def to_json(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class Contract:
    """What a package's graph takes and returns, derived from the model shape and the export choices."""

    n_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    kv_dtype: str  # a key of KV_DTYPES
    logits: str = "last"
    logits_to_keep: bool = True  # a "last" package's graph takes the logits_to_keep input (format version 2)
    window: int | None = None  # a sliding-window cache: the keys a query sees (its own included), else None

    def __post_init__(self) -> None:
        for name in ("n_layers", "kv_heads", "head_dim", "vocab_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"I/O contract field {name} must be a positive integer, got {value!r}")
        if self.logits not in LOGITS_MODES:
            raise ValueError(f"logits mode {self.logits!r} is unknown; choose one of {', '.join(LOGITS_MODES)}")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv dtype {self.kv_dtype!r} is not one of {', '.join(KV_DTYPES)}")
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window < 1):
            raise ValueError(f"I/O contract field window must be a positive integer or null, got {self.window!r}")
        if self.head_dim % KV_DTYPES[self.kv_dtype][1]:
            raise ValueError(f"an {self.kv_dtype} KV cache packs {KV_DTYPES[self.kv_dtype][1]} values per byte, "
                             f"which head_dim {self.head_dim} does not divide")

    @property
    def kv_storage(self) -> str:
        """The cache buffers' element dtype (numpy name): uint8 for int4."""
        return KV_DTYPES[self.kv_dtype][0]

    @property
    def kv_bits(self) -> int | None:
        """8 or 4 for a quantized cache, None for a float one."""
        return KV_DTYPES[self.kv_dtype][2]

    @property
    def kv_width(self) -> int:
        """The buffers' last dimension: head_dim, or head_dim / 2 for int4."""
        return self.head_dim // KV_DTYPES[self.kv_dtype][1]

    def kv_shape(self, batch: int | str = BATCH, capacity: int | str = CAPACITY) -> tuple[int | str, ...]:
        return (batch, self.kv_heads, capacity, self.kv_width)

    def kv_names(self) -> list[tuple[str, str]]:
        """(past, present) name pairs, layer by layer, key before value."""
        return [(past_name(i, k), present_name(i, k)) for i in range(self.n_layers) for k in KV_KINDS]

    def inputs(self) -> list[TensorSpec]:
        specs = [TensorSpec(INPUT_IDS, "int64", (BATCH, SEQ)), TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL))]
        specs += [TensorSpec(past, self.kv_storage, self.kv_shape()) for past, _ in self.kv_names()]
        if self.keeps_logits:
            specs.append(TensorSpec(LOGITS_TO_KEEP, "int64", (1,)))
        return specs

    @property
    def keeps_logits(self) -> bool:
        """Whether a step can return logits for its last K positions (a verify step of speculative decoding)."""
        return self.logits == "last" and self.logits_to_keep

    @property
    def can_verify(self) -> bool:
        """Whether one step can return logits for several positions ("all" packages always do)."""
        return self.logits == "all" or self.keeps_logits

    def outputs(self) -> list[TensorSpec]:
        length = (LOGITS_LEN if self.keeps_logits else 1) if self.logits == "last" else SEQ
        specs = [TensorSpec(LOGITS, "float32", (BATCH, length, self.vocab_size))]
        specs += [TensorSpec(present, self.kv_storage, self.kv_shape()) for _, present in self.kv_names()]
        return specs

    @property
    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one position costs over all layers (keys and values), so an app can size its context."""
        return self.n_layers * 2 * self.kv_heads * self.kv_width * ITEMSIZE[self.kv_storage]

    def to_json(self) -> dict:
        return {"inputs": [s.to_json() for s in self.inputs()], "outputs": [s.to_json() for s in self.outputs()],
                "kv_cache": {"layout": list(KV_LAYOUT), "dtype": self.kv_dtype, "storage_dtype": self.kv_storage,
                             "n_layers": self.n_layers, "kv_heads": self.kv_heads, "head_dim": self.head_dim,
                             "storage_head_dim": self.kv_width, "shared_buffer": True,
                             "bytes_per_token": self.kv_bytes_per_token,
                             "bytes_per_1k_tokens": 1024 * self.kv_bytes_per_token,
                             "past": past_name("{layer}", "{kind}"), "present": present_name("{layer}", "{kind}"),
                             "window": self.window},
                "logits": self.logits}

    @classmethod
    def from_json(cls, d: dict, vocab_size: int) -> Contract:
        kv = d["kv_cache"]
        keeps = any(i.get("name") == LOGITS_TO_KEEP for i in d.get("inputs", ()))
        return cls(n_layers=kv["n_layers"], kv_heads=kv["kv_heads"], head_dim=kv["head_dim"],
                   vocab_size=vocab_size, kv_dtype=kv["dtype"], logits=d["logits"], logits_to_keep=keeps,
                   window=kv.get("window"))
