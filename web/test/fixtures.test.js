// The bundles' golden fixtures replayed in node (onnxruntime-web's WASM backend): DFN3 at 48 kHz
// and dfnet4-16k (fft 320, a Mamba backbone, a waveform input).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { deriveTables } from "../src/dsp.js";
import { loadNodeRuntime } from "../src/node.js";
import { CASE_SNR_DB, FEATURE_TOLERANCE, compareAudio, compareCases, compareFeatures, loadFixtures, replayGraphs } from "../src/selfcheck.js";
import { bundleDir } from "./paths.js";

for (const key of ["fp32", "16k"]) {
  describe(`bundle ${key}`, () => {
    let runtime;
    let fixtures;
    let tolerance;
    before(async () => {
      runtime = await loadNodeRuntime(bundleDir(key));
      fixtures = await loadFixtures(runtime.bundle);
      tolerance = runtime.bundle.manifest.validation.tolerance;
    });
    after(() => runtime.bundle.release());

    test("stored features through the graphs frame by frame give PyTorch's outputs and final states", async (t) => {
      const r = await replayGraphs(runtime.bundle, fixtures);
      assert.equal(r.frames, fixtures.get("enc/lsnr").shape[0]);
      for (const name of ["enc/lsnr", "erb_dec/erb_mask", "df_dec/df_coefs"]) assert.ok(name in r.worst, name);
      assert.ok(Object.keys(r.states).length >= 3, JSON.stringify(r.states));
      const checked = { ...r.worst, ...(runtime.bundle.manifest.precision === "fp32" ? r.states : {}) };
      for (const [name, err] of Object.entries(checked)) assert.ok(err <= tolerance.graph_rel_error, `${name}: relative error ${err} > ${tolerance.graph_rel_error}`);
      t.diagnostic(`worst relative error ${Math.max(...Object.values(checked)).toExponential(2)}; node: ${r.hopMs.toFixed(2)} ms per frame (3 graphs)`);
    });

    test("our front-end gives the stored features of audio_in", () => {
      const r = compareFeatures(runtime.bundle, runtime.pffft, fixtures);
      assert.ok(r.featErb <= FEATURE_TOLERANCE && r.featSpec <= FEATURE_TOLERANCE, JSON.stringify(r));
    });

    test("audio_in through the stream with every stage on gives audio_out", async (t) => {
      const r = await compareAudio(runtime.bundle, runtime.pffft, fixtures);
      assert.equal(r.length, r.expectedLength);
      assert.ok(r.snrDb >= tolerance.audio_snr_db, `${r.snrDb.toFixed(1)} dB < ${tolerance.audio_snr_db} dB`);
      t.diagnostic(`${r.snrDb.toFixed(1)} dB from PyTorch; node: ${r.hopMs.median.toFixed(2)} ms per hop (median)`);
    });

    test("every audio case of the fixtures (silence, gating, post-filter, attenuation limit, partial hop) matches", async (t) => {
      const cases = runtime.bundle.manifest.fixtures.cases ?? [];
      if (!cases.length) {
        t.skip("the manifest lists no fixture cases (bundles exported before schema 2 have none)");
        return;
      }
      const results = await compareCases(runtime.bundle, runtime.pffft, fixtures);
      assert.equal(results.length, cases.length);
      for (const r of results) {
        assert.equal(r.length, r.expectedLength, r.name);
        assert.ok(r.snrDb >= CASE_SNR_DB, `case ${r.name} (${JSON.stringify(r.options)}): ${r.snrDb.toFixed(1)} dB < ${CASE_SNR_DB} dB`);
      }
      t.diagnostic(results.map((r) => `${r.name} ${r.snrDb.toFixed(1)} dB`).join(", "));
    });

    test("the manifest's front-end tables (schema 2) are what src/dsp.js derives for schema 1 bundles", (t) => {
      const m = runtime.bundle.manifest;
      if (m.schema_version < 2) {
        t.skip("a schema 1 manifest has no tables to compare with");
        return;
      }
      const derived = deriveTables(m.dsp);
      assert.deepEqual(derived.erbWidths, m.dsp.erb_widths);
      assert.equal(derived.normAlpha, m.dsp.norm_alpha);
      assert.deepEqual(derived.erbNormInit, m.dsp.erb_norm_init);
      assert.deepEqual(derived.specNormInit, m.dsp.spec_norm_init);
    });
  });
}
