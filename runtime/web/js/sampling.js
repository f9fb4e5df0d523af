// Next-token choice (runtime/sampling.py): greedy, or repetition penalty -> temperature -> top-k -> top-p ->
// a seeded draw. Greedy equals Python's exactly (argmax, lowest id on ties); a seeded draw uses its own PRNG
// (mulberry32), so sampled text differs from Python's for the same seed, as the Kotlin engine's does.

export const DEFAULT_SAMPLING = { temperature: 0.7, topK: 0, topP: 0.95, seed: null, repetitionPenalty: 1.0 };
// Temperature and penalty divide float32 logits: 0 (greedy temperature) or float32's normal range, the values
// runtime/sampling.py and the Kotlin engine accept.
export const FLOAT32_TINY = 1.1754943508222875e-38;
export const FLOAT32_MAX = 3.4028234663852886e38;
const normal = (x) => typeof x === "number" && x >= FLOAT32_TINY && x <= FLOAT32_MAX;

function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Sampler {
  /** `suppress`: ids never drawn (embedding rows the tokenizer cannot decode), or null. */
  constructor(config = {}, suppress = null) {
    this.c = { ...DEFAULT_SAMPLING, ...config };
    const c = this.c;
    if (!(c.temperature === 0 || normal(c.temperature))) {
      throw new Error(`temperature must be 0 (greedy) or a number from ${FLOAT32_TINY} to ${FLOAT32_MAX} (float32's ` +
        `normal range), got ${c.temperature}`);
    }
    if (!(Number.isInteger(c.topK) && c.topK >= 0)) throw new Error(`top-k must be an integer >= 0 (0 keeps every token), got ${c.topK}`);
    if (!(typeof c.topP === "number" && c.topP > 0 && c.topP <= 1)) throw new Error(`top-p must be a number in (0, 1], got ${c.topP}`);
    if (!normal(c.repetitionPenalty)) {
      throw new Error(`repetition penalty must be a number from ${FLOAT32_TINY} to ${FLOAT32_MAX} (1 is off), got ${c.repetitionPenalty}`);
    }
    this.random = mulberry32(this.c.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.suppress = suppress;
    this.seen = new Set();
  }

  observe(ids) {
    if (this.c.repetitionPenalty !== 1) for (const id of ids) this.seen.add(id);
  }

  prepare(row) {
    const logits = Float32Array.from(row);
    const p = this.c.repetitionPenalty;
    // float32 arithmetic, as numpy's on a float32 row: a large quotient becomes +Infinity
    if (p !== 1) for (const id of this.seen) logits[id] = logits[id] > 0 ? logits[id] / p : logits[id] * p;
    if (this.suppress) for (const id of this.suppress) logits[id] = -Infinity;
    let best = -Infinity;
    for (const x of logits) {
      if (Number.isNaN(x)) best = NaN;
      else if (x > best) best = x;
    }
    if (!(best > -Infinity)) {
      throw new Error("the model returned no usable logits (NaN, or -inf for every token it may emit); the package " +
        "is damaged or its weights diverged, re-export it");
    }
    return logits;
  }

  sample(row) {
    const logits = this.prepare(row);
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    if (this.c.temperature === 0) return best;
    const max = logits[best];
    const ids = [];
    const w = new Float64Array(logits.length);
    for (let i = 0; i < logits.length; i++) {
      // the largest logits weigh 1 even when +Infinity; -Infinity (suppressed ids) weighs 0 at any temperature
      w[i] = logits[i] === max ? 1 : Math.fround(Math.exp((logits[i] - max) / this.c.temperature));
      if (w[i] > 0) ids.push(i);
    }
    ids.sort((a, b) => w[b] - w[a] || a - b);  // descending weight, ties by id
    let keep = ids.length;
    if (this.c.topK > 0 && this.c.topK < keep) {
      const last = w[ids[this.c.topK - 1]];
      keep = this.c.topK;
      while (keep < ids.length && w[ids[keep]] === last) keep++;  // ties with the k-th stay, as transformers keeps them
    }
    if (this.c.topP < 1) {
      let total = 0;
      for (let i = 0; i < keep; i++) total += w[ids[i]];
      let sum = 0;
      for (let i = 0; i < keep; i++) {
        sum += w[ids[i]];
        if (sum >= this.c.topP * total) { keep = i + 1; break; }
      }
    }
    let total = 0;
    for (let i = 0; i < keep; i++) total += w[ids[i]];
    let u = this.random() * total;
    for (let i = 0; i < keep; i++) {
      u -= w[ids[i]];
      if (u < 0) return ids[i];
    }
    return ids[keep - 1];
  }
}
