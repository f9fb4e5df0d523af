// LongRoPE packages (manifest "rope_switch"): a backend wrapper that keeps the cache what a fresh computation of its
// tokens would hold, as runtime/longrope.py and the Kotlin engine's LongRope.kt do.
//
// The graph rotates with the short tables while a step's total length is at most `switch` and with the long ones
// after, so the cache is "short" while its length is at most `switch` and "long" beyond. Two moves would mix them:
//
//   growing past the switch     length 10, step([a, b, c]) with switch 12: cached keys are short, new ones long
//                               -> feed p0 .. p9, a, b, c again from an empty cache
//   truncating back below it    length 40 (long), truncate(20) with switch 32: a fresh run of 20 tokens is short
//                               -> the 20 tokens are fed again, with the next step's ids

export class LongRopeBackend {
  constructor(inner, ropeSwitch) {
    this.inner = inner;
    this.ropeSwitch = ropeSwitch;
    this.ids = new Int32Array(inner.capacity);  // the tokens of every cached position
    // positions the caller sees; the inner cache holds them all, or none while a truncation across the switch
    // waits for the next step (stale: inner.length !== logical)
    this.logical = 0;
  }

  get manifest() { return this.inner.manifest; }

  get contract() { return this.inner.contract; }

  get vocabSize() { return this.inner.vocabSize; }

  get capacity() { return this.inner.capacity; }

  get canStepAll() { return this.inner.canStepAll; }

  get length() { return this.logical; }

  truncate(length) {
    if (!(length >= 0 && length <= this.logical)) throw new Error(`cannot truncate ${this.logical} positions to ${length}`);
    const stale = this.inner.length !== this.logical;
    if (stale || length === 0 || (this.inner.length > this.ropeSwitch && length <= this.ropeSwitch)) {
      this.inner.truncate(0);  // keys rotated with the long tables where a fresh run would use the short ones
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
    if (this.inner.length !== past || (past > 0 && past <= this.ropeSwitch && past + n > this.ropeSwitch)) {
      this.inner.truncate(0);  // stale until the run below succeeds
      fed = [...this.ids.subarray(0, past), ...ids];  // the whole sequence, computed as a fresh run would
    }
    const out = await this.inner.run(fed, keep);
    this.ids.set(ids, past);
    this.logical = past + n;
    return out;
  }
}

/** `backend` wrapped for a LongRoPE package's switch, or as it is when the package has none. */
export function withRopeSwitch(backend, ropeSwitch) {
  return ropeSwitch == null ? backend : new LongRopeBackend(backend, ropeSwitch);
}
