// Where the test setup writes and the tests read (web/.cache/, git-ignored).

import path from "node:path";
import { fileURLToPath } from "node:url";

export const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const CACHE = path.join(WEB, ".cache");
export const EXAMPLE = path.resolve(WEB, "..", "examples", "noisy_speech_48k.flac");

/** The bundles the tests run, by key: the directory in $env, else the one the setup exports. */
export const BUNDLES = {
  fp32: { env: "DFNET4_WEB_BUNDLE", dir: "dfn3-onnx", model: "dfn3", precision: "fp32" },
  int8: { env: "DFNET4_WEB_INT8_BUNDLE", dir: "dfn3-onnx-int8", model: "dfn3", precision: "int8" },
  // a 16 kHz model (fft 320) with a Mamba backbone and a waveform input (frame_samples)
  "16k": { env: "DFNET4_WEB_16K_BUNDLE", dir: "dfnet4-16k-onnx", model: "dfnet4-16k", precision: "fp32" },
};
export const bundleDir = (key = "fp32") => process.env[BUNDLES[key].env] || path.join(CACHE, BUNDLES[key].dir);
export const probePath = (name) => path.join(CACHE, `${name}.wav`);

/** Clips the cli must match the Python runtime on: input, bundle key (default fp32), and
 *  options given to both CLIs (same names). */
export const PROBES = [
  { name: "example", input: "example", args: [] },
  { name: "silence", input: "silence", args: [] },
  { name: "example-limited", input: "example", args: ["--atten-lim-db", "12", "--post-filter-beta", "0.02"] },
  // DFN3's lsnr stays within [-15, 35] dB, so the default gates never act: these thresholds make
  // every stage switch on and off (zero mask, ERB only, skipped decoders keeping their state).
  { name: "example-gated", input: "example", args: ["--min-db-thresh", "-8", "--max-db-erb-thresh", "15", "--max-db-df-thresh", "5"] },
  // int8 weights (MatMulNBits, DequantizeLinear) against the Python runtime on the same int8 bundle.
  { name: "example-int8", input: "example", bundle: "int8", args: [] },
];
