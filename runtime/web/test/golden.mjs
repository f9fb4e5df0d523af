// The web engine against the vectors the Python runtime wrote for the Kotlin engine (android_demo/golden):
// tokenizers (4 kinds: encode ids and decode text equal Hugging Face tokenizers); generation on the demo package
// through onnxruntime-web (greedy, top-k 1, repetition penalty with chunked prefill, a stop string across tokens,
// two-turn chats, a chat whose reply stops mid-token); every generation case again over the recorded logits (the
// steps fed must be Python's: LongRoPE's switch crossed and truncated back across, a padded vocabulary, dropping
// the oldest turns, a turn that exactly fills the context); the sampling settings Python refuses; extreme settings
// that never draw a suppressed id; calls from two "threads" (interleaved promises) on one model; a KV cache that
// holds exactly the positions in use and truncates to the same logits. Drafted cases are
// skipped: the web engine has no speculative decoding. Prints one line per check and "N passed, M failed".
//   node test/golden.mjs REPO
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "fs";
import path from "path";
import zlib from "zlib";
import { Contract, OrtBackend, webgpuRefusal } from "../js/engine.js";
import { grownCapacity, planContext, stepRows, windowBuffer } from "../js/kvcache.js";
import { ModelBusyError, TextGenerator } from "../js/generator.js";
import { Sampler } from "../js/sampling.js";

const repo = process.argv[2] ?? path.resolve(import.meta.dirname, "../../..");
const golden = path.join(repo, "android_demo/golden");
const demo = path.join(repo, "runtime/demo");
let passed = 0;
let failed = 0;
const check = (label, ok, detail = "") => {
  if (ok) passed++; else failed++;
  console.log(`${ok ? "ok" : "FAIL"} ${label}${ok ? "" : ` ${detail}`}`);
};
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

const tokenizerJson = (kind) => (kind === "demo" ? JSON.parse(fs.readFileSync(path.join(demo, "tokenizer.json"), "utf8"))
  : JSON.parse(zlib.gunzipSync(fs.readFileSync(path.join(golden, `tokenizer_${kind}.json.gz`))).toString()));
for (const kind of ["demo", "codegen", "llama", "gpt4o"]) {
  const tok = new Tokenizer(tokenizerJson(kind), {});
  const decode = (ids) => (ids.length ? tok.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }) : "");
  const cases = JSON.parse(fs.readFileSync(path.join(golden, `tokenizer_${kind}.json`), "utf8"));
  const bad = [];
  for (const c of cases.encode) {
    const ids = tok.encode(c.text).ids;
    if (!same(ids, c.ids) || decode(c.ids) !== c.decoded) bad.push(c.text);
  }
  for (const c of cases.decode) if (decode(c.ids) !== c.decoded) bad.push(c.ids);
  check(`tokenizer ${kind}: ${cases.encode.length} encodes, ${cases.encode.length + cases.decode.length} decodes`,
    bad.length === 0, JSON.stringify(bad.slice(0, 3)));
}

// The chat templates' parts (trim, an empty system message left out) fill in as the Python runtime fills them.
{
  const templates = JSON.parse(fs.readFileSync(path.join(golden, "chat_templates.json"), "utf8"));
  const bad = [];
  for (const [kind, entry] of Object.entries(templates)) {
    const g = new TextGenerator({ templates: { chat: entry.parts }, tokenizer: {}, model: { vocab_size: 1 } },
      { vocabSize: 1, capacity: 1, truncate() {} }, { get_vocab: () => new Map() });
    for (const c of entry.conversations) {
      const users = [...c.turns.map((t) => t[0]), c.user];
      let text = g.applyTemplate("chat", users[0], "prompt", c.system);
      c.turns.forEach((t, i) => { text += t[1] + g.applyTemplate("chat", users[i + 1], "turn"); });
      if (text !== c.text) bad.push([kind, c.system, JSON.stringify(text)]);
    }
  }
  check(`chat templates: ${Object.keys(templates).length} kinds filled as in Python`, bad.length === 0, JSON.stringify(bad.slice(0, 2)));
}

const source = {
  async bytes(name) { return new Uint8Array(fs.readFileSync(path.join(demo, name))); },
  async json(name) { return JSON.parse(fs.readFileSync(path.join(demo, name), "utf8")); },
};
const model = await TextGenerator.load(ort, source, { threads: 1 });
{  // the cache holds the positions held, no more; truncating keeps the first ones exactly
  const backend = await OrtBackend.load(ort, source, { threads: 1 });
  const perToken = backend.manifest.io.kv_cache.bytes_per_token;
  const ids = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % backend.vocabSize);
  const empty = backend.cacheBytes;
  const first = [await backend.step(ids.slice(0, 30))];
  for (const t of ids.slice(30)) first.push(await backend.step([t]));
  const held = backend.cacheBytes;
  backend.truncate(30);
  const again = [];
  for (const t of ids.slice(30)) again.push(await backend.step([t]));
  const diff = Math.max(...again.map((row, i) => Math.max(...row.map((v, j) => Math.abs(v - first[i + 1][j])))));
  check(`cache grows with use: ${empty} bytes empty, ${held} for 40 positions (${perToken} per position), `
    + `truncated and refilled to the same logits`, empty === 0 && held === 40 * perToken && diff === 0, `diff ${diff}`);
}
{  // a long step goes in runs of stepRows tokens (bounded attention scratch), as in Python
  const rows = JSON.parse(fs.readFileSync(path.join(golden, "kv_cache.json"), "utf8")).step_rows;
  const bad = rows.filter(([heads, capacity, want]) => stepRows(heads, capacity) !== want);
  check(`tokens per run: ${rows.length} (heads, capacity) cases as in Python`, rows.length === 35 && bad.length === 0,
    JSON.stringify(bad.slice(0, 3)));
  const growth = JSON.parse(fs.readFileSync(path.join(golden, "kv_cache.json"), "utf8")).growth;
  const grew = growth.filter(([allocated, needed, limit, want]) => {
    try { return grownCapacity(allocated, needed, limit) !== want; } catch { return want !== null; }
  });
  check(`cache growth: ${growth.length} (allocated, needed, limit) cases as in Python (the WebGPU cache's policy)`,
    growth.length > 0 && grew.length === 0, JSON.stringify(grew.slice(0, 3)));
  const buffers = JSON.parse(fs.readFileSync(path.join(golden, "kv_cache.json"), "utf8")).window_buffer;
  const wrong = buffers.filter(([window, context, want]) => windowBuffer(window, context) !== want);
  check(`sliding-window buffers: ${buffers.length} (window, context) cases as in Python`,
    buffers.length === 28 && wrong.length === 0, JSON.stringify(wrong.slice(0, 3)));
  const demo = JSON.parse(fs.readFileSync(path.join(repo, "runtime/demo/manifest.json"), "utf8"));
  const hostile = { ...demo, io: { ...demo.io, kv_cache: { ...demo.io.kv_cache, window: "abc" } } };
  let refused = "";
  try { new Contract(hostile); } catch (e) { refused = e.message; }
  check("a manifest's window that is not a positive integer is refused, naming the field",
    refused.includes("io.kv_cache.window"), refused);
  const whole = await OrtBackend.load(ort, source, { threads: 1 });
  const pieces = await OrtBackend.load(ort, source, { threads: 1 });
  const ids = Array.from({ length: 300 }, (_, i) => (i * 53 + 7) % whole.vocabSize);
  const runs = [];
  const runOnce = pieces.runOnce.bind(pieces);
  pieces.runOnce = (part, keep, width) => { runs.push(part.length); return runOnce(part, keep, width); };
  const heads = pieces.manifest.model.num_attention_heads;
  const want = await whole.runOnce(ids, 1, 0);
  const got = await pieces.run(ids, 1);
  const expect = stepRows(heads, 300);
  const diff = Math.max(...got[0].map((v, j) => Math.abs(v - want[0][j])));
  check(`a 300-token step in runs of ${expect} (${runs.join(" + ")}) gives one run's logits`,
    runs.length === Math.ceil(300 / expect) && runs[0] === expect && diff <= 1e-3, `diff ${diff}`);
}
{  // the context a device can hold (js/kvcache.js planContext) and what keeps a package off WebGPU (webgpuRefusal)
  const demo = JSON.parse(fs.readFileSync(path.join(repo, "runtime/demo/manifest.json"), "utf8"));
  const kv = demo.io.kv_cache;
  const buffer = kv.kv_heads * kv.head_dim * 4;  // one (layer, kind) buffer's bytes a position, float32
  const wasm = planContext(demo, "wasm");
  const roomy = planContext(demo, "webgpu", { device: { limits: { maxStorageBufferBindingSize: 2 ** 30,
    maxBufferSize: 2 ** 30 }, memory: 8 * 2 ** 30 } });
  const narrow = planContext(demo, "webgpu", { device: { limits: { maxStorageBufferBindingSize: 100 * buffer,
    maxBufferSize: 2 ** 30 }, memory: null } });
  const asked = planContext(demo, "webgpu", { requested: 200 });
  check(`context plans: wasm ${wasm.context}, roomy GPU ${roomy.context}, a GPU buffer of 100 positions ` +
    `${narrow.context} (${narrow.why}), asked 200 -> ${asked.context}`,
    wasm.context === 512 && roomy.context === 512 && narrow.context === 64 && narrow.why.includes("largest buffer") &&
    asked.context === 200, narrow.describe());
  const huge = { ...demo, files: { ...demo.files, "model.onnx.data": { sha256: "", bytes: 5 * 2 ** 30 } } };
  let refused = "";
  try { planContext(huge, "wasm"); } catch (e) { refused = e.message; }
  let tooSmall = "";
  try { planContext(demo, "webgpu", { device: { memory: 100 * 2 ** 20 } }); } catch (e) { tooSmall = e.message; }
  check("a package that cannot fit is refused in one line naming the limit",
    refused.includes("4 GiB WebAssembly heap") && tooSmall.includes("the browser reports") &&
    !refused.includes("\n") && !tooSmall.includes("\n"), `${refused} | ${tooSmall}`);
  const adapter = { features: new Set(), limits: { maxStorageBufferBindingSize: 128 * 2 ** 20, maxBufferSize: 2 ** 30 } };
  const withKv = (dtype) => ({ ...demo, io: { ...demo.io, kv_cache: { ...kv, dtype, storage_dtype: dtype } } });
  const reasons = {
    none: webgpuRefusal(demo, null), demo: webgpuRefusal(demo, adapter), int8: webgpuRefusal(withKv("int8"), adapter),
    f16: webgpuRefusal(withKv("float16"), adapter),
    f16ok: webgpuRefusal(withKv("float16"), { ...adapter, features: new Set(["shader-f16"]) }),
    window: webgpuRefusal({ ...demo, io: { ...demo.io, kv_cache: { ...kv, window: 48 } } }, adapter),
    big: webgpuRefusal({ ...demo, export: { ...demo.export, largest_tensor_bytes: 600 * 2 ** 20 } }, adapter),
  };
  check("WebGPU takes the demo and refuses, naming why: no adapter, an int8 cache, float16 without shader-f16, a " +
    "sliding window, a weight over the GPU's largest buffer",
    reasons.demo === null && reasons.f16ok === null && reasons.none.includes("no WebGPU adapter") &&
    reasons.int8.includes("KV cache is int8") && reasons.f16.includes("shader-f16") &&
    reasons.window.includes("sliding_window_cache") && reasons.big.includes("600 MiB"), JSON.stringify(reasons));
}
{  // a package switched away from is freed: its session runs no more
  const spare = await OrtBackend.load(ort, source, { threads: 1 });
  await spare.step([1, 2, 3]);
  await spare.release();
  let after = "";
  try { await spare.step([4]); } catch (e) { after = String(e.message ?? e); }
  check("a released backend's session is gone", after !== "", after);
}
const meta = JSON.parse(fs.readFileSync(path.join(golden, "generation.json"), "utf8"));
const REPLAY_ONLY = ["rope_switch", "window", "pad_rows", "capacity", "drop_oldest", "cancel"];  // settings of a recorded backend
for (const c of meta.cases) {
  const g = c.config;
  if (g.draft !== "none" || REPLAY_ONLY.some((k) => k in c)) continue;
  const config = { maxNewTokens: g.max_new_tokens, stop: g.stop, stopAtEos: g.stop_at_eos, prefillChunk: g.prefill_chunk,
    sampling: { temperature: g.temperature, topK: g.top_k, topP: g.top_p, seed: g.seed, repetitionPenalty: g.repetition_penalty } };
  const got = [];
  if (c.kind === "generate") {
    got.push(await model.generate(c.prompt, config, { template: c.template }));
  } else {
    const chat = model.chat(c.template);
    for (const turn of c.turns) got.push(await chat.send(turn, config));
  }
  const want = c.calls.map((x) => [x.tokens, x.text, x.finish_reason]);
  const have = got.map((x) => [x.tokens, x.text, x.finishReason]);
  check(`generation ${c.name}: ${want.length} call(s)`, same(have, want), `${JSON.stringify(have)} != ${JSON.stringify(want)}`);
}
// ---- every case over the recorded logits: the ids fed at each step must be Python's (make_golden.py's Replay)
const vocab = meta.vocab_size;
const raw = zlib.gunzipSync(fs.readFileSync(path.join(golden, "logits.f16.gz")));
const half = new Uint16Array(raw.buffer, raw.byteOffset, raw.length / 2);
const f16 = (h) => {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
};
const row = (r) => Float32Array.from(half.subarray(r * vocab, (r + 1) * vocab), f16);

class Replay {
  constructor(steps, first, capacity, padRows) {
    Object.assign(this, { steps, row: first, capacity, padRows, used: 0, length: 0 });
    this.vocabSize = vocab + padRows;
    this.canStepAll = true;
  }

  padded(r) {
    if (!this.padRows) return r;
    let top = -Infinity;
    for (const x of r) if (x > top) top = x;
    const out = new Float32Array(r.length + this.padRows).fill(Math.fround(top + 8));
    out.set(r);
    return out;
  }

  async step(ids) { return (await this.run(ids, 1))[0]; }

  async run(ids, keep = 1) {
    const want = this.steps[this.used];
    if (!want) throw new Error(`step ${this.used + 1} asked for, but only ${this.steps.length} were recorded`);
    if (!same([...ids], want.ids) || this.length !== want.past || keep !== (want.rows ?? 1)) {
      throw new Error(`step ${this.used}: fed ${JSON.stringify([...ids])} at ${this.length} (keep ${keep}), Python fed ` +
        `${JSON.stringify(want.ids)} at ${want.past} (rows ${want.rows})`);
    }
    this.used++;
    this.length += ids.length;
    const n = want.rows ?? 1;
    this.row += n;
    return Array.from({ length: n }, (_, i) => this.padded(row(this.row - n + i)));
  }

  truncate(length) {
    if (!(length >= 0 && length <= this.length)) throw new Error(`cannot truncate ${this.length} to ${length}`);
    this.length = length;
  }
}

const cancelAfter = (k) => {
  let calls = 0;
  return { get cancelled() { calls++; return calls > k; } };
};

for (const c of meta.cases) {
  const g = c.config;
  if (g.draft !== "none") continue;
  const config = { maxNewTokens: g.max_new_tokens, stop: g.stop, stopAtEos: g.stop_at_eos, prefillChunk: g.prefill_chunk,
    sampling: { temperature: g.temperature, topK: g.top_k, topP: g.top_p, seed: g.seed, repetitionPenalty: g.repetition_penalty } };
  const replay = new Replay(c.steps, c.first_row, c.capacity ?? meta.capacity, c.pad_rows ?? 0);
  const kv = { ...model.manifest.io.kv_cache, window: c.window ?? null };  // a sliding window set on the demo package
  const manifest = { ...model.manifest, rope_switch: c.rope_switch ?? null, io: { ...model.manifest.io, kv_cache: kv } };
  const m = new TextGenerator(manifest, replay, model.tokenizer);
  const got = [];
  try {
    if (c.kind === "generate") {
      got.push(await m.generate(c.prompt, config, { template: c.template }));
    } else {
      const chat = m.chat(c.template, { dropOldest: c.drop_oldest ?? false });
      for (const [i, turn] of c.turns.entries()) {
        const cancel = c.cancel && c.cancel.turn === i ? cancelAfter(c.cancel.after) : null;
        got.push(await chat.send(turn, config, { cancel }));
      }
    }
  } catch (e) {
    check(`replay ${c.name}`, false, e.message);
    continue;
  }
  const want = c.calls.map((x) => [x.tokens, x.text, x.finish_reason]);
  const have = got.map((x) => [x.tokens, x.text, x.finishReason]);
  check(`replay ${c.name}: ${replay.used} steps`, same(have, want) && replay.used === c.steps.length,
    `${JSON.stringify(have)} != ${JSON.stringify(want)} (${replay.used} of ${c.steps.length} steps)`);
}

// ---- sampling: the settings Python refuses, and extreme accepted ones never draw a suppressed id
const number = (x) => ({ inf: Infinity, "-inf": -Infinity, nan: NaN }[x] ?? x);
const { limits } = JSON.parse(fs.readFileSync(path.join(golden, "sampling.json"), "utf8"));
const wrong = limits.filter((l) => {
  let refused = false;
  try {
    new Sampler({ temperature: number(l.temperature), topK: l.top_k, topP: number(l.top_p), repetitionPenalty: number(l.repetition_penalty) });
  } catch {
    refused = true;
  }
  return refused !== l.refused;
});
check(`sampling limits: ${limits.length} settings refused or accepted as in Python`, wrong.length === 0, JSON.stringify(wrong.slice(0, 3)));
const extremes = [0, 1.1754943508222875e-38, 1e-30, 0.7, 1, 1e30, 3.4028234663852886e38];
let drawn = 0;
const badDraws = [];
for (const t of extremes) for (const p of [1e-300, 0.5, 1]) for (const pen of [1.1754943508222875e-38, 1, 3.4028234663852886e38]) {
  const logits = Float32Array.from({ length: 512 }, (_, i) => Math.sin(i * 12.9898 + t) * 3e38);  // some +-Infinity
  const suppress = Array.from({ length: 100 }, (_, i) => (i * 37) % 512);
  let best = 0;
  for (let i = 1; i < 512; i++) if (logits[i] > logits[best]) best = i;
  suppress.push(best);
  const sampler = new Sampler({ temperature: t, topK: 0, topP: p, repetitionPenalty: pen, seed: 5 }, suppress);
  sampler.observe(Array.from({ length: 200 }, (_, i) => (i * 7) % 512));
  for (let k = 0; k < 3; k++) {
    const token = sampler.sample(logits);
    drawn++;
    if (!(token >= 0 && token < 512) || suppress.includes(token)) badDraws.push([t, p, pen, token]);
  }
}
check(`extreme sampling settings: ${drawn} draws, none suppressed`, badDraws.length === 0, JSON.stringify(badDraws.slice(0, 3)));

// ---- two callers on one model: their calls take turns, each gets what it gets alone; wait: false is refused
const greedy = { maxNewTokens: 16, stopAtEos: false, sampling: { temperature: 0, topP: 1 } };
const prompts = ["def fibonacci(n):", "import os\n", "class Stack:"];
const alone = [];
for (const p of prompts) alone.push((await model.generate(p, greedy)).tokens);
const together = await Promise.all(prompts.map((p) => model.generate(p, greedy)));
let busy = false;
const running = model.generate(prompts[0], greedy);
try {
  await model.generate("x", greedy, { wait: false });
} catch (e) {
  busy = e instanceof ModelBusyError;
}
await running;
check("two callers on one model: same tokens as alone, and wait: false is told it is busy",
  same(together.map((x) => x.tokens), alone) && busy, JSON.stringify(together.map((x) => x.tokens)));

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
