// The package's ONNX I/O contract on onnxruntime-web (runtime/contract.py, runtime/engine.py):
//
//   input_ids        int64 (1, S)          the new tokens
//   attention_mask   int64 (1, P + S)      ones; P = positions already in the cache
//   past_key_values.L.key / .value          (1, kv_heads, P, kv_width), the KV storage dtype: exactly the P
//                                           positions held (int8 and int4 caches are int8 / uint8 bytes)
//   logits_to_keep   int64 (1,)            format 2 "last" packages: rows of logits wanted
//   logits           float32 (1, K, vocab)
//   present.L.key / .value                  (1, kv_heads, P + S, kv_width): fed back as the next step's past
//
// On wasm, past and present are not one buffer: onnxruntime-web copies every input into the wasm heap and every
// output out of it on each run. So the past passed is only the positions held (never a max_length-sized buffer):
// GroupQueryAttention appends the step to it in a present of P + S positions, which becomes the next past. Memory
// and the per-step copy grow with the conversation, O(P). On WebGPU they are one GPU buffer per (layer, kind)
// (js/kvcache.js GpuKvCache), so a step moves only the ids, the mask and the kept logits.

import { GpuKvCache, planContext, SHORT, stepRows, windowBuffer } from "./kvcache.js";
import { checkManifest } from "./package.js";

// KV storage dtype -> its typed array (float16 as raw 16-bit words).
const STORAGE = { float32: Float32Array, float16: Uint16Array, int8: Int8Array, uint8: Uint8Array };

export class Contract {
  constructor(manifest) {
    const io = manifest.io;
    const kv = io.kv_cache;
    this.nLayers = kv.n_layers;
    this.kvHeads = kv.kv_heads;
    this.headDim = kv.head_dim;
    this.kvDtype = kv.dtype;
    this.kvStorage = kv.storage_dtype ?? kv.dtype;  // packages before quantized caches: the float dtype
    this.kvWidth = kv.storage_head_dim ?? kv.head_dim;  // head_dim / 2 for int4 (two values per byte)
    this.vocabSize = manifest.model.vocab_size;
    this.logits = io.logits;
    this.logitsToKeep = io.inputs.some((i) => i.name === "logits_to_keep");
    this.window = kv.window ?? null;  // a sliding-window cache: the keys a query sees (runtime/contract.py)
    if (this.window !== null && !(Number.isInteger(this.window) && this.window >= 1)) {
      throw new Error(`manifest field io.kv_cache.window must be a positive integer or null, got ${JSON.stringify(kv.window)}`);
    }
    const past = kv.past ?? "past_key_values.{layer}.{kind}";
    const present = kv.present ?? "present.{layer}.{kind}";
    const name = (p, l, k) => p.replace("{layer}", String(l)).replace("{kind}", k);
    this.kvNames = [];
    for (let l = 0; l < this.nLayers; l++) {
      for (const k of ["key", "value"]) this.kvNames.push([name(past, l, k), name(present, l, k)]);
    }
  }
}

/** Most tokens one WebGPU run takes. onnxruntime-web 1.30's WebGPU GroupQueryAttention gives wrong logits for a run
 *  of 32 tokens or more on SwiftShader's adapter (subgroup size 4): 0.40-0.53 off on the demo package's logits against
 *  onnxruntime's CPU, where runs of 31 or fewer match within its int4 noise (0.04), cache or not (measured here,
 *  runtime/web/README.md). Whether a GPU with wider subgroups needs the cap is untested, so every adapter gets it:
 *  a long prompt costs a run per 31 tokens. */
export const WEBGPU_ROWS = 31;

/** The execution providers this engine runs on, in the order it prefers them. */
export const BACKENDS = ["webgpu", "wasm"];

/** Why `manifest`'s package cannot run on onnxruntime-web's WebGPU provider with `adapter` (a GPUAdapter or null),
 *  or null when it can. The graph itself is the same: only the cache's dtype and the GPU's features decide. */
export function webgpuRefusal(manifest, adapter) {
  if (!adapter) return "this browser exposes no WebGPU adapter";
  const kv = manifest.io.kv_cache;
  const storage = kv.storage_dtype ?? kv.dtype;
  if (!["float32", "float16"].includes(storage)) {
    return `the package's KV cache is ${storage}, which onnxruntime-web's WebGPU attention does not take; export ` +
      "it with --target web (a float32 cache)";
  }
  const f16 = storage === "float16" || manifest.quantization?.precision === "fp16";
  if (f16 && !adapter.features.has("shader-f16")) {
    return "the package computes in float16 and this GPU lacks WebGPU's shader-f16 feature; export it with " +
      "--target web (float32)";
  }
  const largest = manifest.export?.largest_tensor_bytes;
  const buffer = Math.min(adapter.limits.maxStorageBufferBindingSize, adapter.limits.maxBufferSize);
  if (largest && largest > buffer) {
    return `the package's largest weight takes ${Math.round(largest / 2 ** 20)} MiB and this GPU's largest buffer ` +
      `${Math.round(buffer / 2 ** 20)} MiB; export it with --target web (it checks WebGPU's 128 MiB guarantee)`;
  }
  if (kv.window != null) {
    return "sliding-window packages need GroupQueryAttention's sliding_window_cache, which onnxruntime-web's WebGPU " +
      "attention does not implement";
  }
  return null;
}

export class OrtBackend {
  /** `ort`: the onnxruntime-web module (ort.webgpu for "webgpu"); `source`: package.js's urlSource or fileSource;
   *  `backend`: "wasm" or "webgpu"; `device`: what kvcache.js planContext reads ({limits, memory}). */
  static async load(ort, source, { threads = 1, capacity = null, backend = "wasm", device = {}, onStage = () => {} } = {}) {
    if (!BACKENDS.includes(backend)) throw new Error(`backend ${backend} is not one of ${BACKENDS.join(", ")}`);
    const manifest = checkManifest(await source.json("manifest.json"));
    const plan = planContext(manifest, backend, { requested: capacity, device });  // before any download
    onStage("model");
    const model = await source.bytes("model.onnx");
    const external = [];
    for (const name of Object.keys(manifest.files ?? {})) {
      if (name !== "model.onnx" && name.startsWith("model.onnx")) {
        external.push({ path: name, data: await source.bytes(name) });
      }
    }
    ort.env.wasm.numThreads = threads;
    let session;
    try {
      session = await ort.InferenceSession.create(model, {
        executionProviders: [backend], graphOptimizationLevel: "all", externalData: external,
      });
    } catch (e) {
      throw new Error(`onnxruntime-web could not load the package on ${backend}: ${String(e.message ?? e).split("\n")[0]}`);
    }
    external.length = 0;  // the session holds its own copy (the wasm heap, or GPU buffers): let these go
    const engine = new OrtBackend(ort, manifest, session, plan.context, backend);
    engine.plan = plan;
    return engine;
  }

  constructor(ort, manifest, session, capacity, backend = "wasm") {
    this.ort = ort;
    this.manifest = manifest;
    this.session = session;
    this.provider = backend;  // "wasm" or "webgpu"
    this.contract = new Contract(manifest);
    if (!(capacity >= 1 && capacity <= manifest.max_length)) {
      throw new Error(`context ${capacity} is outside 1..${manifest.max_length} (the rotary tables' length)`);
    }
    const c = this.contract;
    if (!(c.kvStorage in STORAGE)) throw new Error(`KV cache dtype ${c.kvStorage} is not one this engine knows`);
    this.capacity = capacity;  // the most positions held
    this.length = 0;
    // A sliding-window package passes a buffer of windowBuffer positions at every step (the graph evicts within it,
    // and refuses fewer than the window); any other holds exactly the positions in use (wasm) or a growing buffer.
    this.windowBuffer = c.window == null ? null : windowBuffer(c.window, capacity);
    this.gpu = backend === "webgpu" ? new GpuKvCache(ort, ort.env.webgpu.device, c, capacity, this.windowBuffer) : null;
    this.past = this.gpu ? null : this.cacheOf(this.windowBuffer ?? 0);
    this.mask = new BigInt64Array(0);
    this.moved = 0;  // bytes copied between the page and the session's memory (wasm heap or GPU), all runs
  }

  /** Empty-valued past tensors of `positions` positions. */
  cacheOf(positions) {
    const c = this.contract;
    const Array = STORAGE[c.kvStorage];
    return c.kvNames.map(() => new this.ort.Tensor(c.kvStorage, new Array(c.kvHeads * positions * c.kvWidth),
      [1, c.kvHeads, positions, c.kvWidth]));
  }

  /** Bytes the cache holds now (on WebGPU: its buffers, allocated ahead of the positions in use). */
  get cacheBytes() { return this.gpu ? this.gpu.nbytes : this.past.reduce((sum, t) => sum + t.data.byteLength, 0); }

  get vocabSize() { return this.contract.vocabSize; }

  get canStepAll() { return this.contract.logits === "all" || this.contract.logitsToKeep; }

  /** Appends `ids`; the logits (Float32Array rows) of the last `keep` of them. A "last" package takes a long step
   *  in runs whose attention scratch is bounded (stepRows: heads x rows x positions float32 scores); a step that
   *  crosses the LongRoPE switch gets a mask padded with zeros past it in each run, so every run uses the long
   *  tables as one run would (runtime/engine.py does the same). */
  async run(ids, keep = 1) {
    const n = ids.length;
    if (n < 1) throw new Error("a step needs at least one token id");
    if (this.length + n > this.capacity) {
      throw new Error(`${n} more tokens do not fit: ${this.length} of ${this.capacity} cache positions are in use`);
    }
    const cap = this.gpu ? WEBGPU_ROWS : Infinity;
    if ((this.contract.logits !== "last" && n <= cap) || n <= SHORT) return this.runOnce(ids, keep, 0);  // decode
    const past = this.length;
    const sw = this.manifest.rope_switch;
    const width = sw != null && past <= sw && sw < past + n ? sw + 1 : 0;
    const heads = this.manifest.model?.num_attention_heads ?? this.contract.kvHeads;
    const rows = Math.min(cap, stepRows(heads, this.windowBuffer ?? past + n));  // the cache holds the positions in use
    let start = 0;
    try {
      while (n - start > Math.max(rows, keep)) {  // the rows whose logits are kept go in the last run
        const size = Math.min(rows, n - start - keep);
        await this.runOnce(ids.slice(start, start + size), 1, width);
        start += size;
      }
      return await this.runOnce(start === 0 ? ids : ids.slice(start), keep, 0);
    } catch (e) {
      if (this.length > past) this.truncate(past);  // a step is whole or not at all
      throw e;
    }
  }

  /** One session run appending `ids`; the logits of the last `keep`. The mask is `width` wide at least (zeros past
   *  the positions held). */
  async runOnce(ids, keep, width) {
    const n = ids.length;
    const ort = this.ort;
    if (this.mask.length < this.length + n) {  // ones for the attention mask, grown as the cache is (doubling)
      this.mask = new BigInt64Array(Math.min(this.capacity, Math.max(this.length + n, 2 * this.mask.length))).fill(1n);
    }
    let mask = this.mask.subarray(0, this.length + n);
    if (width > this.length + n) {
      mask = new BigInt64Array(width);
      mask.fill(1n, 0, this.length + n);
    }
    const feeds = {
      input_ids: new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, n]),
      attention_mask: new ort.Tensor("int64", mask, [1, mask.length]),
    };
    if (this.contract.logitsToKeep) feeds.logits_to_keep = new ort.Tensor("int64", BigInt64Array.of(BigInt(keep)), [1]);
    let moved = 8 * (n + mask.length + (this.contract.logitsToKeep ? 1 : 0));
    let out;
    if (this.gpu) {  // past and present: one GPU buffer each, written in place (shared-buffer GroupQueryAttention)
      this.gpu.reserve(this.length + n, this.length);
      const fetches = { logits: null };
      this.contract.kvNames.forEach(([past, present], i) => {
        feeds[past] = this.gpu.tensors[i];
        fetches[present] = this.gpu.tensors[i];
      });
      out = await this.session.run(feeds, fetches);
    } else {
      this.contract.kvNames.forEach(([past], i) => { feeds[past] = this.past[i]; });
      moved += this.cacheBytes;  // the past copied into the heap
      out = await this.session.run(feeds);
      this.past = this.contract.kvNames.map(([, present]) => out[present]);
      moved += this.cacheBytes;  // and the present copied out
    }
    this.length += n;
    const logits = out.logits;
    moved += logits.data.byteLength;
    this.moved += moved;
    const rows = logits.dims[1];
    const vocab = logits.dims[2];
    const data = logits.data;
    const result = [];
    for (let r = rows - keep; r < rows; r++) result.push(data.subarray(r * vocab, (r + 1) * vocab));
    return result;
  }

  async step(ids) {
    return (await this.run(ids, 1))[0];
  }

  truncate(length) {
    if (!(length >= 0 && length <= this.length)) throw new Error(`cannot truncate ${this.length} positions to ${length}`);
    if (length === this.length) return;
    if (this.gpu || this.windowBuffer != null) {  // rows past `length` are overwritten by the next step, never read
      this.length = length;
      return;
    }
    const c = this.contract;
    const kept = this.cacheOf(length);
    if (length > 0) {  // each head's first `length` positions (BNSH: a head's positions are contiguous)
      const held = this.length * c.kvWidth;
      const keep = length * c.kvWidth;
      this.past.forEach((t, i) => {
        for (let h = 0; h < c.kvHeads; h++) kept[i].data.set(t.data.subarray(h * held, h * held + keep), h * keep);
      });
    }
    this.past = kept;
    this.length = length;
  }

  /** Frees the session and, on WebGPU, the cache's buffers. */
  async release() {
    this.gpu?.release();
    await this.session.release();
  }
}
