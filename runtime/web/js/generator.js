// One loaded package (runtime/pipeline.py) and the generation loop (runtime/loop.py): prefill in chunks, then
// sample -> stream text -> stop checks -> decode step. The last sampled token is never fed back, so after a call
// the cache holds the prompt and every new token but the last (chat relies on it).

import { Tokenizer } from "@huggingface/tokenizers";
import { OrtBackend } from "./engine.js";
import { Sampler } from "./sampling.js";
import { TextStream } from "./text.js";

// prefillChunk 0 feeds the prompt in one run, as runtime/loop.py does by default (the same arithmetic, so the same
// greedy tokens); a run in progress cannot be interrupted on wasm, so a chunk bounds how long Stop waits.
export const DEFAULT_CONFIG = { maxNewTokens: 256, stop: [], stopAtEos: true, prefillChunk: 0, sampling: {} };

export class TextGenerator {
  static async load(ort, source, options = {}) {
    const t0 = performance.now();
    const backend = await OrtBackend.load(ort, source, options);
    const manifest = backend.manifest;
    const tokenizer = new Tokenizer(await source.json(manifest.tokenizer.file), {});
    const generator = new TextGenerator(manifest, backend, tokenizer);
    generator.loadS = (performance.now() - t0) / 1000;
    return generator;
  }

  constructor(manifest, backend, tokenizer) {
    this.manifest = manifest;
    this.backend = backend;
    this.tokenizer = tokenizer;
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

  encode(text) { return this.tokenizer.encode(text).ids; }

  decode(ids) {
    return ids.length ? this.tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : "";
  }

  get templates() { return Object.keys(this.manifest.templates ?? {}); }

  applyTemplate(name, prompt, part = "prompt") {
    const t = this.manifest.templates?.[name];
    if (!t) throw new Error(`template '${name}' is not in the manifest; choose one of ${this.templates.join(", ")}`);
    if (!(part in t)) throw new Error(`template '${name}' has no '${part}' part`);
    return t[part].replace(/\{(prompt|system)\}/g, (_, k) => (k === "prompt" ? prompt : ""));
  }

  /** Continues `prompt` through `template` from an empty cache; the template's stop strings apply. */
  async generate(prompt, config = {}, { template = "completion", onText = null, cancel = null } = {}) {
    if (!prompt) throw new Error("the prompt is empty; type some text to continue");
    const ids = this.encode(this.applyTemplate(template, prompt));
    const stops = [...new Set([...(config.stop ?? []), ...(this.manifest.templates[template].stop ?? [])])];
    this.backend.truncate(0);
    return this.generateIds(ids, { ...config, stop: stops }, { onText, cancel });
  }

  /** Continues the cache as it is with `ids`; `context`: ids already in the cache (a chat's earlier turns). */
  async generateIds(prompt, config = {}, { onText = null, cancel = null, context = [] } = {}) {
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
      decode_steps: steps,
    };
    return { text: stream.text, tokens, finishReason: finish, stats };
  }

  chat(template = "chat") { return new ChatSession(this, template); }
}

/**
 * Multi-turn chat over one KV cache (runtime/chat.py): each turn prefills only its own tokens. A reply cut at a
 * stop string keeps in the cache the longest run of its tokens whose text the reply starts with; the rest of
 * its text is `pending`, tokenized with the next turn. A cancelled turn leaves no trace.
 */
export class ChatSession {
  constructor(model, template = "chat") {
    this.model = model;
    this.template = template;
    model.applyTemplate(template, "", "turn");  // throws if the template has no turn part
    this.reset();
  }

  reset() {
    this.turns = [];
    this.tokens = [];
    this.pending = "";
    this.model.backend.truncate(0);
  }

  async send(user, config = {}, { onText = null, cancel = null } = {}) {
    if (!user) throw new Error("the message is empty; type something to say");
    const m = this.model;
    const backend = m.backend;
    backend.truncate(this.tokens.length);
    const part = m.applyTemplate(this.template, user, this.turns.length ? "turn" : "prompt");
    const ids = m.encode(this.pending + part);
    if (this.tokens.length + ids.length >= backend.capacity) {
      throw new Error(`the conversation has ${this.tokens.length} tokens and the new turn ${ids.length}, but the ` +
        `context holds ${backend.capacity}; start a new chat`);
    }
    const stops = [...new Set([...(config.stop ?? []), ...(m.manifest.templates[this.template].stop ?? [])])];
    const out = await m.generateIds(ids, { ...config, stop: stops }, { onText, cancel, context: this.tokens });
    if (out.finishReason === "cancelled") {
      backend.truncate(this.tokens.length);
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
