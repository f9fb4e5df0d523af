// One loaded package (runtime/pipeline.py) and the generation loop (runtime/loop.py): prefill in chunks, then
// sample -> stream text -> stop checks -> decode step. The last sampled token is never fed back, so after a call
// the cache holds the prompt and every new token but the last (chat relies on it).

import { Tokenizer } from "@huggingface/tokenizers";
import { OrtBackend } from "./engine.js";
import { withRecompute } from "./recompute.js";
import { sha256Hex } from "./package.js";
import { Sampler } from "./sampling.js";
import { TextStream } from "./text.js";

/** What Python's str.strip() removes (runtime/manifest.py TRIM_CHARACTERS); JavaScript's trim() differs. */
export const TRIM_CHARACTERS = "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006" +
  "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000";

export function pythonStrip(text) {
  let start = 0;
  let end = text.length;
  while (start < end && TRIM_CHARACTERS.includes(text[start])) start++;
  while (end > start && TRIM_CHARACTERS.includes(text[end - 1])) end--;
  return text.slice(start, end);
}

/** A call that asked not to wait ({ wait: false }) found the model generating for another caller. */
export class ModelBusyError extends Error {}

// prefillChunk 0 feeds the prompt in one run, as runtime/loop.py does by default (the same arithmetic, so the same
// greedy tokens); a run in progress cannot be interrupted on wasm, so a chunk bounds how long Stop waits.
export const DEFAULT_CONFIG = { maxNewTokens: 256, stop: [], stopAtEos: true, prefillChunk: 0, sampling: {} };

export class TextGenerator {
  static async load(ort, source, options = {}) {
    const t0 = performance.now();
    const backend = await OrtBackend.load(ort, source, options);
    const manifest = backend.manifest;
    const file = manifest.tokenizer.file;
    const bytes = await source.bytes(file);
    const want = manifest.files?.[file]?.sha256;
    if (want && (await sha256Hex(bytes)) !== want) {  // small; another tokenizer would run silently with wrong text
      throw new Error(`${file} does not match its sha256 in manifest.json: the file is corrupted or was changed; ` +
        "copy the package again or re-export it");
    }
    const tokenizer = new Tokenizer(JSON.parse(new TextDecoder().decode(bytes)), {});
    const generator = new TextGenerator(manifest, backend, tokenizer);
    generator.loadS = (performance.now() - t0) / 1000;
    generator.plan = backend.plan;  // the context chosen for this device, and why (js/kvcache.js planContext)
    return generator;
  }

  /**
   * One loaded package: one KV cache, so one generation at a time. Calls (generate, generateIds, chat sends) made
   * while another is running wait their turn, in order; { wait: false } throws ModelBusyError instead. LongRoPE and
   * sliding-window packages get the wrapper that recomputes what their caches cannot hold in place (recompute.js).
   */
  constructor(manifest, backend, tokenizer) {
    this.manifest = manifest;
    this.backend = withRecompute(backend, manifest);
    this.tokenizer = tokenizer;
    this.tail = Promise.resolve();  // the last queued call: the next one starts when it has settled
    this.queued = 0;  // calls running or waiting their turn
    this.cacheOwner = null;  // the chat session whose conversation the cache holds, if any
    const tok = manifest.tokenizer;
    this.stopTokenIds = tok.stop_token_ids?.length ? tok.stop_token_ids : (tok.eos_token_id == null ? [] : [tok.eos_token_id]);
    // Rows the tokenizer cannot decode (padded vocabularies) are never sampled, as in the Python runtime.
    const known = new Set(tokenizer.get_vocab(true).values());
    this.suppress = null;
    if (known.size) {
      const missing = [];
      for (let i = 0; i < backend.vocabSize; i++) if (!known.has(i)) missing.push(i);
      this.suppress = missing.length ? missing : null;
    }
  }

  /** Runs `body` (async) once every call queued before it has finished; { wait: false } refuses to queue. */
  exclusive(body, { wait = true } = {}) {
    if (!wait && this.queued > 0) {
      return Promise.reject(new ModelBusyError("the model is generating for another caller; wait for it or load " +
        "the package again for a second, independent model"));
    }
    this.queued++;
    const run = this.tail.then(body).finally(() => { this.queued--; });
    this.tail = run.catch(() => {});
    return run;
  }

  /** Frees the session and the cache (GPU buffers on WebGPU) once the calls queued before have finished. */
  release() { return this.exclusive(() => this.backend.release()); }

  encode(text) { return this.tokenizer.encode(text).ids; }

  decode(ids) {
    return ids.length ? this.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : "";
  }

  get templates() { return Object.keys(this.manifest.templates ?? {}); }

  /** The template's `part` with the user's text (and a `system` message: its "system" part on the first turn),
   * filled in one pass; "trim" strips them as Python's str.strip() does, "omit_empty_system" leaves out an empty
   * system message (runtime/pipeline.py apply_template). */
  applyTemplate(name, prompt, part = "prompt", system = null) {
    const t = this.manifest.templates?.[name];
    if (!t) throw new Error(`template '${name}' is not in the manifest; choose one of ${this.templates.join(", ")}`);
    const strip = t.trim ? pythonStrip : (x) => x;
    if (system != null && t.omit_empty_system && !strip(system)) system = null;
    if (system != null && part === "prompt") {
      if (!("system" in t)) throw new Error(`template '${name}' takes no system message`);
      part = "system";
    }
    if (!(part in t)) throw new Error(`template '${name}' has no '${part}' part`);
    return t[part].replace(/\{(prompt|system)\}/g, (_, k) => strip(k === "prompt" ? prompt : system ?? ""));
  }

  /** Continues `prompt` through `template` from an empty cache; the template's stop strings apply. */
  async generate(prompt, config = {}, { template = "completion", onText = null, cancel = null, wait = true } = {}) {
    if (!prompt) throw new Error("the prompt is empty; type some text to continue");
    const ids = this.encode(this.applyTemplate(template, prompt));
    const stops = [...new Set([...(config.stop ?? []), ...(this.manifest.templates[template].stop ?? [])])];
    return this.exclusive(() => {
      this.cacheOwner = null;
      this.backend.truncate(0);
      return this.loop(ids, { ...config, stop: stops }, { onText, cancel });
    }, { wait });
  }

  /** Continues the cache as it is with `ids`; `context`: ids already in the cache (a chat's earlier turns). */
  async generateIds(prompt, config = {}, { onText = null, cancel = null, context = [], wait = true } = {}) {
    return this.exclusive(() => {
      this.cacheOwner = null;
      return this.loop(prompt, config, { onText, cancel, context });
    }, { wait });
  }

  /** The generation loop (runtime/loop.py); callers hold the model (exclusive). */
  async loop(prompt, config = {}, { onText = null, cancel = null, context = [] } = {}) {
    const c = { ...DEFAULT_CONFIG, ...config };
    const backend = this.backend;
    const free = backend.capacity - backend.length;
    if (prompt.length > free) {
      throw new Error(`the prompt has ${prompt.length} tokens but ${free} of the context's ${backend.capacity} ` +
        "positions are free; shorten it");
    }
    const t0 = performance.now();
    const sampler = new Sampler(c.sampling, this.suppress);
    sampler.observe(context);
    sampler.observe(prompt);
    const stream = new TextStream((ids) => this.decode(ids), c.stop, prompt);
    const chunk = c.prefillChunk > 0 ? c.prefillChunk : prompt.length;
    let logits = null;
    for (let i = 0; i < prompt.length; i += chunk) {
      if (cancel?.cancelled) break;
      logits = await backend.step(prompt.slice(i, i + chunk));
    }
    const tPrefill = performance.now();
    const movedBefore = backend.moved ?? 0;
    const tokens = [];
    let t1 = null;
    let finish = "cancelled";
    let steps = 0;
    while (logits) {
      const token = sampler.sample(logits);
      sampler.observe([token]);
      tokens.push(token);
      if (t1 === null) t1 = performance.now();
      const piece = stream.push(token);
      if (piece) onText?.(piece);
      if (c.stopAtEos && this.stopTokenIds.includes(token)) { finish = "eos"; break; }
      if (stream.stopped) { finish = "stop"; break; }
      if (tokens.length >= c.maxNewTokens) { finish = "length"; break; }
      if (backend.length >= backend.capacity) { finish = "context"; break; }
      if (cancel?.cancelled) break;
      logits = await backend.step([token]);
      steps++;
    }
    const tail = stream.flush();
    if (tail) onText?.(tail);
    const t2 = performance.now();
    const decodeS = t1 === null ? 0 : (t2 - t1) / 1000;
    const stats = {
      prompt_tokens: prompt.length, new_tokens: tokens.length, load_s: this.loadS ?? null,
      ttft_s: t1 === null ? null : (t1 - t0) / 1000, prefill_s: (tPrefill - t0) / 1000, decode_s: decodeS,
      decode_tokens_per_s: steps > 0 && decodeS > 0 ? steps / decodeS : null, finish_reason: finish,
      decode_steps: steps, backend: backend.provider ?? null,
      // bytes a decode step copied between the page and the session (the wasm heap, or the GPU): ids, mask and
      // logits, and on wasm the whole cache twice
      copied_bytes_per_step: steps > 0 && backend.moved != null ? Math.round((backend.moved - movedBefore) / steps) : null,
    };
    return { text: stream.text, tokens, finishReason: finish, stats };
  }

  chat(template = "chat", { dropOldest = false } = {}) { return new ChatSession(this, template, { dropOldest }); }
}

/**
 * Multi-turn chat over one KV cache (runtime/chat.py): each turn prefills only its own tokens. A reply cut at a
 * stop string keeps in the cache the longest run of its tokens whose text the reply starts with; the rest of
 * its text is `pending`, tokenized with the next turn. A cancelled turn leaves no trace. When a turn does not fit,
 * send() throws, or with dropOldest the fewest oldest turns are dropped and the rest is prefilled again.
 */
export class ChatSession {
  constructor(model, template = "chat", { dropOldest = false } = {}) {
    this.model = model;
    this.template = template;
    this.dropOldest = dropOldest;
    model.applyTemplate(template, "", "turn");  // throws if the template has no turn part
    this.turns = [];
    this.tokens = [];
    this.pending = "";  // the first turn finds the cache not its own and starts it from empty
  }

  reset({ wait = true } = {}) {
    return this.model.exclusive(() => {
      this.turns = [];
      this.tokens = [];
      this.pending = "";
      this.model.backend.truncate(0);
      this.model.cacheOwner = this;
    }, { wait });
  }

  part(user, first) { return this.model.applyTemplate(this.template, user, first ? "prompt" : "turn"); }

  conversation(turns) { return turns.map((t, i) => this.part(t.user, i === 0) + t.reply).join(""); }

  /** The new turn's ids, after dropping the oldest turns if the conversation would not fit (runtime/chat.py). */
  makeRoom(user, ids, config) {
    const capacity = this.model.backend.capacity;
    if (!this.dropOldest) {
      if (this.tokens.length + ids.length <= capacity) return ids;
      if (!this.tokens.length) throw new Error(`the message has ${ids.length} tokens but the context holds ${capacity}; send a shorter message`);
      throw new Error(`the conversation has ${this.tokens.length} tokens and the new turn ${ids.length}, but the ` +
        `context holds ${capacity}; start a new chat`);
    }
    const reserve = Math.min(config.maxNewTokens ?? DEFAULT_CONFIG.maxNewTokens, Math.floor(capacity / 2));
    let fallback = null;
    for (let start = 0; start <= this.turns.length; start++) {
      const kept = this.turns.slice(start);
      const turn = start === 0 ? ids : this.model.encode(this.conversation(kept) + this.part(user, kept.length === 0));
      const total = turn.length + (start === 0 ? this.tokens.length : 0);
      if (total + reserve <= capacity) return this.keep(start, turn);
      if (fallback === null && total <= capacity) fallback = [start, turn];
    }
    if (fallback) return this.keep(...fallback);
    throw new Error(`the new turn alone has ${ids.length} tokens but the context holds ${capacity}; send a shorter message`);
  }

  keep(start, ids) {
    if (start > 0) {
      this.turns = this.turns.slice(start);
      this.tokens = [];
      this.pending = this.conversation(this.turns);
      this.model.backend.truncate(0);
    }
    return ids;
  }

  send(user, config = {}, { onText = null, cancel = null, wait = true } = {}) {
    if (!user) return Promise.reject(new Error("the message is empty; type something to say"));
    return this.model.exclusive(() => this.turn(user, config, { onText, cancel }), { wait });
  }

  async turn(user, config, { onText, cancel }) {
    const m = this.model;
    const backend = m.backend;
    // The cache was used for something else: the conversation is fed again with this turn, in the same (chunked,
    // cancellable) prefill, and a cancelled turn leaves it to be rebuilt next time.
    const rebuild = m.cacheOwner !== this;
    backend.truncate(rebuild ? 0 : this.tokens.length);
    m.cacheOwner = this;
    const ids = this.makeRoom(user, m.encode(this.pending + this.part(user, this.turns.length === 0)), config);
    const prefix = rebuild ? this.tokens : [];  // empty when makeRoom dropped the turns
    const stops = [...new Set([...(config.stop ?? []), ...(m.manifest.templates[this.template].stop ?? [])])];
    const out = await m.loop([...prefix, ...ids], { ...config, stop: stops },
      { onText, cancel, context: rebuild ? [] : this.tokens });
    if (out.finishReason === "cancelled") {
      if (rebuild) m.cacheOwner = null;
      backend.truncate(rebuild ? 0 : this.tokens.length);
      return out;
    }
    const fed = out.tokens.slice(0, -1);
    let keep = fed.length;
    while (keep > 0 && !out.text.startsWith(m.decode(fed.slice(0, keep)))) keep--;
    this.pending = out.text.slice(m.decode(fed.slice(0, keep)).length);
    this.tokens = [...this.tokens, ...ids, ...fed.slice(0, keep)];
    backend.truncate(this.tokens.length);
    this.turns.push({ user, reply: out.text });
    return out;
  }
}
