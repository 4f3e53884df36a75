// web/cli.js against the Python runtime (`dfsdk run` on the same bundle, written by prepare.js),
// and its refusals: exit 2 with a message for every usage error.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { test } from "node:test";
import { snrDb } from "../src/selfcheck.js";
import { readWav, writeWav } from "../src/wav.js";
import { PROBES, WEB, bundleDir, probePath } from "./paths.js";

const CLI = path.join(WEB, "cli.js");
const tmp = mkdtempSync(path.join(tmpdir(), "dfnet4-web-"));
const cli = (...args) => spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8" });
const wav = (file) => readWav(new Uint8Array(readFileSync(file)));

for (const { name, input, bundle, args } of PROBES) {
  test(`cli equals dfsdk run on ${name} to >= 60 dB, same length`, (t) => {
    const out = path.join(tmp, `${name}.wav`);
    const r = cli(bundleDir(bundle), probePath(input), out, ...args);
    assert.equal(r.status, 0, r.stderr);
    const got = wav(out);
    const want = wav(probePath(`${name}.expected`));
    assert.equal(got.sampleRate, want.sampleRate);
    assert.equal(got.samples.length, wav(probePath(input)).samples.length);
    const snr = snrDb(want.samples, got.samples);
    assert.ok(snr >= 60, `${snr.toFixed(1)} dB`);
    t.diagnostic(`${snr.toFixed(1)} dB from dfsdk run`);
  });
}

test("cli output is exactly zero where the input's hops are digital silence, as the Python runtime's", () => {
  const want = wav(probePath("silence.expected")).samples;
  const got = wav(path.join(tmp, "silence.wav")).samples;
  const zerosWant = want.reduce((n, v) => n + (v === 0), 0);
  const zerosGot = got.reduce((n, v, i) => n + (v === 0 && want[i] === 0), 0);
  assert.ok(zerosWant > 24000, `the probe should start with silent hops, found ${zerosWant} zeros`);
  assert.equal(zerosGot, zerosWant);
});

function expectUsageError(args, pattern) {
  const r = cli(...args);
  assert.equal(r.status, 2, `exit ${r.status}: ${r.stderr}`);
  assert.match(r.stderr, pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "a message, not a stack trace");
}

test("cli usage errors exit 2 with a message", () => {
  const out = path.join(tmp, "never.wav");
  const int16 = path.join(tmp, "int16.wav");
  const pcm = writeWav(new Float32Array(4800), 48000);
  pcm[20] = 1; // format tag: integer PCM
  pcm[34] = 16;
  writeFileSync(int16, pcm);
  const rate = path.join(tmp, "16k.wav");
  writeFileSync(rate, writeWav(new Float32Array(1600), 16000));
  expectUsageError([bundleDir(), probePath("example")], /expected 3 arguments/);
  expectUsageError([bundleDir(), path.join(tmp, "missing.wav"), out], /cannot read .*missing\.wav: no such file/);
  expectUsageError([bundleDir(), int16, out], /must be mono 32-bit float WAV, found 1 channel\(s\), integer PCM 16-bit/);
  expectUsageError([bundleDir(), rate, out], /16000 Hz, the bundle's model runs at 48000 Hz/);
  expectUsageError([tmp, probePath("example"), out], /cannot read manifest\.json/);
  expectUsageError([bundleDir(), probePath("example"), out, "--atten-lim-db", "x"], /--atten-lim-db needs a number/);
  expectUsageError([bundleDir(), probePath("example"), out, "--atten-lim-db", "0"], /atten_lim_db must be/);
  assert.ok(!existsSync(out), "no output is written on a usage error");
});

test("a damaged bundle exits 2 naming every problem at once", () => {
  const source = bundleDir();
  const manifest = JSON.parse(readFileSync(path.join(source, "manifest.json"), "utf8"));
  const write = (name, edit) => {
    const dir = path.join(tmp, name);
    mkdirSync(dir);
    for (const f of readdirSync(source)) if (f !== "manifest.json") symlinkSync(path.join(source, f), path.join(dir, f));
    const m = structuredClone(manifest);
    edit(m);
    writeFileSync(path.join(dir, "manifest.json"), JSON.stringify(m));
    return dir;
  };
  const out = path.join(tmp, "never.wav");
  const edited = write("edited", (m) => {
    m.schema_version = 99;
    m.dsp.hop_size_samples = 0;
  });
  expectUsageError([edited, probePath("example"), out], /schema_version 99 is not supported.*dsp\.hop_size_samples must be a positive integer/);
  const damaged = write("damaged", (m) => {
    m.graphs.find((g) => g.name === "enc").sha256 = "0".repeat(64);
  });
  expectUsageError([damaged, probePath("example"), out], /graph enc: enc\.onnx has sha256 [0-9a-f]{64}, the manifest says 0{64}/);
});
