// Node entry points: a bundle directory on disk loaded with onnxruntime-web's WASM backend (the
// same engine as in the browser), and the FFT module.

import { readFile } from "node:fs/promises";
import path from "node:path";
import * as ort from "onnxruntime-web";
import { Bundle } from "./bundle.js";
import { loadPffft } from "./fft.js";

/** {bundle, pffft} for the bundle directory `dir`; `threads` WASM threads (1: the CLI's default). */
export async function loadNodeRuntime(dir, { threads = 1 } = {}) {
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
  const root = path.resolve(dir);
  const read = async (relative) => new Uint8Array(await readFile(path.join(root, relative)));
  const [bundle, pffft] = await Promise.all([Bundle.load(ort, read), loadPffft()]);
  return { bundle, pffft };
}
