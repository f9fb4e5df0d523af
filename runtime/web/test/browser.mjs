// Opens the page in headless Chromium as a phone (390x844, touch, 4x slower CPU), waits for the run the URL asks
// for, prints {output, stats, error, isolated} as JSON and saves a screenshot.
//   node test/browser.mjs URL SCREENSHOT.png [--cpu-slowdown 4] [--timeout-s 300] [--desktop] [--webgpu]
// --webgpu starts Chromium with its WebGPU adapter on SwiftShader (Vulkan on the CPU: the real WebGPU code path, at
// CPU speed); without it the GPU is off and the page has no adapter. The JSON also carries the peak resident memory
// of Chromium's processes (sampled every 100 ms from /proc), the page's backend and ?bench=1's figures.
import fs from "node:fs";
import puppeteer from "puppeteer-core";

const [url, shot] = process.argv.slice(2, 4);
const opt = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const slowdown = Number(opt("--cpu-slowdown", 4));
const timeout = Number(opt("--timeout-s", 300)) * 1000;
const desktop = process.argv.includes("--desktop");
const webgpu = process.argv.includes("--webgpu");
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  protocolTimeout: timeout + 60000,  // a page busy loading a large package answers late
  args: ["--no-sandbox", "--disable-dev-shm-usage",
    ...(webgpu ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : ["--disable-gpu"])],
});

/** Resident bytes of the browser process and all its descendants (renderer, GPU process), from /proc. */
function treeRss(root) {
  const children = new Map();
  let rss = 0;
  for (const pid of fs.readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(pid));
    } catch { /* gone */ }
  }
  const todo = [root];
  while (todo.length) {
    const pid = todo.pop();
    try {
      const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
      rss += Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) * 1024;
    } catch { /* gone */ }
    todo.push(...(children.get(pid) ?? []));
  }
  return rss;
}
let peakRss = 0;
const sampler = setInterval(() => { peakRss = Math.max(peakRss, treeRss(browser.process().pid)); }, 100);
try {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => logs.push(`pageerror: ${e.message}`));
  if (!desktop) {
    await page.setViewport({ width: 390, height: 844, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
    const cdp = await page.createCDPSession();
    await cdp.send("Emulation.setCPUThrottlingRate", { rate: slowdown });
  }
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => document.body.dataset.done === "1", { timeout, polling: 100 });
  const result = await page.evaluate(() => ({
    output: document.getElementById("output").textContent,
    stats: document.getElementById("stats").textContent,
    error: document.getElementById("error").textContent,
    isolated: crossOriginIsolated,
    backend: document.getElementById("backend").textContent,
    statsJson: document.body.dataset.stats ? JSON.parse(document.body.dataset.stats) : null,
    bench: document.body.dataset.bench ? JSON.parse(document.body.dataset.bench) : null,
    backendName: document.body.dataset.backend ?? null,
  }));
  if (shot) await page.screenshot({ path: shot, fullPage: false });
  console.log(JSON.stringify({ ...result, peakRssBytes: peakRss, logs: logs.slice(-20) }));
} finally {
  clearInterval(sampler);
  await browser.close();
}
