#!/usr/bin/env node
// node web/cli.js BUNDLE_DIR INPUT.wav OUTPUT.wav [options: see USAGE]
//
// Enhances a mono 32-bit float WAV at the bundle's sample rate with the bundle's component graphs
// (onnxruntime-web, WASM) and writes a mono 32-bit float WAV of the same length. This is the
// client `dfsdk conformance --client "node web/cli.js {bundle} {input} {output}"` runs.
// Exit codes: 0 done, 1 a failure while running, 2 a usage error (arguments, files, formats).

import { readFile, rename, writeFile } from "node:fs/promises";
import { BundleError } from "./src/bundle.js";
import { loadNodeRuntime } from "./src/node.js";
import { enhance } from "./src/stream.js";
import { WavError, readWav, writeWav } from "./src/wav.js";

const USAGE =
  "usage: node web/cli.js BUNDLE_DIR INPUT.wav OUTPUT.wav [--atten-lim-db DB] [--post-filter-beta B]\n" +
  "       [--min-db-thresh DB] [--max-db-erb-thresh DB] [--max-db-df-thresh DB]   (dfsdk run's options and defaults)";
// dfsdk run's flags, each the option of the same name (src/options.js): --atten-lim-db -> atten_lim_db.
const FLAGS = Object.fromEntries(
  ["atten_lim_db", "post_filter_beta", "min_db_thresh", "max_db_erb_thresh", "max_db_df_thresh"].map((o) => [`--${o.replaceAll("_", "-")}`, o]),
);

class UsageError extends Error {}

function parseArgs(argv) {
  const positional = [];
  const options = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "-h" || arg === "--help") {
      console.log(USAGE);
      process.exit(0);
    }
    if (arg in FLAGS) {
      const text = argv[++i];
      const value = /^[-+]?inf(inity)?$/i.test(text ?? "") ? (text.startsWith("-") ? -Infinity : Infinity) : Number(text);
      if (text === undefined || text.trim() === "" || Number.isNaN(value)) throw new UsageError(`${arg} needs a number, got ${text}`);
      options[FLAGS[arg]] = value;
    } else if (arg.startsWith("--")) {
      throw new UsageError(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 3) throw new UsageError(`expected 3 arguments (bundle, input, output), got ${positional.length}`);
  return { bundleDir: positional[0], input: positional[1], output: positional[2], options };
}

async function main() {
  const { bundleDir, input, output, options } = parseArgs(process.argv.slice(2));
  let bytes;
  try {
    bytes = new Uint8Array(await readFile(input));
  } catch (e) {
    throw new UsageError(`cannot read ${input}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
  }
  const { sampleRate, samples } = readWav(bytes, input);
  const { bundle, pffft } = await loadNodeRuntime(bundleDir);
  if (sampleRate !== bundle.sampleRate) {
    throw new UsageError(`${input} is at ${sampleRate} Hz, the bundle's model runs at ${bundle.sampleRate} Hz; resample it first`);
  }
  const enhanced = await enhance(bundle, pffft, samples, options);
  const tmp = `${output}.partial-${process.pid}`;
  await writeFile(tmp, writeWav(enhanced, sampleRate));
  await rename(tmp, output); // atomic: a failed run never leaves a half-written output
}

main().catch((e) => {
  const usage = e instanceof UsageError || e instanceof WavError || e instanceof BundleError || e instanceof RangeError;
  console.error(`error: ${e.message}`);
  if (e instanceof UsageError) console.error(USAGE);
  process.exit(usage ? 2 : 1);
});
