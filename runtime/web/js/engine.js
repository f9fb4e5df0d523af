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
// Past and present are not one buffer here: onnxruntime-web's wasm backend copies every input into the wasm
// heap and every output out of it on each run. So the past passed is only the positions held (never a
// max_length-sized buffer): GroupQueryAttention appends the step to it in a present of P + S positions, which
// becomes the next past. Memory and the per-step copy grow with the conversation, O(P), and an int8 cache
// copies a quarter of float32's bytes.

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

/** Attention scores one run may take, and the fewest / most tokens per run (runtime/kvcache.py step_rows). */
export const SCRATCH = 32 * 2 ** 20;
export const ROWS = [64, 256];
export const SHORT = 16;  // tokens: a step this short (decode, a verification) is one run
/** A sliding-window package's buffer holds this many positions beyond its window (runtime/kvcache.py EVICT). */
export const EVICT = 256;

/** Positions a sliding-window cache's buffer holds: its window and EVICT more, no more than the context needs, never
 *  fewer than the window (GroupQueryAttention refuses a smaller buffer). */
export function windowBuffer(window, context) {
  return Math.max(window, Math.min(context, window + EVICT));
}

/** Most tokens one run appends to a cache of `capacity` positions. */
export function stepRows(heads, capacity) {
  return Math.min(ROWS[1], Math.max(ROWS[0], Math.floor(SCRATCH / (4 * heads * capacity))));
}

export class OrtBackend {
  /** `ort`: the onnxruntime-web module; `source`: package.js's urlSource or fileSource. */
  static async load(ort, source, { threads = 1, capacity = null, onStage = () => {} } = {}) {
    const manifest = checkManifest(await source.json("manifest.json"));
    onStage("model");
    const model = await source.bytes("model.onnx");
    const external = [];
    for (const name of Object.keys(manifest.files ?? {})) {
      if (name !== "model.onnx" && name.startsWith("model.onnx")) {
        external.push({ path: name, data: await source.bytes(name) });
      }
    }
    ort.env.wasm.numThreads = threads;
    const session = await ort.InferenceSession.create(model, {
      executionProviders: ["wasm"], graphOptimizationLevel: "all", externalData: external,
    });
    return new OrtBackend(ort, manifest, session, capacity ?? manifest.max_length);
  }

  constructor(ort, manifest, session, capacity) {
    this.ort = ort;
    this.manifest = manifest;
    this.session = session;
    this.contract = new Contract(manifest);
    if (!(capacity >= 1 && capacity <= manifest.max_length)) {
      throw new Error(`context ${capacity} is outside 1..${manifest.max_length} (the rotary tables' length)`);
    }
    const c = this.contract;
    if (!(c.kvStorage in STORAGE)) throw new Error(`KV cache dtype ${c.kvStorage} is not one this engine knows`);
    this.capacity = capacity;  // the most positions held; the cache itself holds only `length`
    this.length = 0;
    // A sliding-window package passes a buffer of windowBuffer positions at every step (the graph evicts within it,
    // and refuses fewer than the window); any other holds exactly the positions in use.
    this.windowBuffer = c.window == null ? null : windowBuffer(c.window, capacity);
    this.past = this.cacheOf(this.windowBuffer ?? 0);
    this.mask = new BigInt64Array(0);
  }

  /** Empty-valued past tensors of `positions` positions. */
  cacheOf(positions) {
    const c = this.contract;
    const Array = STORAGE[c.kvStorage];
    return c.kvNames.map(() => new this.ort.Tensor(c.kvStorage, new Array(c.kvHeads * positions * c.kvWidth),
      [1, c.kvHeads, positions, c.kvWidth]));
  }

  /** Bytes the cache holds now. */
  get cacheBytes() { return this.past.reduce((sum, t) => sum + t.data.byteLength, 0); }

  get vocabSize() { return this.contract.vocabSize; }

  get canStepAll() { return this.contract.logits === "all" || this.contract.logitsToKeep; }

  /** Appends `ids`; the logits (Float32Array rows) of the last `keep` of them. A "last" package takes a long step
   *  in runs whose attention scratch is bounded (stepRows, the wasm heap's share of it: heads x rows x positions
   *  float32 scores); a step that crosses the LongRoPE switch gets a mask padded with zeros past it in each run, so
   *  every run uses the long tables as one run would (runtime/engine.py does the same). */
  async run(ids, keep = 1) {
    const n = ids.length;
    if (n < 1) throw new Error("a step needs at least one token id");
    if (this.length + n > this.capacity) {
      throw new Error(`${n} more tokens do not fit: ${this.length} of ${this.capacity} cache positions are in use`);
    }
    if (this.contract.logits !== "last" || n <= SHORT) return this.runOnce(ids, keep, 0);  // decode: never split
    const past = this.length;
    const sw = this.manifest.rope_switch;
    const width = sw != null && past <= sw && sw < past + n ? sw + 1 : 0;
    const heads = this.manifest.model?.num_attention_heads ?? this.contract.kvHeads;
    const rows = stepRows(heads, this.windowBuffer ?? past + n);  // the cache holds exactly the positions in use
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
    this.contract.kvNames.forEach(([past], i) => { feeds[past] = this.past[i]; });
    const out = await this.session.run(feeds);
    this.past = this.contract.kvNames.map(([, present]) => out[present]);
    this.length += n;
    const logits = out.logits;
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
    if (this.windowBuffer != null) {  // rows past `length` are overwritten by the next step and never read before
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
}
