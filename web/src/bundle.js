// An ONNX bundle (docs/BUNDLE.md): manifest.json checked, graph files checked against their
// sha256 and loaded once into onnxruntime-web sessions. A loaded bundle holds no stream state;
// any number of streams (src/stream.js) share it.
//
// Schema 2 manifests carry the front-end's tables (`dsp.erb_widths`, `norm_alpha`, the norms'
// initial values) and a `runtime` section (silence threshold, option defaults, output delay);
// for schema 1 they are derived here as libDF does (src/dsp.js deriveTables).

import { deriveTables } from "./dsp.js";
import { DEFAULT_OPTIONS } from "./options.js";

export const SUPPORTED_SCHEMA_VERSIONS = [1, 2];
const SILENT_HOP_MEAN_SQUARE_V1 = 1e-7; // the Python runtime's rule, before manifests said it
export const COMPONENTS = ["enc", "erb_dec", "df_dec"];

/** A bundle that cannot be used: every problem found, in one message. */
export class BundleError extends Error {
  constructor(problems, where = "bundle") {
    super(`${where}: ${problems.join("; ")}`);
    this.name = "BundleError";
    this.problems = problems;
  }
}

const isPositiveInt = (v) => Number.isInteger(v) && v > 0;

/** The problems of a parsed manifest this runtime would stumble on (empty when usable). */
export function manifestProblems(m) {
  const problems = [];
  if (typeof m !== "object" || m === null || Array.isArray(m)) return ["manifest.json must hold a JSON object"];
  if (!SUPPORTED_SCHEMA_VERSIONS.includes(m.schema_version)) {
    problems.push(`schema_version ${JSON.stringify(m.schema_version)} is not supported (expected one of ${SUPPORTED_SCHEMA_VERSIONS}); update web/ or re-export the bundle`);
  }
  if (m.backend !== "onnx") {
    problems.push(`backend must be "onnx" for onnxruntime-web, found ${JSON.stringify(m.backend)}; export with --target onnx`);
  }
  const d = m.dsp ?? {};
  for (const key of ["sample_rate_hz", "fft_size", "hop_size_samples", "nb_erb", "nb_df", "min_nb_erb_freqs"]) {
    if (!isPositiveInt(d[key])) problems.push(`dsp.${key} must be a positive integer, found ${JSON.stringify(d[key])}`);
  }
  if (!(typeof d.norm_tau_s === "number" && d.norm_tau_s > 0)) problems.push(`dsp.norm_tau_s must be a positive number, found ${JSON.stringify(d.norm_tau_s)}`);
  if (isPositiveInt(d.fft_size) && d.fft_size !== 2 * d.hop_size_samples) {
    problems.push(`dsp.fft_size must be 2 * hop_size_samples, found ${d.fft_size} and ${d.hop_size_samples}`);
  }
  const s = m.streaming ?? {};
  if (!isPositiveInt(s.df_order)) problems.push(`streaming.df_order must be a positive integer, found ${JSON.stringify(s.df_order)}`);
  for (const key of ["df_lookahead_frames", "conv_lookahead_frames"]) {
    if (!(Number.isInteger(s[key]) && s[key] >= 0)) problems.push(`streaming.${key} must be an integer >= 0, found ${JSON.stringify(s[key])}`);
  }
  if (s.df_lookahead_frames >= s.df_order) problems.push(`streaming.df_lookahead_frames must be below df_order, found ${s.df_lookahead_frames} >= ${s.df_order}`);
  if (s.df_lookahead_frames > s.conv_lookahead_frames) problems.push("streaming.df_lookahead_frames must not exceed conv_lookahead_frames");
  if (m.schema_version >= 2 && problems.length === 0) problems.push(...v2Problems(m));
  const graphs = Array.isArray(m.graphs) ? m.graphs : [];
  if (!Array.isArray(m.graphs)) problems.push("graphs must be a list");
  for (const name of COMPONENTS) {
    if (!graphs.some((g) => g.name === name && g.kind === "component")) problems.push(`component graph ${name} is missing`);
  }
  const states = Array.isArray(m.states) ? m.states : [];
  if (!Array.isArray(m.states)) problems.push("states must be a list");
  for (const g of graphs.filter((g) => COMPONENTS.includes(g.name))) {
    if (typeof g.file !== "string" || g.file.startsWith("/") || g.file.split(/[\\/]/).includes("..")) {
      problems.push(`graph ${g.name}: file must be a relative path inside the bundle, found ${JSON.stringify(g.file)}`);
    }
    for (const t of g.inputs ?? []) {
      if (t.role !== "state_in") continue;
      const state = states.find((st) => `state_in.${st.name}` === t.name);
      if (!state) problems.push(`graph ${g.name} reads ${t.name}, which has no states entry`);
      else if (state.init_values != null && state.init_values.length !== count(state.shape)) {
        problems.push(`state ${state.name}: init_values has ${state.init_values.length} values for shape [${state.shape}]`);
      }
    }
  }
  return problems;
}

/** Schema 2's tables and runtime section, as this runtime uses them. */
function v2Problems(m) {
  const problems = [];
  const d = m.dsp;
  const bins = d.fft_size / 2 + 1;
  const numbers = (v, n) => Array.isArray(v) && v.length === n && v.every((x) => typeof x === "number" && Number.isFinite(x));
  if (!numbers(d.erb_widths, d.nb_erb) || !d.erb_widths.every((w) => Number.isInteger(w) && w > 0)) {
    problems.push(`dsp.erb_widths must be ${d.nb_erb} positive integers, found ${JSON.stringify(d.erb_widths)}`);
  } else if (d.erb_widths.reduce((a, b) => a + b, 0) !== bins) {
    problems.push(`dsp.erb_widths must sum to fft_size/2 + 1 = ${bins} bins, found ${d.erb_widths.reduce((a, b) => a + b, 0)}`);
  }
  if (!(typeof d.norm_alpha === "number" && d.norm_alpha > 0 && d.norm_alpha < 1)) problems.push(`dsp.norm_alpha must be in (0, 1), found ${JSON.stringify(d.norm_alpha)}`);
  if (!numbers(d.erb_norm_init, d.nb_erb)) problems.push(`dsp.erb_norm_init must be ${d.nb_erb} numbers`);
  if (!numbers(d.spec_norm_init, d.nb_df)) problems.push(`dsp.spec_norm_init must be ${d.nb_df} numbers`);
  if (d.window !== "vorbis") problems.push(`dsp.window ${JSON.stringify(d.window)} is not supported (this runtime knows "vorbis")`);
  const r = m.runtime ?? {};
  if (!(typeof r.silent_hop_mean_square === "number" && r.silent_hop_mean_square >= 0)) {
    problems.push(`runtime.silent_hop_mean_square must be a number >= 0, found ${JSON.stringify(r.silent_hop_mean_square)}`);
  }
  if (!Number.isInteger(r.output_delay_samples) || r.output_delay_samples < 0) {
    problems.push(`runtime.output_delay_samples must be an integer >= 0, found ${JSON.stringify(r.output_delay_samples)}`);
  }
  if (typeof r.options !== "object" || r.options === null) problems.push("runtime.options must be an object of option defaults");
  else {
    const unknown = Object.keys(r.options).filter((k) => !(k in DEFAULT_OPTIONS));
    if (unknown.length) problems.push(`runtime.options has options this runtime does not apply: ${unknown.join(", ")}; update web/`);
  }
  return problems;
}

const count = (shape) => shape.reduce((a, b) => a * b, 1);

async function sha256Hex(bytes) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A loaded bundle: `manifest`, `sessions` (component name -> InferenceSession), `graphs`
 *  (the component entries, in manifest order), `readFile` (for the fixtures). */
export class Bundle {
  /**
   * @param ort          onnxruntime-web's module (node: `import * as ort from "onnxruntime-web"`)
   * @param readFile     async (relative path) -> Uint8Array (node: fs; browser: fetch)
   * @param sessionOptions passed to InferenceSession.create
   */
  static async load(ort, readFile, sessionOptions = {}) {
    let manifest;
    try {
      manifest = JSON.parse(new TextDecoder().decode(await readFile("manifest.json")));
    } catch (e) {
      throw new BundleError([`cannot read manifest.json (${e.message}); pass a bundle directory written by dfsdk export --target onnx`]);
    }
    const problems = manifestProblems(manifest);
    if (problems.length) throw new BundleError(problems, "manifest.json");
    const graphs = manifest.graphs.filter((g) => g.kind === "component" && COMPONENTS.includes(g.name));
    const sessions = {};
    const fileProblems = [];
    for (const g of graphs) {
      let bytes;
      try {
        bytes = await readFile(g.file);
      } catch (e) {
        fileProblems.push(`graph ${g.name}: cannot read ${g.file} (${e.message})`);
        continue;
      }
      const digest = await sha256Hex(bytes);
      if (digest !== g.sha256) {
        fileProblems.push(`graph ${g.name}: ${g.file} has sha256 ${digest}, the manifest says ${g.sha256}; the file was changed or damaged: re-export the bundle`);
        continue;
      }
      try {
        sessions[g.name] = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...sessionOptions });
      } catch (e) {
        fileProblems.push(`graph ${g.name}: onnxruntime-web cannot load ${g.file}: ${e.message}`);
      }
    }
    if (fileProblems.length) throw new BundleError(fileProblems);
    return new Bundle(ort, manifest, graphs, sessions, readFile);
  }

  constructor(ort, manifest, graphs, sessions, readFile) {
    this.ort = ort;
    this.manifest = manifest;
    this.graphs = graphs;
    this.sessions = sessions;
    this.readFile = readFile;
    const d = manifest.dsp;
    const s = manifest.streaming;
    this.sampleRate = d.sample_rate_hz;
    this.hopSize = d.hop_size_samples;
    const v2 = manifest.schema_version >= 2;
    /** The front-end's tables: the manifest's (schema 2) or derived (schema 1). */
    this.tables = v2
      ? { erbWidths: d.erb_widths, normAlpha: d.norm_alpha, erbNormInit: d.erb_norm_init, specNormInit: d.spec_norm_init }
      : deriveTables(d);
    const r = manifest.runtime;
    /** What the stream applies outside the graphs: silence threshold, option defaults. */
    this.runtime = {
      silentHopMeanSquare: v2 ? r.silent_hop_mean_square : SILENT_HOP_MEAN_SQUARE_V1,
      options: v2 ? { ...DEFAULT_OPTIONS, ...r.options } : DEFAULT_OPTIONS,
    };
    // Output delay: analysis + synthesis overlap (fft - hop) plus the convolutions' look-ahead frames.
    this.latencySamples = v2 ? r.output_delay_samples : d.fft_size - d.hop_size_samples + s.conv_lookahead_frames * d.hop_size_samples;
  }

  graph(name) {
    return this.graphs.find((g) => g.name === name);
  }

  /** Name of tensor `name` inside graph `g`'s file (converters may rename; ONNX keeps ours). */
  fileName(g, name) {
    return (g.tensor_names ?? {})[name] ?? name;
  }

  /** Initial value of every state, keyed `state_in.<name>`. */
  initialStates() {
    const out = {};
    for (const st of this.manifest.states) {
      const data = st.init_values != null ? Float32Array.from(st.init_values) : new Float32Array(count(st.shape)).fill(st.init_value ?? 0);
      out[`state_in.${st.name}`] = new this.ort.Tensor("float32", data, st.shape);
    }
    return out;
  }

  async release() {
    for (const s of Object.values(this.sessions)) await s.release();
  }
}
