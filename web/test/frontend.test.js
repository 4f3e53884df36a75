// Our front-end's arithmetic against the Python runtime's on the same spectra (the FFTs differ by
// float32 rounding; everything after them is float32 operation for operation): 500 hops of the
// demo clip, long enough for unrounded exponential means to drift (they did: 2.3e-6 by frame 56).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { FrontEnd, deriveTables } from "../src/dsp.js";
import { loadPffft } from "../src/fft.js";
import { readNpz } from "../src/npz.js";
import { CACHE } from "./paths.js";

// log10, hypot, sqrt and division may round differently in libm and in JS by an ulp: an ulp of a
// band's dB (3.8e-6 between 32 and 64 dB) over 40 is 1e-7, and the means carry a few of them
// (3.9e-7 measured; the unrounded means of before were 2.3e-6 off; so was 7.7e-7 while Python took
// numpy 2.4's float32 log10, up to 2 ulp off on AVX-512: dsp.band_power_db now rounds once).
const TOLERANCE = 5e-7;

test("features from Python's spectra equal Python's features over 500 hops", async () => {
  const ref = await readNpz(new Uint8Array(readFileSync(path.join(CACHE, "frontend.npz"))));
  const dsp = { sample_rate_hz: 48000, fft_size: 960, hop_size_samples: 480, nb_erb: 32, nb_df: 96, min_nb_erb_freqs: 2, norm_tau_s: 1 };
  const fe = new FrontEnd(await loadPffft(), dsp, deriveTables(dsp));
  const state = fe.newState();
  const spec = ref.get("spec");
  const [frames, bins] = spec.shape;
  assert.equal(frames, 500);
  const erb = new Float32Array(fe.nbErb);
  const unit = new Float32Array(2 * fe.nbDf);
  let worstErb = 0;
  let worstSpec = 0;
  for (let t = 0; t < frames; t++) {
    fe.features(spec.data.subarray(t * bins * 2, (t + 1) * bins * 2), state, erb, unit);
    const wantErb = ref.get("feat_erb").data.subarray(t * fe.nbErb, (t + 1) * fe.nbErb);
    const wantSpec = ref.get("feat_spec").data.subarray(t * 2 * fe.nbDf, (t + 1) * 2 * fe.nbDf);
    for (let i = 0; i < erb.length; i++) worstErb = Math.max(worstErb, Math.abs(erb[i] - wantErb[i]));
    for (let i = 0; i < unit.length; i++) worstSpec = Math.max(worstSpec, Math.abs(unit[i] - wantSpec[i]));
  }
  fe.dispose();
  assert.ok(worstErb <= TOLERANCE, `feat_erb differs by ${worstErb}`);
  assert.ok(worstSpec <= TOLERANCE, `feat_spec differs by ${worstSpec}`);
});
