// Greedy text of the demo package through the web engine on Node (onnxruntime-web's wasm backend).
import * as ort from "onnxruntime-web";
import fs from "fs";
import path from "path";
import { TextGenerator } from "../js/generator.js";

const dir = process.argv[2];
const prompt = process.argv[3] ?? "def fibonacci(n):";
const n = Number(process.argv[4] ?? 32);
const source = {
  async bytes(name) { return new Uint8Array(fs.readFileSync(path.join(dir, name))); },
  async json(name) { return JSON.parse(fs.readFileSync(path.join(dir, name), "utf8")); },
};
const model = await TextGenerator.load(ort, source, { threads: 1 });
const out = await model.generate(prompt, { maxNewTokens: n, stopAtEos: false, sampling: { temperature: 0 } });
console.log(JSON.stringify({ text: out.text, tokens: out.tokens, stats: out.stats }));
