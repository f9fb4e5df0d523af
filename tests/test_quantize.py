"""Block quantization for MatMulNBits: our RTN against onnxruntime's, and every method through a real node."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from export.quantize import METHODS, quantize

RNG = np.random.default_rng(0)
W = (RNG.standard_normal((96, 256)) * 0.02).astype(np.float32)  # (N, K) as PyTorch stores it
W[3, 17] = 0.5  # an outlier, as real weights have


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_numpy_rtn_equals_onnxruntime_quantizer(bits, symmetric):
    ours, ort_q = quantize(W, "rtn", bits, 32, symmetric), quantize(W, "rtn-ort", bits, 32, symmetric)
    assert ours.packed.shape == ort_q.packed.shape and ours.scales.shape == ort_q.scales.shape
    codes_equal = (ours.packed == ort_q.packed).mean()
    assert codes_equal >= 0.9995, codes_equal  # rounding ties may land one step apart
    step = np.abs(ort_q.scales).max()
    assert np.abs(ours.dequantize() - ort_q.dequantize()).max() <= step * 1.001
    if not symmetric:
        assert np.allclose(ours.scales, ort_q.scales, rtol=1e-6) and np.array_equal(ours.zero_points, ort_q.zero_points)


@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_error_is_at_most_half_a_step(bits):
    q = quantize(W, "rtn", bits, 32, False)
    step = np.repeat(q.scales, 32, axis=1)  # (N, K)
    assert np.all(np.abs(q.dequantize() - W) <= step / 2 + 1e-7)


def test_hqq_lowers_the_error_it_minimizes():
    """HQQ minimizes an Lp norm (p < 1) of the reconstruction error per block; RTN does not look at it."""
    rtn, hqq = quantize(W, "rtn", 4, 32, False), quantize(W, "hqq", 4, 32, False)
    lp = lambda q: (np.abs(q.dequantize() - W) ** 0.7).mean()
    assert lp(hqq) < lp(rtn)


@pytest.mark.parametrize("method, bits, symmetric", [
    ("rtn", 4, False), ("rtn", 4, True), ("rtn", 8, False), ("rtn", 8, True), ("rtn-ort", 4, False),
    ("hqq", 4, False)])
def test_matmulnbits_computes_with_the_dequantized_weight(method, bits, symmetric):
    q = quantize(W, method, bits, 32, symmetric)
    n, k = W.shape
    inits = [helper.make_tensor("B", TensorProto.UINT8, q.packed.shape, q.packed.tobytes(), raw=True),
             helper.make_tensor("S", TensorProto.FLOAT, q.scales.shape, q.scales.ravel().tolist())]
    inputs = ["A", "B", "S"]
    if q.zero_points is not None:
        dtype = TensorProto.UINT8 if q.zero_points.dtype == np.uint8 else TensorProto.FLOAT
        inits.append(helper.make_tensor("Z", dtype, q.zero_points.shape, q.zero_points.tobytes(), raw=True))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=32, accuracy_level=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.standard_normal((2, k)).astype(np.float32)
    got = session.run(None, {"A": x})[0]
    assert np.allclose(got, x @ q.dequantize().T, atol=1e-4)


def test_method_table():
    assert set(METHODS) == {"rtn", "rtn-ort", "hqq"}


@pytest.mark.parametrize("method, bits, symmetric", [("rtn", 4, False), ("rtn", 8, False), ("rtn", 4, True),
                                                     ("rtn-ort", 4, False)])
def test_quantizing_in_row_chunks_equals_one_call(method, bits, symmetric, monkeypatch):
    import export.quantize as q

    w = np.random.default_rng(3).normal(size=(100, 64)).astype(np.float32)
    whole = q.METHODS[method](w, bits, 32, symmetric)
    monkeypatch.setattr(q, "ROWS_PER_CHUNK", 16)  # 100 rows: 6 full chunks and a short one
    chunked = q.quantize(w, method, bits, 32, symmetric)
    assert np.array_equal(chunked.packed, whole.packed) and np.array_equal(chunked.scales, whole.scales)
    assert (whole.zero_points is None and chunked.zero_points is None) or \
        np.array_equal(chunked.zero_points, whole.zero_points)
    assert np.array_equal(chunked.dequantize(), whole.dequantize())
