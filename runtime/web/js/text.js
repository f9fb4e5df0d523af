// Streaming text (runtime/text.py): tokens pushed one by one come out as whole characters, and stop strings
// are found across token boundaries without ever showing a stop string or what follows it.

const REPLACEMENT = "\uFFFD";

/** Decodes from a few tokens back so decoders that treat the first token specially stay right. */
export class IncrementalDecoder {
  constructor(decode, context = []) {
    this.decode = decode;
    this.ids = [...context];  // context: prompt tokens, decoded for reference, never emitted
    this.prefix = this.read = this.ids.length;
    if (this.ids.length) this.prefix = Math.max(0, this.ids.length - 4);
  }

  push(token) {
    this.ids.push(token);
    return this.advance(false);
  }

  flush() {
    return this.advance(true);
  }

  advance(final) {
    const before = this.decode(this.ids.slice(this.prefix, this.read));
    const text = this.decode(this.ids.slice(this.prefix));
    if (text.length <= before.length || (text.endsWith(REPLACEMENT) && !final)) return "";
    this.prefix = this.read;
    this.read = this.ids.length;
    return text.slice(before.length);
  }
}

/** Holds back any tail that could start a stop string; sets `stopped` at the first one. */
export class StopMatcher {
  constructor(stops = []) {
    this.stops = stops.filter((s) => s);
    this.held = "";
    this.stopped = false;
  }

  push(text) {
    if (this.stopped) return "";
    const buffer = this.held + text;
    const hits = this.stops.map((s) => buffer.indexOf(s)).filter((i) => i >= 0);
    if (hits.length) {
      this.stopped = true;
      this.held = "";
      return buffer.slice(0, Math.min(...hits));
    }
    const keep = this.partial(buffer);
    this.held = buffer.slice(buffer.length - keep);
    return buffer.slice(0, buffer.length - keep);
  }

  flush() {
    const held = this.held;
    this.held = "";
    return this.stopped ? "" : held;
  }

  partial(buffer) {
    const longest = Math.max(0, ...this.stops.map((s) => s.length));
    for (let n = Math.min(buffer.length, longest - 1); n > 0; n--) {
      const tail = buffer.slice(buffer.length - n);
      if (this.stops.some((s) => s.startsWith(tail))) return n;
    }
    return 0;
  }
}

export class TextStream {
  constructor(decode, stops = [], context = []) {
    this.decoder = new IncrementalDecoder(decode, context);
    this.matcher = new StopMatcher(stops);
    this.text = "";
  }

  get stopped() {
    return this.matcher.stopped;
  }

  push(token) {
    return this.emit(this.matcher.push(this.decoder.push(token)));
  }

  flush() {
    const piece = this.matcher.push(this.decoder.flush());
    return this.emit(piece + this.matcher.flush());
  }

  emit(piece) {
    this.text += piece;
    return piece;
  }
}
