// Browser entry point (page or module Worker): onnxruntime-web's WASM build and PFFFT loaded from
// web/node_modules by URL (no bundler), the bundle fetched over HTTP.

import { Bundle } from "./bundle.js";
import { loadPffft } from "./fft.js";

const NODE_MODULES = new URL("../node_modules/", import.meta.url);

/** {bundle, pffft, ort} for the bundle served at `bundleUrl` (a folder URL ending in "/"). */
export async function loadBrowserRuntime(bundleUrl, { threads = 1 } = {}) {
  const ort = await import(new URL("onnxruntime-web/dist/ort.wasm.min.mjs", NODE_MODULES).href);
  ort.env.wasm.wasmPaths = new URL("onnxruntime-web/dist/", NODE_MODULES).href;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = "error";
  const base = new URL(bundleUrl, globalThis.location.href);
  const read = async (relative) => {
    const response = await fetch(new URL(relative, base));
    if (!response.ok) throw new Error(`HTTP ${response.status} for ${new URL(relative, base)}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const [bundle, pffft] = await Promise.all([
    Bundle.load(ort, read),
    loadPffft(new URL("@echogarden/pffft-wasm/dist/simd/pffft.js", NODE_MODULES).href),
  ]);
  return { bundle, pffft, ort };
}
