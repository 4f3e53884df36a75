// A port's self-check against the bundle's golden fixtures (docs/BUNDLE.md "Golden fixtures"),
// the same in node and in the browser:
//   1. graphs: the stored features fed frame by frame through the component graphs (states fed
//      back by name), every output and final state compared with PyTorch's;
//   2. front-end: our own features of audio_in compared with the stored ones;
//   3. audio: our whole stream on audio_in (every stage on, as recorded) against audio_out.

import { readNpz } from "./npz.js";
import { FrontEnd } from "./dsp.js";
import { ALL_STAGES, enhance, hopTimeSummary } from "./stream.js";

// Our features may differ from PyTorch's by float rounding only (1.5e-6 measured on DFN3).
export const FEATURE_TOLERANCE = 1e-4;

export function snrDb(reference, estimate) {
  let signal = 0;
  let noise = 0;
  const n = Math.min(reference.length, estimate.length);
  for (let i = 0; i < n; i++) {
    signal += reference[i] * reference[i];
    noise += (reference[i] - estimate[i]) ** 2;
  }
  return noise === 0 ? Infinity : 10 * Math.log10(signal / noise);
}

// Fixture cases were recorded by the SDK's stream over this bundle's own graphs: a port matches
// them as closely as it matches `dfsdk run` (the bar of issue 16).
export const CASE_SNR_DB = 60;

const frameOf = (array, t) => {
  const size = array.data.length / array.shape[0];
  return array.data.subarray(t * size, (t + 1) * size);
};

/** Load the bundle's fixtures.npz (Map name -> {shape, data}). */
export async function loadFixtures(bundle) {
  return readNpz(await bundle.readFile(bundle.manifest.fixtures.file));
}

/** 1. Stored features through the graphs. Returns {frames, worst: {"graph/output": relative error},
 *  states: {"graph/final.state_out.name": relative error}, hopMs: mean wall time of the three
 *  graph calls per frame}. The manifest's graph_rel_error bounds the outputs (as the exporter's
 *  validation); int8 states drift further (0.21 on DFN3's GRUs, outputs 0.18). */
export async function replayGraphs(bundle, fixtures) {
  const T = bundle.ort.Tensor;
  const states = bundle.initialStates();
  const frames = fixtures.get("enc/feat_erb").shape[0];
  const worst = {};
  const scale = {};
  const track = (key, got, want) => {
    let diff = 0;
    let peak = 0;
    for (let i = 0; i < want.length; i++) {
      diff = Math.max(diff, Math.abs(got[i] - want[i]));
      peak = Math.max(peak, Math.abs(want[i]));
    }
    worst[key] = Math.max(worst[key] ?? 0, diff);
    scale[key] = Math.max(scale[key] ?? 0, peak);
  };
  const t0 = performance.now();
  for (let t = 0; t < frames; t++) {
    const values = {};
    for (const g of bundle.graphs) {
      const feeds = {};
      for (const input of g.inputs) {
        let value;
        if (input.role === "state_in") value = states[input.name];
        else if (input.role === "feature") value = new T("float32", Float32Array.from(frameOf(fixtures.get(`${g.name}/${input.name}`), t)), input.shape);
        else value = values[input.name];
        feeds[bundle.fileName(g, input.name)] = value;
      }
      const results = await bundle.sessions[g.name].run(feeds);
      for (const output of g.outputs) {
        const value = results[bundle.fileName(g, output.name)];
        if (output.role === "state_out") states[`state_in.${output.name.slice(10)}`] = value;
        else values[output.name] = value;
        if (output.role === "output") track(`${g.name}/${output.name}`, value.data, frameOf(fixtures.get(`${g.name}/${output.name}`), t));
      }
    }
  }
  const hopMs = (performance.now() - t0) / frames;
  for (const g of bundle.graphs) {
    for (const output of g.outputs.filter((o) => o.role === "state_out")) {
      const key = `${g.name}/final.${output.name}`;
      const want = fixtures.get(key);
      if (want) track(key, states[`state_in.${output.name.slice(10)}`].data, want.data);
    }
  }
  const relative = Object.entries(worst).map(([k, v]) => [k, v / Math.max(scale[k], 1e-6)]);
  const isState = ([k]) => k.includes("/final.");
  return {
    frames,
    worst: Object.fromEntries(relative.filter((e) => !isState(e))),
    states: Object.fromEntries(relative.filter(isState)),
    hopMs,
  };
}

/** 2. Our front-end's features of audio_in (plus the flush hops) against the stored ones:
 *  the largest absolute difference of feat_erb and of feat_spec. */
export function compareFeatures(bundle, pffft, fixtures) {
  const fe = new FrontEnd(pffft, bundle.manifest.dsp);
  try {
    const state = fe.newState();
    const audio = fixtures.get("audio_in").data;
    const erb = fixtures.get("enc/feat_erb");
    const spec = fixtures.get("enc/feat_spec");
    const hop = fe.hop;
    const padded = new Float32Array(erb.shape[0] * hop);
    padded.set(audio.subarray(0, padded.length));
    const X = new Float32Array(2 * fe.bins);
    const featErb = new Float32Array(fe.nbErb);
    const featSpec = new Float32Array(2 * fe.nbDf);
    let erbErr = 0;
    let specErr = 0;
    for (let t = 0; t < erb.shape[0]; t++) {
      fe.analysis(padded.subarray(t * hop, (t + 1) * hop), state, X);
      fe.features(X, state, featErb, featSpec);
      const wantErb = frameOf(erb, t);
      const wantSpec = frameOf(spec, t);
      for (let i = 0; i < featErb.length; i++) erbErr = Math.max(erbErr, Math.abs(featErb[i] - wantErb[i]));
      for (let i = 0; i < featSpec.length; i++) specErr = Math.max(specErr, Math.abs(featSpec[i] - wantSpec[i]));
    }
    return { featErb: erbErr, featSpec: specErr };
  } finally {
    fe.dispose();
  }
}

/** 3. audio_in through a stream with every stage on: SNR of our output against audio_out, and
 *  the wall time per hop (median, mean, p95). */
export async function compareAudio(bundle, pffft, fixtures) {
  const audioIn = fixtures.get("audio_in").data;
  const want = fixtures.get("audio_out").data;
  const times = [];
  const got = await enhance(bundle, pffft, audioIn, ALL_STAGES, times);
  return { snrDb: snrDb(want, got), length: got.length, expectedLength: want.length, hopMs: hopTimeSummary(times) };
}

/** 4. The audio cases (schema 2: `fixtures.cases` in the manifest, `cases/<name>/audio_in|out`
 *  in the npz): each case's input through a stream with the case's options over the bundle's
 *  defaults. Returns [{name, options, snrDb, length, expectedLength}]; [] for schema 1 bundles. */
export async function compareCases(bundle, pffft, fixtures) {
  const results = [];
  for (const c of bundle.manifest.fixtures?.cases ?? []) {
    const input = fixtures.get(`cases/${c.name}/audio_in`);
    const want = fixtures.get(`cases/${c.name}/audio_out`);
    if (!input || !want) throw new Error(`fixture case ${c.name} has no cases/${c.name}/audio_in and audio_out in ${bundle.manifest.fixtures.file}`);
    const got = await enhance(bundle, pffft, input.data, c.options);
    results.push({ name: c.name, options: c.options, snrDb: snrDb(want.data, got), length: got.length, expectedLength: want.data.length });
  }
  return results;
}

/** All the checks with the manifest's declared tolerances; `passed` says whether all hold. */
export async function selfCheck(bundle, pffft) {
  const fixtures = await loadFixtures(bundle);
  const tolerance = bundle.manifest.validation?.tolerance ?? { graph_rel_error: 1e-4, audio_snr_db: 60 };
  const graphs = await replayGraphs(bundle, fixtures);
  const features = compareFeatures(bundle, pffft, fixtures);
  const audio = await compareAudio(bundle, pffft, fixtures);
  const cases = await compareCases(bundle, pffft, fixtures);
  const worstGraph = Math.max(...Object.values(graphs.worst));
  const passed =
    worstGraph <= tolerance.graph_rel_error &&
    Math.max(features.featErb, features.featSpec) <= FEATURE_TOLERANCE &&
    audio.snrDb >= tolerance.audio_snr_db &&
    audio.length === audio.expectedLength &&
    cases.every((c) => c.snrDb >= CASE_SNR_DB && c.length === c.expectedLength);
  return { passed, tolerance, graphs, features, audio, cases, worstGraph };
}
