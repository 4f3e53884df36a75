// The demo page in headless Chromium (Debian's chromium, driven by playwright-core): the golden
// fixtures replayed in the browser's Worker, a chosen file enhanced against dfsdk run, and the
// live microphone path (Chromium's fake device) through the AudioWorklet and the Worker.
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";
import { startServer } from "../demo/serve.js";
import { snrDb } from "../src/selfcheck.js";
import { readWav } from "../src/wav.js";
import { bundleDir, probePath } from "./paths.js";

const CANDIDATES = [process.env.CHROMIUM_PATH, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"];
const executablePath = CANDIDATES.find((p) => p && existsSync(p));
const skip = executablePath ? false : `no Chromium found (set CHROMIUM_PATH or apt-get install chromium); looked at ${CANDIDATES.filter(Boolean)}`;
const TIMEOUT_MS = 240_000;

let server;
let browser;
let page;
const pageErrors = [];

before(async () => {
  if (skip) return;
  server = await startServer({ bundleDir: bundleDir() });
  browser = await chromium.launch({
    executablePath,
    // --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
    args: ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required"],
  });
  page = await browser.newPage();
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => m.type() === "error" && !/Failed to load resource/.test(m.text()) && pageErrors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && pageErrors.push(`HTTP ${r.status()} for ${r.url()}`));
  await page.goto(`http://127.0.0.1:${server.address().port}/demo/`);
  try {
    await page.waitForFunction(() => window.demo, null, { timeout: 60_000 });
    await page.evaluate(() => window.demo.ready);
  } catch (e) {
    throw new Error(`the demo page did not load: ${e.message}; page errors: ${pageErrors.join(" | ")}`);
  }
}, { timeout: TIMEOUT_MS });

after(async () => {
  await browser?.close();
  server?.close();
});

test("the demo page replays the golden fixtures in the browser within the manifest's tolerances", { skip, timeout: TIMEOUT_MS }, async (t) => {
  await page.click("#selfcheck");
  const handle = await page.waitForSelector("#selfcheck-result[data-json]", { timeout: TIMEOUT_MS });
  const r = JSON.parse(await handle.getAttribute("data-json"));
  assert.ok(r.worstGraph <= r.tolerance.graph_rel_error, `graphs: ${r.worstGraph}`);
  assert.ok(r.audio.snrDb >= r.tolerance.audio_snr_db, `audio: ${r.audio.snrDb} dB`);
  assert.equal(r.audio.length, r.audio.expectedLength);
  assert.ok(r.passed, JSON.stringify(r));
  t.diagnostic(`Chromium: ${r.audio.snrDb.toFixed(1)} dB from PyTorch; ${r.audio.hopMs.median.toFixed(2)} ms per hop (median over the 1 s fixture)`);
  assert.deepEqual(pageErrors, []);
});

test("a chosen file enhanced in the browser equals dfsdk run to >= 60 dB", { skip, timeout: TIMEOUT_MS }, async (t) => {
  await page.setInputFiles("#file", probePath("example"));
  await page.click("#enhance");
  await page.waitForFunction(() => window.demo.lastEnhanced !== null, null, { timeout: TIMEOUT_MS });
  const base64 = await page.evaluate(() => {
    const bytes = new Uint8Array(window.demo.lastEnhanced.buffer);
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(s);
  });
  const bytes = Buffer.from(base64, "base64");
  const got = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const want = readWav(new Uint8Array(readFileSync(probePath("example.expected")))).samples;
  assert.equal(got.length, want.length);
  const snr = snrDb(want, got);
  assert.ok(snr >= 60, `${snr.toFixed(1)} dB`);
  const ms = await page.evaluate(() => window.demo.lastHopMs);
  t.diagnostic(`Chromium: ${snr.toFixed(1)} dB from dfsdk run; per hop: median ${ms.median.toFixed(2)} ms, mean ${ms.mean.toFixed(2)} ms, p95 ${ms.p95.toFixed(2)} ms over ${ms.hops} hops`);
});

test("live microphone audio runs through the AudioWorklet and the Worker", { skip, timeout: TIMEOUT_MS }, async (t) => {
  await page.click("#mic-start");
  await page.waitForFunction(() => /hops enhanced/.test(document.getElementById("mic-result").textContent), null, { timeout: 60_000 });
  await page.waitForTimeout(2000);
  const stats = await page.evaluate(() => window.demo.micStop());
  assert.ok(stats.chunks > 100, `only ${stats.chunks} chunks of 128 samples reached the Worker`);
  assert.equal(stats.error, null);
  assert.ok(stats.hops > 0 && Number.isFinite(stats.lsnrDb), JSON.stringify(stats));
  t.diagnostic(`Chromium live: ${stats.chunks} chunks, ${stats.hops} hops enhanced, median ${stats.hopMs.median.toFixed(2)} ms per hop`);
  assert.deepEqual(pageErrors, []);
});
