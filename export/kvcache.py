"""A quantized KV cache: per-channel scales calibrated on sample text, then the graph's cache turned to int8/int4.

ONNX Runtime's CPU GroupQueryAttention (1.27 and later; 1.25-1.26 fail at the first run) keeps a quantized
cache when given `k_scale` / `v_scale` and `kv_cache_bit_width`: it stores round(x / scale) clamped to the
range (int8: -128..127; int4: -8..7 stored as value + 8, two per byte, low nibble first), K after the rotary
embedding, and reads the cache back (prefill included) dequantized. Our scales are PER_CHANNEL, (1, kv_heads, 1,
head_dim) per layer and kind: keys have outlier channels that one scale per tensor would let dominate.

Calibration runs the package itself, its float cache and its quantized weights, on sample text (by default
Python's own standard library, the demo model's corpus, present wherever Python is): the largest |value| each
channel held over the text, times CLIP[bits], is the top of its range. The two channels a rotary pair mixes (i and
i + rotary_dim / 2) get the larger of their two maxima, since the pair's energy moves between them with position.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from runtime.contract import Contract

from .compat import MS

# bits -> range as a multiple of the largest calibrated |value|, measured on the demo model's held-out text
# (benchmarks/RESULTS.md, "Quantized KV cache"): int8 has levels to spare, so headroom for values the sample text
# never reached costs nothing (mean KL vs the float cache 0.00046 at 1.0, 0.00004-0.00005 at 1.5-2.0); int4 has
# 15 levels and loses more to coarse steps than to clipping (KL 0.0054 at 1.0, 0.0060 at 0.8, 0.0070 at 1.25).
CLIP = {8: 2.0, 4: 1.0}
QUANT_TYPE = "PER_CHANNEL"
CALIBRATION_TOKENS = 4096  # tokens of sample text run through the package
CALIBRATION_WINDOW = 1024  # tokens per window (each from an empty cache), at most the package's max_length
MIN_CALIBRATION_TOKENS = 64
# Standard-library modules of the default sample text, code and English prose (docstrings, comments); none is in
# the demo model's held-out split (train/demo/heldout/source.json), which the quality figures are measured on.
STDLIB_SAMPLE = ("textwrap.py", "argparse.py", "difflib.py", "json/decoder.py", "calendar.py", "fractions.py")


def scale_name(layer: int, kind: str) -> str:
    return f"kv_scale.{layer}.{kind}"


def calibration_text(path: Path | None) -> tuple[str, dict]:
    """(text, what it is for the manifest): the file at `path`, or the standard-library sample."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration file {path} does not exist; pass a UTF-8 text file")
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"calibration file {path} is not UTF-8 text (byte {e.start}); pass a UTF-8 text "
                             f"file") from None
        return text, {"source": path.name, "sha256": hashlib.sha256(data).hexdigest()}
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [(root / name).read_text(encoding="utf-8") for name in STDLIB_SAMPLE if (root / name).is_file()]
    return "\n\n".join(texts), {"source": "python standard library: " + ", ".join(STDLIB_SAMPLE)}


def calibration_windows(ids: list[int], max_length: int) -> list[list[int]]:
    window = min(CALIBRATION_WINDOW, max_length)
    ids = ids[:CALIBRATION_TOKENS]
    if len(ids) < MIN_CALIBRATION_TOKENS:
        raise ValueError(f"the calibration text has {len(ids)} tokens; the KV cache scales need at least "
                         f"{MIN_CALIBRATION_TOKENS}: pass a longer --calibration file")
    return [ids[i:i + window] for i in range(0, len(ids), window) if len(ids[i:i + window]) >= 2]


def absmax(backend, windows: list[list[int]]) -> np.ndarray:
    """(n_layers * 2, kv_heads, head_dim) the largest |value| each cache channel held, layer by layer, key before
    value: `backend` (runtime.engine.OrtBackend on the float-cache package) runs each window from empty."""
    top = None
    for ids in windows:
        backend.truncate(0)
        backend.step(ids)
        held = np.stack([np.abs(a[0, :, :len(ids)]).max(axis=1) for a in backend.kv.arrays])  # (2L, kv_heads, D)
        top = held if top is None else np.maximum(top, held)
    return top.astype(np.float32)


def scales(top: np.ndarray, bits: int, rotary_dim: int) -> np.ndarray:
    """Per-channel scales (n_layers * 2, kv_heads, head_dim) from the calibrated maxima: keys' rotary pairs
    share theirs; a channel that stayed 0 gets the layer's smallest nonzero range."""
    top = top.astype(np.float32) * np.float32(CLIP[bits])
    half = rotary_dim // 2
    keys = top[0::2]  # (L, kv_heads, D)
    pair = np.maximum(keys[..., :half], keys[..., half:rotary_dim])
    keys[..., :half] = pair
    keys[..., half:rotary_dim] = pair
    for row in top:
        nonzero = row[row > 0]
        row[row <= 0] = nonzero.min() if nonzero.size else 1.0
    qmax = 2 ** (bits - 1) - 1  # 127 or 7: symmetric, so -128 / -8 stay unused
    return top / np.float32(qmax)


def quantize_cache(model: ModelProto, contract: Contract, kv_scales: np.ndarray) -> None:
    """Turns `model`'s float KV cache into `contract`'s quantized one in place: each GroupQueryAttention node takes
    its layer's k_scale / v_scale initializers and the bit width, and the graph's past / present inputs and
    outputs get the contract's dtype and shape."""
    graph = model.graph
    bits = contract.kv_bits
    nodes = {n.output[1]: n for n in graph.node if n.op_type == "GroupQueryAttention" and n.domain == MS}
    for layer in range(contract.n_layers):
        _, present_key = contract.kv_names()[2 * layer]
        node = nodes[present_key]
        names = []
        for j, kind in enumerate(("key", "value")):
            array = kv_scales[2 * layer + j][None, :, None, :]  # (1, kv_heads, 1, head_dim)
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32),
                                                             scale_name(layer, kind)))
            names.append(scale_name(layer, kind))
        inputs = list(node.input) + [""] * (12 - len(node.input)) + names  # position_ids, bias, sink unused
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend([helper.make_attribute("k_quant_type", QUANT_TYPE),
                               helper.make_attribute("v_quant_type", QUANT_TYPE),
                               helper.make_attribute("kv_cache_bit_width", bits)])
    cache = {name for pair in contract.kv_names() for name in pair}
    specs = {t.name: t for t in contract.inputs() + contract.outputs() if t.name in cache}
    for info in list(graph.input) + list(graph.output):
        if info.name in specs:
            spec = specs[info.name]
            info.CopyFrom(helper.make_tensor_value_info(spec.name, helper.np_dtype_to_tensor_dtype(
                np.dtype(spec.dtype)), list(spec.shape)))
