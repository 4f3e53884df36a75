#!/usr/bin/env node
// node web/bench.js [BUNDLE_DIR] [INPUT.wav]: per-hop wall time of the stream in node (onnxruntime-web,
// WASM, 1 thread) and the FFT choice: PFFFT's 960-point real transform against fft.js, which
// only transforms powers of two (a 960-point DFT through it is Bluestein: 3 transforms of 2048).

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { loadNodeRuntime } from "./src/node.js";
import { RealFft } from "./src/fft.js";
import { enhance, hopTimeSummary } from "./src/stream.js";
import { readWav } from "./src/wav.js";
import { bundleDir, probePath } from "./test/paths.js";

const [dir = bundleDir(), input = probePath("example")] = process.argv.slice(2);
const { bundle, pffft } = await loadNodeRuntime(dir);
const { samples } = readWav(new Uint8Array(readFileSync(input)));
const fmt = (t) => `median ${t.median.toFixed(2)} ms, mean ${t.mean.toFixed(2)} ms, p95 ${t.p95.toFixed(2)} ms over ${t.hops} hops`;
for (let round = 1; round <= 3; round++) {
  const times = [];
  await enhance(bundle, pffft, samples, {}, times);
  console.log(`stream, round ${round}: ${fmt(hopTimeSummary(times))}`);
}

const time = (fn, reps = 20000) => {
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) fn();
  return ((performance.now() - t0) * 1000) / reps;
};
const n = bundle.manifest.dsp.fft_size;
const fft = new RealFft(pffft, n);
const x = Float32Array.from({ length: n }, () => Math.random() - 0.5);
const X = new Float32Array(n + 2);
const y = new Float32Array(n);
console.log(`PFFFT ${n}-point real forward + inverse: ${time(() => (fft.forward(x, X), fft.inverse(X, y))).toFixed(1)} us`);
const FFT = createRequire(import.meta.url)("fft.js");
for (const m of [1024, 2048]) {
  const f = new FFT(m);
  const a = f.createComplexArray();
  const b = f.createComplexArray();
  console.log(`fft.js ${m}-point complex transform: ${time(() => f.transform(b, a)).toFixed(1)} us`);
}
