// The page: pick a package (bundled demo, a URL, files on the device), download with progress (Cache API: the
// second visit works offline), generate or chat with streaming output, Stop, New chat, stats. Link parameters:
//   ?prompt=...&max_new_tokens=N&temperature=T&template=NAME&threads=N&package=URL&stop_at_eos=0&autorun=1
// #output always holds the text so far; document.body.dataset.done becomes "1" when a run ends.

import * as ort from "onnxruntime-web";
import { TextGenerator } from "./generator.js";
import { fileSource, urlSource } from "./package.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = { model: null, key: null, chat: null, cancel: null };

function setDone(done) { document.body.dataset.done = done ? "1" : "0"; }

function showError(e) {
  $("error").textContent = `Error: ${e.message ?? e}`;
  console.error(e);
}

function progress(name, done, total, cached) {
  const mib = (b) => (b / 1048576).toFixed(1);
  $("progress").textContent = `${cached ? "from cache" : "downloading"} ${name}: ${mib(done)}` +
    (total ? ` of ${mib(total)} MiB (${Math.round((100 * done) / total)} %)` : " MiB");
}

function threads() {
  const asked = Number(params.get("threads") ?? 0);
  if (asked > 0) return crossOriginIsolated ? asked : 1;
  return crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

function source() {
  const kind = $("source").value;
  if (kind === "files") {
    const files = $("package-files").files;
    if (!files.length) throw new Error("pick the package's files (manifest.json, model.onnx, model.onnx.data, tokenizer.json)");
    return { key: `files:${[...files].map((f) => f.name + f.size).join(",")}`, src: fileSource(files) };
  }
  const url = kind === "url" ? $("package-url").value : (params.get("package") ?? "package/");
  if (!url) throw new Error("type the package's URL (the folder holding manifest.json)");
  const base = url.endsWith("/") ? url : `${url}/`;
  return { key: `url:${base}`, src: urlSource(base, { onProgress: progress }) };
}

async function loadModel() {
  const { key, src } = source();
  const n = threads();
  if (state.key === `${key}#${n}`) return state.model;
  $("progress").textContent = `loading ${src.label}…`;
  state.model = await TextGenerator.load(ort, src, { threads: n });
  state.key = `${key}#${n}`;
  state.chat = null;
  const select = $("template");
  const keep = params.get("template") ?? select.value;
  select.replaceChildren(...state.model.templates.map((t) => new Option(t, t)));
  if (state.model.templates.includes(keep)) select.value = keep;
  $("backend").textContent = `wasm, ${n} thread${n > 1 ? "s" : ""}${crossOriginIsolated ? "" : " (not cross-origin isolated)"}`;
  $("progress").textContent = `loaded in ${state.model.loadS.toFixed(2)} s`;
  return state.model;
}

function showStats(s) {
  document.body.dataset.stats = JSON.stringify(s);  // runtime/stats.py's keys, for tests and benchmarks
  const f = (v, scale = 1, d = 1) => (v == null ? "-" : (v * scale).toFixed(d));
  $("stats").textContent = `TTFT ${f(s.ttft_s, 1000, 0)} ms · ${f(s.decode_tokens_per_s)} tok/s · ` +
    `${s.new_tokens} tokens · ${s.finish_reason}`;
}

async function run() {
  setDone(false);
  $("error").textContent = "";
  $("run").disabled = true;
  $("stop").disabled = false;
  const cancel = { cancelled: false };
  state.cancel = cancel;
  try {
    const model = await loadModel();
    const template = $("template").value;
    const temperature = Number($("temperature").value);
    const config = {
      stopAtEos: params.get("stop_at_eos") !== "0",
      maxNewTokens: Number($("max-new-tokens").value),
      sampling: { temperature, topP: temperature === 0 ? 1 : 0.95 },
    };
    const prompt = $("prompt").value;
    const output = $("output");
    const onText = (piece) => {
      output.textContent += piece;
      output.scrollTop = output.scrollHeight;
    };
    let out;
    const isChat = "turn" in (model.manifest.templates[template] ?? {});
    if (isChat) {
      state.chat = state.chat?.template === template ? state.chat : model.chat(template);
      output.textContent += `${output.textContent ? "\n\n" : ""}> ${prompt}\n`;
      out = await state.chat.send(prompt, config, { onText, cancel });
    } else {
      state.chat = null;
      output.textContent = "";
      out = await model.generate(prompt, config, { template, onText, cancel });
    }
    showStats(out.stats);
  } catch (e) {
    showError(e);
  } finally {
    $("run").disabled = false;
    $("stop").disabled = true;
    state.cancel = null;
    setDone(true);
  }
}

function init() {
  setDone(false);
  $("source").addEventListener("change", () => {
    $("package-url").hidden = $("source").value !== "url";
    $("package-files").hidden = $("source").value !== "files";
  });
  $("run").addEventListener("click", run);
  $("stop").addEventListener("click", () => { if (state.cancel) state.cancel.cancelled = true; });
  $("reset").addEventListener("click", () => {
    state.chat?.reset();
    state.chat = null;
    $("output").textContent = "";
  });
  for (const [param, id] of [["prompt", "prompt"], ["max_new_tokens", "max-new-tokens"], ["temperature", "temperature"]]) {
    if (params.has(param)) $(id).value = params.get(param);
  }
  if (params.get("autorun") === "1") run();
  else loadModel().catch(showError);
}

init();
