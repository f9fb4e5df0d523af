// The KV cache on the web (runtime/kvcache.py, KvCache.kt): the growth policy, the context a device can hold, and
// on WebGPU the cache itself, kept in GPU buffers that GroupQueryAttention reads and appends to in place.
//
//   wasm     onnxruntime-web copies every input into the WebAssembly heap and every output out of it on each run,
//            so past and present cannot be one buffer: the engine passes exactly the P positions held and gets
//            P + S back (js/engine.js). A step moves the whole cache twice.
//   webgpu   one GPUBuffer per (layer, kind), bound as both past and present (the session's fetches name it as the
//            present output: onnxruntime-web's IO binding), so a step moves only the new ids and the mask in and
//            the kept logits out. The buffers grow as runtime/kvcache.py's do (FIRST positions, then at least
//            doubling, multiples of STEP), each head's held positions copied on the GPU.

/** Positions of the first allocation; every allocation and planned context is a multiple of STEP. */
export const FIRST = 256;
export const STEP = 64;
/** Attention scores one run may take, and the fewest / most tokens per run (runtime/kvcache.py step_rows). */
export const SCRATCH = 32 * 2 ** 20;
export const ROWS = [64, 256];
export const SHORT = 16;  // tokens: a step this short (decode, a verification) is one run
/** A sliding-window package's buffer holds this many positions beyond its window (runtime/kvcache.py EVICT). */
export const EVICT = 256;
/** Of the memory a device reports, the share the page plans to use (runtime/kvcache.py SHARE), and what
 *  onnxruntime-web, the tokenizer and the page take besides weights and cache. */
export const SHARE = 0.6;
export const OVERHEAD = 96 * 2 ** 20;
/** A WebAssembly (wasm32) heap is at most 4 GiB: weights, the cache's two copies and scratch all live in it. */
export const WASM_HEAP = 4 * 2 ** 30;

const MIB = 2 ** 20;
const mib = (n) => (n >= MIB ? `${Math.round(n / MIB)} MiB` : `${Math.round(n / 1024)} KiB`);

/** Positions a sliding-window cache's buffer holds: its window and EVICT more, no more than the context needs, never
 *  fewer than the window (GroupQueryAttention refuses a smaller buffer). */
export function windowBuffer(window, context) {
  return Math.max(window, Math.min(context, window + EVICT));
}

/** Most tokens one run appends to a cache of `capacity` positions. */
export function stepRows(heads, capacity) {
  return Math.min(ROWS[1], Math.max(ROWS[0], Math.floor(SCRATCH / (4 * heads * capacity))));
}

/** Positions to allocate for `needed` when `allocated` are (needed <= limit): at least double, multiples of STEP, at
 *  most `limit` (runtime/kvcache.py grown_capacity). */
export function grownCapacity(allocated, needed, limit) {
  if (needed > limit) throw new Error(`${needed} positions do not fit in a context of ${limit}`);
  if (needed <= allocated) return allocated;
  const size = Math.max(needed, 2 * allocated, FIRST);
  return Math.min(limit, Math.ceil(size / STEP) * STEP);
}

/** Bytes of the package's weight files (model.onnx and its external data), from the manifest. */
export function weightBytes(manifest) {
  return Object.entries(manifest.files ?? {}).filter(([name]) => name.startsWith("model.onnx"))
    .reduce((sum, [, entry]) => sum + Number(entry.bytes ?? 0), 0);
}

/**
 * The context (KV cache positions) `manifest`'s package may use on this device, decided before anything is loaded
 * (runtime/kvcache.py plan_context, ContextPlan.kt), or an Error with one line saying what does not fit.
 *
 *   wasm    the heap (4 GiB) holds the weights, the cache twice (the past passed in and the present copied out)
 *           and the logits; the rest of the page is outside it
 *   webgpu  each (layer, kind) buffer within the device's maxStorageBufferBindingSize, and weights + cache within
 *           SHARE of the memory the browser reports (navigator.deviceMemory, GiB, Chrome only; unknown elsewhere)
 *
 * `device`: { limits: { maxStorageBufferBindingSize, maxBufferSize }, memory: bytes or null }.
 */
export function planContext(manifest, backend, { requested = null, device = {} } = {}) {
  const max = manifest.max_length;
  if (requested != null && !(Number.isInteger(requested) && requested >= 1 && requested <= max)) {
    throw new Error(`context ${requested} is outside 1..${max} (the package's max_length); pass at most ${max}`);
  }
  const kv = manifest.io.kv_cache;
  const perPosition = kv.bytes_per_token;
  const weights = weightBytes(manifest);
  const logits = manifest.model.vocab_size * 4;
  const want = requested ?? max;
  const window = kv.window ?? null;
  const held = (context) => (window == null ? context : windowBuffer(window, context));
  const least = window == null ? Math.min(STEP, want) : window;
  const limits = [];  // [positions, why]
  let budget = null;
  let label = null;
  if (backend === "wasm") {
    budget = WASM_HEAP - weights - logits - OVERHEAD;
    label = `the 4 GiB WebAssembly heap (weights ${mib(weights)}, the cache held twice)`;
    limits.push([Math.floor(Math.max(budget, 0) / (2 * perPosition)), label]);
  } else {
    const buffer = Math.min(device.limits?.maxStorageBufferBindingSize ?? Infinity, device.limits?.maxBufferSize ?? Infinity);
    const perBuffer = perPosition / (2 * kv.n_layers);  // one (layer, kind) buffer's bytes per position
    if (Number.isFinite(buffer)) limits.push([Math.floor(buffer / perBuffer), `the GPU's largest buffer (${mib(buffer)})`]);
    if (device.memory != null) {
      budget = device.memory * SHARE - weights - logits - OVERHEAD;
      label = `${mib(device.memory * SHARE)} of the ${mib(device.memory)} the browser reports`;
      limits.push([Math.floor(Math.max(budget, 0) / perPosition), label]);
    }
  }
  let context = want;
  let why = "fits";
  for (const [fits, reason] of limits) {
    if (held(context) > fits) {
      context = window == null ? Math.floor(fits / STEP) * STEP : (fits >= window ? context : 0);
      why = `limited by ${reason}`;
    }
  }
  if (context < least) {
    const need = weights + logits + OVERHEAD + perPosition * least * (backend === "wasm" ? 2 : 1);
    throw new Error(`this package needs ${mib(need)} for its weights and ${least} positions of KV cache on ` +
      `${backend}, more than ${why.replace("limited by ", "")} allows; use a smaller package (int4 weights, a ` +
      "shorter --max-length) or another device");
  }
  return { context, maxLength: max, why, weights, perPosition, backend,
    describe: () => `context ${context} of ${max} positions (${why}): weights ${mib(weights)} + KV cache ` +
      `${mib(perPosition * held(context))} at most` };
}

/** Element bytes of the KV storage dtypes a GPU cache takes. */
const GPU_ELEMENT = { float32: 4, float16: 2 };

/**
 * The cache on WebGPU: one GPUBuffer (1, kv_heads, capacity, kv_width) per (layer, kind) on onnxruntime-web's own
 * device, wrapped as a gpu-buffer Tensor that the session reads as past and writes as present. `reserve` grows the
 * buffers (copying each head's first `length` positions on the GPU, queued before the next run); a sliding-window
 * package's buffer is allocated whole at the first step, as GroupQueryAttention evicts within it.
 */
export class GpuKvCache {
  constructor(ort, device, contract, limit, fixed = null) {
    if (!(contract.kvStorage in GPU_ELEMENT)) {
      throw new Error(`a ${contract.kvStorage} KV cache cannot live on the GPU; export with --target web (float32)`);
    }
    this.ort = ort;
    this.device = device;
    this.contract = contract;
    this.limit = limit;
    this.fixed = fixed;  // a window package's buffer positions, or null
    this.row = contract.kvWidth * GPU_ELEMENT[contract.kvStorage];  // bytes of one position of one head
    this.capacity = 0;
    this.tensors = [];
  }

  get nbytes() { return this.capacity * this.row * this.contract.kvHeads * this.tensors.length; }

  allocate(positions) {
    const c = this.contract;
    const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
    return c.kvNames.map(() => {
      const buffer = this.device.createBuffer({ size: c.kvHeads * positions * this.row, usage });  // zeroed
      return this.ort.Tensor.fromGpuBuffer(buffer, { dataType: c.kvStorage, dims: [1, c.kvHeads, positions, c.kvWidth],
        dispose: () => buffer.destroy() });
    });
  }

  /** Room for `needed` positions, the first `length` kept. */
  reserve(needed, length) {
    const next = this.fixed ?? grownCapacity(this.capacity, needed, this.limit);
    if (next === this.capacity) return;
    const fresh = this.allocate(next);
    if (length > 0) {
      const encoder = this.device.createCommandEncoder();
      this.tensors.forEach((old, i) => {
        for (let h = 0; h < this.contract.kvHeads; h++) {
          encoder.copyBufferToBuffer(old.gpuBuffer, h * this.capacity * this.row, fresh[i].gpuBuffer, h * next * this.row,
            length * this.row);
        }
      });
      this.device.queue.submit([encoder.finish()]);
    }
    this.tensors.forEach((t) => t.dispose());  // destroyed once the copies queued above have run
    this.tensors = fresh;
    this.capacity = next;
  }

  release() {
    this.tensors.forEach((t) => t.dispose());
    this.tensors = [];
    this.capacity = 0;
  }
}
