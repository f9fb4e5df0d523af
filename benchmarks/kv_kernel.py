"""python -m benchmarks.kv_kernel [--shape phi-3-mini|phi-4-mini] [--positions 256 2048 8192] [--new 1] [--json OUT]

One step of `--new` tokens (1: a decode step; 512: a prefill chunk) of one layer's GroupQueryAttention (ONNX Runtime's CPU kernel, rotary inside, past and present one
buffer as our packages bind them) at each number of cached positions, for a float32, float16 (query cast to
float16, as export's --kv-dtype float16 graphs run), int8 and int4 cache: the part of decoding the KV dtype
changes, measured without the rest of the model. Cache contents are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

SHAPES = {"phi-3-mini": (32, 32, 96), "phi-4-mini": (24, 8, 128)}  # heads, kv heads, head dim
KINDS = {"float32": (TensorProto.FLOAT, np.float32, 1), "float16": (TensorProto.FLOAT16, np.float16, 1),
         "int8": (TensorProto.INT8, np.int8, 1), "int4": (TensorProto.UINT8, np.uint8, 2)}


def session(kind: str, heads: int, kv_heads: int, head: int, capacity: int, threads: int):
    cache_type, cache_np, per = KINDS[kind]
    query_type = TensorProto.FLOAT16 if kind == "float16" else TensorProto.FLOAT
    query_np = np.float16 if kind == "float16" else np.float32
    width = head // per
    io = [helper.make_tensor_value_info("qkv", query_type, [1, "S", (heads + 2 * kv_heads) * head]),
          helper.make_tensor_value_info("past_key", cache_type, [1, kv_heads, capacity, width]),
          helper.make_tensor_value_info("past_value", cache_type, [1, kv_heads, capacity, width]),
          helper.make_tensor_value_info("seqlens", TensorProto.INT32, [1]),
          helper.make_tensor_value_info("total", TensorProto.INT32, [1])]
    freqs = np.outer(np.arange(capacity), 1.0 / (10000 ** (np.arange(0, head, 2) / head)))
    inits = [helper.make_tensor("cos", query_type, [capacity, head // 2], np.cos(freqs).astype(query_np).ravel()),
             helper.make_tensor("sin", query_type, [capacity, head // 2], np.sin(freqs).astype(query_np).ravel())]
    inputs = ["qkv", "", "", "past_key", "past_value", "seqlens", "total", "cos", "sin"]
    attrs = dict(num_heads=heads, kv_num_heads=kv_heads, do_rotary=1)
    if per == 2 or cache_type == TensorProto.INT8:
        inputs += ["", "", "", "k_scale", "v_scale"]
        attrs.update(k_quant_type="PER_CHANNEL", v_quant_type="PER_CHANNEL", kv_cache_bit_width=8 // per)
        inits += [helper.make_tensor(n, TensorProto.FLOAT, [1, kv_heads, 1, head], np.full(kv_heads * head, 0.02,
                                                                                           np.float32).ravel())
                  for n in ("k_scale", "v_scale")]
    node = helper.make_node("GroupQueryAttention", inputs, ["out", "present_key", "present_value"],
                            domain="com.microsoft", **attrs)
    outs = [helper.make_tensor_value_info("out", query_type, [1, "S", heads * head]),
            helper.make_tensor_value_info("present_key", cache_type, [1, kv_heads, capacity, width]),
            helper.make_tensor_value_info("present_value", cache_type, [1, kv_heads, capacity, width])]
    model = helper.make_model(helper.make_graph([node], "attention", io, outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    cache = [ort.OrtValue.ortvalue_from_numpy(rng.integers(-50, 50, (1, kv_heads, capacity, width)).astype(cache_np))
             for _ in range(2)]
    binding = s.io_binding()
    for name, value in zip(("key", "value"), cache):
        binding.bind_ortvalue_input(f"past_{name}", value)
        binding.bind_ortvalue_output(f"present_{name}", value)
    binding.bind_output("out")
    return s, binding, query_np, cache


def step_ms(kind: str, shape: tuple[int, int, int], positions: int, threads: int, seconds: float,
            new: int = 1) -> float:
    heads, kv_heads, head = shape
    s, binding, query_np, _cache = session(kind, heads, kv_heads, head, positions + new, threads)
    x = (np.random.default_rng(0).standard_normal((1, new, (heads + 2 * kv_heads) * head)) * 0.5).astype(query_np)
    binding.bind_cpu_input("qkv", x)
    binding.bind_cpu_input("seqlens", np.array([positions + new - 1], np.int32))
    binding.bind_cpu_input("total", np.array([positions + new], np.int32))
    for _ in range(3):
        s.run_with_iobinding(binding)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t = time.perf_counter()
        s.run_with_iobinding(binding)
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kv_kernel", description=__doc__.split("\n\n")[1])
    p.add_argument("--shape", choices=list(SHAPES), default="phi-3-mini")
    p.add_argument("--positions", type=int, nargs="+", default=[256, 2048, 8192])
    p.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    p.add_argument("--new", type=int, default=1, help="tokens per step: 1 a decode step, more a prefill chunk")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.0, help="timing per point (median step)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = [{"kind": k, "positions": n, "new": args.new,
             "ms_per_layer_step": step_ms(k, SHAPES[args.shape], n, args.threads, args.seconds, args.new)}
            for n in args.positions for k in args.kinds]
    print("| cached positions |" + "".join(f" {k} ms |" for k in args.kinds) + "\n|---:|" + "---:|" * len(args.kinds))
    for n in args.positions:
        print(f"| {n} |" + "".join(f" {r['ms_per_layer_step']:.3f} |" for r in rows if r["positions"] == n))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tool": "benchmarks.kv_kernel", "shape": args.shape, "threads": args.threads, "new": args.new,
                       "onnxruntime": ort.__version__, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
