"""Which ONNX Runtime a package needs: the IR version and opsets it is stamped with, and the oldest
onnxruntime release that runs every operator it uses (recorded in the manifest, checked at load).

The onnx library stamps a new model with its own newest IR version (14 with onnx 1.23), which ONNX Runtime
1.22 and older reject ("max supported IR version: 10"), and so would an app that pins an older
onnxruntime-android. Our graphs use nothing newer than IR 10 and opset 17 (LayerNormalization), as
onnxruntime-genai's builder does. Operator by operator, the oldest release that runs them was found by
running packages on each release (tests/test_compat.py checks the claim on BASE_ONNXRUNTIME):

- every op of a float package, 4-bit MatMulNBits, GroupQueryAttention (cos/sin cache, shared past/present),
  SkipLayerNormalization, FastGelu: 1.20;
- 8-bit MatMulNBits (int8 packages, phi's default int8 lm_head): 1.22; 1.20 and 1.21 refuse it ("Only 4b
  quantization is supported for MatMulNBits op");
- GatherBlockQuantized on uint8 data with the `bits` attribute (phi's default int8 embedding, the phi-3 family's
  int4 one): 1.23; 1.20-1.22 reject the attribute ("Unrecognized attribute: bits"). Gathering from a tied
  lm_head's 3-D MatMulNBits weight (quantize_axis 2): 1.27; 1.23, 1.25 and 1.26 run it and return wrong rows
  (a tiny tied model's logits off by 0.93 of 1.32; greedy tokens differ), so it is claimed from 1.27 only. The
  8-bit tied gather (the default lm_head and embedding) runs there too; 1.27-1.29 and 1.30+ round decode steps'
  int8 activations differently (logits within 0.009 on a tiny model: a near-tie can flip a greedy token).
- GroupQueryAttention with an int8 or int4 cache (`kv_cache_bit_width`, --kv-dtype int8/int4): 1.27; 1.23 and
  1.24 reject the graph (INVALID_GRAPH on the cache's type), 1.25 and 1.26 load it and fail at the first run.
- GroupQueryAttention with `sliding_window_cache` (a sliding-window package, Phi-3-mini-4k): 1.29; 1.23-1.28
  reject the attribute (INVALID_GRAPH). onnxruntime-android 1.29 and onnxruntime-web 1.30 run it.
So the default int4 package needs 1.23 (a tied phi-3 one, Phi-4-mini, 1.27); `--embedding fp32 --lm-head int4`
runs on 1.20. tests/test_compat.py checks each claim by logits along greedy tokens, within a tolerance that
rounding passes and wrong rows do not.
"""

from __future__ import annotations

from onnx import ModelProto, helper

from runtime.manifest import version_tuple

MS = "com.microsoft"
IR_VERSION = 10
OPSET = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)]
BASE_ONNXRUNTIME = "1.20.0"
# (domain, op, its `bits` attribute or None) -> oldest onnxruntime that runs it; others need BASE_ONNXRUNTIME.
OP_MIN_ONNXRUNTIME = {(MS, "MatMulNBits", 8): "1.22.0",
                      (MS, "GatherBlockQuantized", 4): "1.23.0", (MS, "GatherBlockQuantized", 8): "1.23.0",
                      (MS, "GroupQueryAttention", 8): "1.27.0", (MS, "GroupQueryAttention", 4): "1.27.0",
                      (MS, "GatherBlockQuantized", "tied"): "1.27.0", (MS, "GroupQueryAttention", "window"): "1.29.0"}


def min_onnxruntime(model: ModelProto) -> str:
    needed = {OP_MIN_ONNXRUNTIME.get((n.domain or "", n.op_type, variant), BASE_ONNXRUNTIME)
              for n in model.graph.node for variant in _variants(n)}
    return max(needed | {BASE_ONNXRUNTIME}, key=version_tuple)


def _variants(node) -> list[int | str | None]:
    """What decides the release a node needs: a GatherBlockQuantized reading a tied lm_head's 3-D MatMulNBits weight
    (quantize_axis 2) is "tied", a GroupQueryAttention evicting past its window "window" (and its cache's bits),
    anything else its bits."""
    attrs = {a.name: a.i for a in node.attribute}
    if node.op_type == "GatherBlockQuantized" and attrs.get("quantize_axis") == 2:
        return ["tied"]
    return [_bits(node)] + (["window"] if attrs.get("sliding_window_cache") else [])


def _bits(node) -> int | None:
    """MatMulNBits' and GatherBlockQuantized's `bits`, GroupQueryAttention's `kv_cache_bit_width` (a quantized
    cache)."""
    return next((a.i for a in node.attribute if a.name in ("bits", "kv_cache_bit_width")), None)
