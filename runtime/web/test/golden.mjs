// The web engine against the vectors the Python runtime wrote for the Kotlin engine (android_demo/golden):
// tokenizers (4 kinds: encode ids and decode text equal Hugging Face tokenizers), and generation on the demo
// package through onnxruntime-web (greedy, top-k 1, repetition penalty with chunked prefill, a stop string
// across tokens, two-turn chats, a chat whose reply stops mid-token). Drafted cases are skipped: the web engine
// has no speculative decoding. Prints one line per check and "N passed, M failed".
//   node test/golden.mjs REPO
import * as ort from "onnxruntime-web";
import { Tokenizer } from "@huggingface/tokenizers";
import fs from "fs";
import path from "path";
import zlib from "zlib";
import { TextGenerator } from "../js/generator.js";

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

const source = {
  async bytes(name) { return new Uint8Array(fs.readFileSync(path.join(demo, name))); },
  async json(name) { return JSON.parse(fs.readFileSync(path.join(demo, name), "utf8")); },
};
const model = await TextGenerator.load(ort, source, { threads: 1 });
const meta = JSON.parse(fs.readFileSync(path.join(golden, "generation.json"), "utf8"));
for (const c of meta.cases) {
  const g = c.config;
  if (g.draft !== "none") continue;
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
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
