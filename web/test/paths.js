// Where the test setup writes and the tests read (web/.cache/, git-ignored).

import path from "node:path";
import { fileURLToPath } from "node:url";

export const WEB = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const CACHE = path.join(WEB, ".cache");
export const EXAMPLE = path.resolve(WEB, "..", "examples", "noisy_speech_48k.flac");

/** The bundles the tests run: $DFNET4_WEB_BUNDLE (fp32) and $DFNET4_WEB_INT8_BUNDLE, else the
 *  ones the setup exports. */
export const bundleDir = (precision = "fp32") =>
  precision === "int8"
    ? process.env.DFNET4_WEB_INT8_BUNDLE || path.join(CACHE, "dfn3-onnx-int8")
    : process.env.DFNET4_WEB_BUNDLE || path.join(CACHE, "dfn3-onnx");
export const probePath = (name) => path.join(CACHE, `${name}.wav`);

/** Clips the cli must match the Python runtime on: input, bundle precision (default fp32), and
 *  options given to both CLIs (same names). */
export const PROBES = [
  { name: "example", input: "example", args: [] },
  { name: "silence", input: "silence", args: [] },
  { name: "example-limited", input: "example", args: ["--atten-lim-db", "12", "--post-filter-beta", "0.02"] },
  // DFN3's lsnr stays within [-15, 35] dB, so the default gates never act: these thresholds make
  // every stage switch on and off (zero mask, ERB only, skipped decoders keeping their state).
  { name: "example-gated", input: "example", args: ["--min-db-thresh", "-8", "--max-db-erb-thresh", "15", "--max-db-df-thresh", "5"] },
  // int8 weights (MatMulNBits, DequantizeLinear) against the Python runtime on the same int8 bundle.
  { name: "example-int8", input: "example", precision: "int8", args: [] },
];
