#!/usr/bin/env node
// A tiny static server for the demo page and the headless browser test: web/ at /, the bundle
// directory at /bundle/. Cross-origin isolation headers are set so onnxruntime-web may use WASM
// threads where asked. Only GET/HEAD of files inside those two folders; nothing else.
//
//   npm run demo -- [BUNDLE_DIR] [--port N]     (default bundle: web/.cache/dfn3-onnx)

import { createReadStream } from "node:fs";
import { realpath, stat } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const WEB_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
export const DEFAULT_BUNDLE = path.join(WEB_ROOT, ".cache", "dfn3-onnx");

const TYPES = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".mjs": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".wasm": "application/wasm",
  ".onnx": "application/octet-stream",
  ".npz": "application/octet-stream",
  ".png": "image/png",
  ".wav": "audio/wav",
};

/** The file a URL path names, or null when it is outside both roots. */
async function resolveFile(urlPath, bundleDir) {
  const decoded = decodeURIComponent(urlPath.split("?")[0]);
  const [root, rest] = decoded.startsWith("/bundle/") ? [bundleDir, decoded.slice(8)] : [WEB_ROOT, decoded.slice(1)];
  const file = path.resolve(root, rest.endsWith("/") || rest === "" ? `${rest}index.html` : rest);
  try {
    const real = await realpath(file);
    const realRoot = await realpath(root);
    if (!real.startsWith(realRoot + path.sep)) return null;
    return (await stat(real)).isFile() ? real : null;
  } catch {
    return null;
  }
}

/** Start serving; resolves to the http.Server once listening (port 0: any free port). */
export function startServer({ bundleDir = DEFAULT_BUNDLE, port = 0, host = "127.0.0.1" } = {}) {
  const server = http.createServer(async (req, res) => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405).end();
      return;
    }
    if (req.url === "/" || req.url.startsWith("/?")) {
      res.writeHead(302, { Location: `/demo/${req.url.slice(1)}` }).end();
      return;
    }
    const file = await resolveFile(req.url, path.resolve(bundleDir));
    if (!file) {
      res.writeHead(404, { "Content-Type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, {
      "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
      "Cross-Origin-Opener-Policy": "same-origin",
      "Cross-Origin-Embedder-Policy": "require-corp",
      "Cache-Control": "no-cache",
    });
    if (req.method === "HEAD") res.end();
    else createReadStream(file).pipe(res);
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => resolve(server));
  });
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const portAt = args.indexOf("--port");
  const port = portAt >= 0 ? Number(args.splice(portAt, 2)[1]) : 8080;
  const bundleDir = args[0] ?? DEFAULT_BUNDLE;
  try {
    await stat(path.join(bundleDir, "manifest.json"));
  } catch {
    console.error(`error: ${bundleDir} has no manifest.json; pass an ONNX bundle directory (dfsdk export --model dfn3 --target onnx -o DIR)`);
    process.exit(2);
  }
  const server = await startServer({ bundleDir, port });
  console.log(`demo at http://127.0.0.1:${server.address().port}/demo/ (bundle ${path.resolve(bundleDir)}); Ctrl-C stops`);
}
