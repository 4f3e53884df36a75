#!/usr/bin/env node
// Test setup (run by `npm test` before the tests): the bundles of test/paths.js and the Python
// runtime's outputs the tests compare against, written into web/.cache/ with the SDK's own CLI.
//
//   $DFNET4_WEB_BUNDLE, $DFNET4_WEB_INT8_BUNDLE, $DFNET4_WEB_16K_BUNDLE  bundle directories to use
//                       instead of exporting them
//   $DFSDK              the dfsdk command (default: dfsdk on PATH, else ../.venv/bin/dfsdk)

import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { BUNDLES, CACHE, EXAMPLE, PROBES, WEB, bundleDir, probePath } from "./paths.js";
import { readWav, writeWav } from "../src/wav.js";

function findDfsdk() {
  if (process.env.DFSDK) return process.env.DFSDK;
  try {
    return execFileSync("sh", ["-c", "command -v dfsdk"], { encoding: "utf8" }).trim();
  } catch {
    const venv = path.resolve(CACHE, "..", "..", ".venv", "bin", "dfsdk");
    if (existsSync(venv)) return venv;
    throw new Error("dfsdk not found: install the SDK (pip install -e .) or set $DFSDK");
  }
}

const dfsdk = findDfsdk();
const python = path.join(path.dirname(dfsdk), "python");
function run(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"], maxBuffer: 64 << 20 });
  } catch (e) {
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${e.status}):\n${e.stderr}`);
  }
}
mkdirSync(CACHE, { recursive: true });

for (const [key, { model, precision }] of Object.entries(BUNDLES)) {
  const bundle = bundleDir(key);
  if (!existsSync(path.join(bundle, "manifest.json"))) {
    console.log(`exporting ${model} as an ONNX ${precision} bundle into ${bundle}`);
    run(dfsdk, ["export", "--model", model, "--target", "onnx", "--precision", precision, "-o", bundle]);
  }
}

// The demo clip as mono float32 WAV, then probes made from it that exercise what a port gets
// wrong: leading and inner digital silence, hops just under and over the silence threshold,
// a partial final hop.
const exampleWav = probePath("example");
run(python, ["-c", "import sys, soundfile as sf; x, sr = sf.read(sys.argv[1], dtype='float32'); sf.write(sys.argv[2], x, sr, subtype='FLOAT')", EXAMPLE, exampleWav]);
const { sampleRate, samples } = readWav(new Uint8Array(readFileSync(exampleWav)));
const rms = (x) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
const speech = samples.subarray(sampleRate, 4 * sampleRate);
const level = (x, meanSquare) => x.map((v) => (v * Math.sqrt(meanSquare)) / rms(x));
const parts = [
  new Float32Array(Math.round(0.5 * sampleRate)), // leading digital silence
  speech.subarray(0, 2 * sampleRate),
  new Float32Array(Math.round(0.3 * sampleRate) + 123), // inner silence, not a whole number of hops
  level(speech.slice(0, sampleRate / 2), 0.5e-7), // quiet: most hops under the 1e-7 rule
  level(speech.slice(sampleRate / 2, sampleRate), 3e-7), // quiet: most hops over it
  speech.subarray(2 * sampleRate, 3 * sampleRate - 217), // ends on a partial hop
];
const probe = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
parts.reduce((at, p) => (probe.set(p, at), at + p.length), 0);
writeFileSync(probePath("silence"), writeWav(probe, sampleRate));

// The Python front-end's spectra and features of the demo clip (test/frontend.test.js).
run(python, [path.join(WEB, "test", "frontend_reference.py"), exampleWav, path.join(CACHE, "frontend.npz"), "500"]);
for (const { name, input, bundle, args } of PROBES) {
  run(dfsdk, ["run", "--model", bundleDir(bundle), probePath(input), "-o", probePath(`${name}.expected`), "--overwrite", ...args]);
}
console.log(`prepared ${CACHE}`);
