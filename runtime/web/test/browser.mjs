// Opens the page in headless Chromium as a phone (390x844, touch, 4x slower CPU), waits for the run the URL asks
// for, prints {output, stats, error, isolated} as JSON and saves a screenshot.
//   node test/browser.mjs URL SCREENSHOT.png [--cpu-slowdown 4] [--timeout-s 300] [--desktop]
import puppeteer from "puppeteer-core";

const [url, shot] = process.argv.slice(2, 4);
const opt = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const slowdown = Number(opt("--cpu-slowdown", 4));
const timeout = Number(opt("--timeout-s", 300)) * 1000;
const desktop = process.argv.includes("--desktop");
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
});
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
  }));
  if (shot) await page.screenshot({ path: shot, fullPage: false });
  console.log(JSON.stringify({ ...result, logs: logs.slice(-20) }));
} finally {
  await browser.close();
}
