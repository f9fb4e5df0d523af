// A backend wrapper that keeps the cache what a fresh computation of its tokens would hold, for packages whose cache
// cannot always go back or forward in place, as runtime/recompute.py and the Kotlin engine's Recompute.kt do.
//
// LongRoPE (manifest "rope_switch"): the graph rotates with the short tables while a step's total length is at most
// the switch and with the long ones after, so the cache is "short" up to the switch and "long" beyond:
//
//   growing past the switch     length 10, step([a, b, c]) with switch 12: cached keys are short, new ones long
//                               -> feed p0 .. p9, a, b, c again from an empty cache
//   truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh run of 20 tokens is short
//                               -> the 20 tokens are fed again, with the next step's ids
//
// Sliding window (io.kv_cache "window"): the buffer of C positions evicts the oldest G = C - W + 1 rows at once
// whenever the sequence passes C, C + G, ...; truncating from T back to n is in place only when no eviction happened
// between them, else the n tokens are fed again with the next step.

import { windowBuffer } from "./kvcache.js";

export class RopeSwitch {
  constructor(ropeSwitch) { this.switch = ropeSwitch; }

  /** Whether truncating a cache of `length` positions to `to` leaves what `to` fresh tokens would hold. */
  exact(length, to) { return !(length > this.switch && to <= this.switch); }

  /** Whether a step of `n` tokens after `past` must feed the whole sequence again. */
  crosses(past, n) { return past > 0 && past <= this.switch && past + n > this.switch; }

  /** The longest the cache may grow from `length` and be truncated back in place (null: any). */
  limit(length) { return length <= this.switch ? this.switch : null; }
}

export class Window {
  constructor(buffer, window) { this.buffer = buffer; this.window = window; }

  get batch() { return this.buffer - this.window + 1; }  // rows dropped at each eviction

  evictions(length) { return length <= this.buffer ? 0 : Math.ceil((length - this.buffer) / this.batch); }

  exact(length, to) { return this.evictions(length) === this.evictions(to); }

  crosses() { return false; }

  limit(length) { return this.buffer + this.batch * this.evictions(length); }
}

export class RecomputingBackend {
  constructor(inner, rules) {
    this.inner = inner;
    this.rules = rules;
    this.ids = new Int32Array(inner.capacity);  // the tokens of every cached position
    // positions the caller sees; the inner cache holds them all, or none while a truncation that could not be done
    // in place waits for the next step (stale: inner.length !== logical)
    this.logical = 0;
  }

  get manifest() { return this.inner.manifest; }

  get contract() { return this.inner.contract; }

  get vocabSize() { return this.inner.vocabSize; }

  get provider() { return this.inner.provider; }

  release() { return this.inner.release(); }

  get moved() { return this.inner.moved; }

  get cacheBytes() { return this.inner.cacheBytes; }

  get capacity() { return this.inner.capacity; }

  get canStepAll() { return this.inner.canStepAll; }

  get length() { return this.logical; }

  /** The longest the cache may grow from its length and still be truncated back in place (null: any). */
  get rollbackLimit() {
    const limits = this.rules.map((r) => r.limit(this.logical)).filter((x) => x != null);
    return limits.length ? Math.min(...limits) : null;
  }

  truncate(length) {
    if (!(length >= 0 && length <= this.logical)) throw new Error(`cannot truncate ${this.logical} positions to ${length}`);
    const stale = this.inner.length !== this.logical;
    if (stale || length === 0 || !this.rules.every((r) => r.exact(this.logical, length))) {
      this.inner.truncate(0);  // fed again with the next step
    } else {
      this.inner.truncate(length);
    }
    this.logical = length;
  }

  async step(ids) {
    return (await this.run(ids, 1))[0];
  }

  /** Appends `ids`; the logits of the last `keep` of them. */
  async run(ids, keep = 1) {
    const past = this.logical;
    const n = ids.length;
    if (n < 1) throw new Error("a step needs at least one token id");
    if (past + n > this.capacity) throw new Error(`${n} more tokens do not fit: ${past} of ${this.capacity} cache positions are in use`);
    let fed = ids;
    if (this.inner.length !== past || this.rules.some((r) => r.crosses(past, n))) {  // stale, or recompute
      this.inner.truncate(0);  // stale until the run below succeeds
      fed = [...this.ids.subarray(0, past), ...ids];  // the whole sequence, computed as a fresh run would
    }
    let out;
    try {
      out = await this.inner.run(fed, keep);
    } catch (e) {
      if (!this.rules.every((r) => r.exact(past + n, past))) this.inner.truncate(0);  // its runs may have evicted rows
      throw e;
    }
    this.ids.set(ids, past);
    this.logical = past + n;
    return out;
  }
}

/** What `manifest`'s package needs recomputed with a context of `context` positions (runtime/recompute.py rules). */
export function recomputeRules(manifest, context) {
  const rules = [];
  if (manifest.rope_switch != null) rules.push(new RopeSwitch(manifest.rope_switch));
  const window = manifest.io?.kv_cache?.window ?? null;
  if (window != null) rules.push(new Window(windowBuffer(window, context), window));
  return rules;
}

/** `backend` wrapped for `manifest`'s LongRoPE switch and sliding window, or as it is with neither. */
export function withRecompute(backend, manifest) {
  const rules = recomputeRules(manifest, backend.capacity);
  return rules.length ? new RecomputingBackend(backend, rules) : backend;
}
