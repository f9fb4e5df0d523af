// The page: pick a package (bundled demo, a URL, files on the device), download with progress (Cache API: the
// second visit works offline), generate or chat with streaming output, Stop, New chat, stats. Link parameters:
//   ?prompt=...&max_new_tokens=N&temperature=T&template=NAME&threads=N&package=URL&stop_at_eos=0&autorun=1
//   &backend=webgpu|wasm (default: WebGPU when the browser has an adapter and the package suits it, else wasm)
//   &context=N (KV cache positions; default: what the device allows, js/kvcache.js planContext)
//   &bench=1 (a fixed 128-token prompt, 64 greedy tokens after a warm-up run; the figures on the page)
// #output always holds the text so far; document.body.dataset.done becomes "1" when a run ends.

import { BACKENDS, webgpuRefusal } from "./engine.js";
import { TextGenerator } from "./generator.js";
import { checkManifest, fileSource, urlSource } from "./package.js";

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

/** The execution provider for `manifest`'s package: ?backend= if given (refused in one line when it cannot run
 *  there), else WebGPU when an adapter exists and the package suits it, else wasm. Returns {name, ort, device, note}. */
async function chooseBackend(manifest) {
  const asked = params.get("backend");
  if (asked != null && !BACKENDS.includes(asked)) {
    throw new Error(`?backend=${asked} is not one of ${BACKENDS.join(", ")}; drop it to let the page choose`);
  }
  let adapter = null;
  if (asked !== "wasm" && globalThis.navigator?.gpu) {
    try { adapter = await navigator.gpu.requestAdapter(); } catch { adapter = null; }
  }
  const refusal = asked === "wasm" ? "asked for" : webgpuRefusal(manifest, adapter);
  if (asked === "webgpu" && refusal) throw new Error(`?backend=webgpu: ${refusal}; drop ?backend to run on wasm`);
  const memory = navigator.deviceMemory ? navigator.deviceMemory * 2 ** 30 : null;  // Chrome; rounded, at most 8 GiB
  if (refusal) {
    return { name: "wasm", ort: await import("onnxruntime-web"), device: { memory: null }, note: refusal };
  }
  const ort = await import("onnxruntime-web/webgpu");
  ort.env.webgpu.adapter = adapter;  // the one whose limits planned the context
  const info = adapter.info ?? {};
  return { name: "webgpu", ort, device: { limits: adapter.limits, memory },
    note: [info.vendor, info.architecture || info.description].filter(Boolean).join(" ") || "adapter" };
}

async function loadModel() {
  const { key, src } = source();
  const n = threads();
  const context = params.has("context") ? Number(params.get("context")) : null;
  if (state.key === `${key}#${n}`) return state.model;
  $("progress").textContent = `loading ${src.label}…`;
  const backend = await chooseBackend(checkManifest(await src.json("manifest.json")));
  if (state.model) {  // another package: free the last one's session and GPU buffers first
    const last = state.model;
    state.model = null;
    state.key = null;
    await last.release();
  }
  state.model = await TextGenerator.load(backend.ort, src, { threads: n, backend: backend.name, device: backend.device,
    capacity: context });
  state.model.backendName = backend.name;
  state.key = `${key}#${n}`;
  state.chat = null;
  const select = $("template");
  const keep = params.get("template") ?? select.value;
  select.replaceChildren(...state.model.templates.map((t) => new Option(t, t)));
  if (state.model.templates.includes(keep)) select.value = keep;
  document.body.dataset.backend = backend.name;
  $("backend").textContent = backend.name === "webgpu" ? `webgpu (${backend.note})` :
    `wasm, ${n} thread${n > 1 ? "s" : ""}${crossOriginIsolated ? "" : " (not cross-origin isolated)"}` +
    (backend.note === "asked for" ? "" : ` · no WebGPU: ${backend.note}`);
  $("progress").textContent = `loaded in ${state.model.loadS.toFixed(2)} s · ${state.model.plan.describe()}`;
  return state.model;
}

// ?bench=1's prompt: benchmarks/web.py's text, its first 128 tokens
const BENCH_TEXT = "import os\nimport sys\n\n\ndef read_config(path):\n    \"\"\"Read a key = value file into a dict.\"\"\"\n" +
  "    config = {}\n    with open(path) as f:\n        for line in f:\n            line = line.strip()\n" +
  "            if not line or line.startswith('#'):\n                continue\n" +
  "            key, value = line.split('=', 1)\n            config[key.strip()] = value.strip()\n" +
  "    return config\n\n\ndef main(argv):\n    if len(argv) < 2:\n        print('usage: tool CONFIG')\n" +
  "        return 2\n    config = read_config(argv[1])\n    for key in sorted(config):\n";

/** Bytes the page uses, where the browser says: Chrome's measureUserAgentSpecificMemory (cross-origin isolated
 *  pages; it may wait for a garbage collection, so at most 30 s), else the JavaScript heap; null elsewhere. */
async function pageMemory() {
  if (crossOriginIsolated && performance.measureUserAgentSpecificMemory) {
    const timeout = new Promise((resolve) => { setTimeout(() => resolve(null), 30000); });
    const m = await Promise.race([performance.measureUserAgentSpecificMemory().catch(() => null), timeout]);
    if (m) return { bytes: m.bytes, what: "measureUserAgentSpecificMemory (JavaScript and wasm heaps)" };
  }
  if (performance.memory) return { bytes: performance.memory.usedJSHeapSize, what: "JavaScript heap" };
  return null;
}

/** ?bench=1: loads the package, runs a short warm-up (WebGPU compiles its shaders on the first run), then 128 prompt
 *  tokens and 64 greedy new ones; the figures go on the page and in document.body.dataset.bench. */
async function bench() {
  setDone(false);
  $("error").textContent = "";
  try {
    const model = await loadModel();
    const prompt = model.decode(model.encode(BENCH_TEXT.repeat(4)).slice(0, 128));
    const config = { maxNewTokens: Number(params.get("max_new_tokens") ?? 64), stopAtEos: false,
      sampling: { temperature: 0 } };
    const t0 = performance.now();
    await model.generate(prompt, { ...config, maxNewTokens: 4 }, { template: "completion" });
    const warmS = (performance.now() - t0) / 1000;
    $("output").textContent = "";
    const out = await model.generate(prompt, config, { template: "completion",
      onText: (piece) => { $("output").textContent += piece; } });
    const memory = await pageMemory();
    const s = out.stats;
    const figures = { ...s, warm_up_s: warmS, kv_cache_bytes: model.backend.cacheBytes, context: model.backend.capacity,
      page_memory_bytes: memory?.bytes ?? null, page_memory_source: memory?.what ?? null, user_agent: navigator.userAgent };
    document.body.dataset.bench = JSON.stringify(figures);
    showStats(s);
    const mib = (b) => (b == null ? "-" : `${(b / 1048576).toFixed(1)} MiB`);
    $("progress").textContent = `bench on ${s.backend}: load ${model.loadS.toFixed(2)} s, first run ${warmS.toFixed(2)} s ` +
      `(warm-up), prompt ${s.prompt_tokens} tokens, TTFT ${(s.ttft_s * 1000).toFixed(0)} ms, ` +
      `${s.decode_tokens_per_s?.toFixed(1) ?? "-"} tok/s, ${s.copied_bytes_per_step ?? "-"} bytes copied a step, ` +
      `KV cache ${mib(model.backend.cacheBytes)}, page memory ${mib(memory?.bytes)}`;
  } catch (e) {
    showError(e);
  } finally {
    setDone(true);
  }
}

function showStats(s) {
  document.body.dataset.stats = JSON.stringify(s);  // runtime/stats.py's keys, for tests and benchmarks
  const f = (v, scale = 1, d = 1) => (v == null ? "-" : (v * scale).toFixed(d));
  $("stats").textContent = `TTFT ${f(s.ttft_s, 1000, 0)} ms · ${f(s.decode_tokens_per_s)} tok/s · ` +
    `${s.new_tokens} tokens · ${s.finish_reason} · ${s.backend}`;
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
  if (params.get("bench") === "1") bench();
  else if (params.get("autorun") === "1") run();
  else loadModel().catch(showError);
}

init();
