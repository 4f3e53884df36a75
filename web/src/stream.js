// One enhancement stream over a loaded ONNX bundle: the per-hop recipe of docs/BUNDLE.md and of
// the Python runtime (dfnet4_sdk/stream.py), top to bottom per hop:
//
//   silence rule -> analysis -> features -> enc / erb_dec / df_dec (tensors by name, states fed
//   back) -> gating on lsnr -> ERB mask on frame t-L -> deep filter over frames
//   t-L-(O-1-Ld) .. t-L+Ld -> post-filter -> attenuation limit -> synthesis
//
// L = conv_lookahead_frames, Ld = df_lookahead_frames, O = df_order. The stream owns every
// state: front-end memories and norms, graph states, spectrum history, delay compensation.

import { FrontEnd } from "./dsp.js";
import { applyStages, attenLimGain, streamOptions } from "./options.js";

export { ALL_STAGES, DEFAULT_OPTIONS } from "./options.js";

const MAX_TIMED_HOPS = 20000; // hop times kept for benchmarks (a live stream drops the older half)

export class EnhancementStream {
  /** @param bundle a loaded Bundle; @param pffft the loaded FFT module (src/fft.js loadPffft);
   *  @param options overrides of the bundle's default options (src/options.js names) */
  constructor(bundle, pffft, options = {}) {
    this.bundle = bundle;
    this.ort = bundle.ort;
    this.options = streamOptions(options, bundle.runtime.options);
    const m = bundle.manifest;
    this.dsp = m.dsp;
    this.streaming = m.streaming;
    this.hopSize = bundle.hopSize;
    this.latencySamples = bundle.latencySamples;
    this.frontEnd = new FrontEnd(pffft, m.dsp, bundle.tables);
    const s = m.streaming;
    this.lookahead = s.conv_lookahead_frames;
    // Spectra kept, oldest first: the deep-filter window t-L-(O-1-Ld) .. t-L+Ld is the first O of
    // them (L + O - Ld in all), frame t-L the (L+1)-th from the newest.
    this.historyLength = s.conv_lookahead_frames + s.df_order - s.df_lookahead_frames;
    this.attenLimGain = attenLimGain(this.options);
    this.silenceThreshold = bundle.runtime.silentHopMeanSquare;
    const bins = this.frontEnd.bins;
    this.enhanced = new Float32Array(2 * bins);
    this.hopTimesMs = []; // wall time of each enhanced (non-silent) hop, for benchmarks
    this.reset();
  }

  /** Every state back to the manifest's initial values: ready for a new signal. */
  reset() {
    const bins = this.frontEnd.bins;
    this.dspState = this.frontEnd.newState();
    this.modelState = this.bundle.initialStates();
    this.history = Array.from({ length: this.historyLength }, () => new Float32Array(2 * bins));
    this.pending = new Float32Array(0);
    this.samplesIn = 0;
    this.samplesOut = 0;
    this.toDrop = this.latencySamples; // delay compensation: the first latency samples are dropped
    this.flushing = false;
    this.lastLsnrDb = NaN;
  }

  /** Any number of samples in; the enhanced samples that are ready out (delay-compensated). */
  async process(samples) {
    samples = Float32Array.from(samples);
    for (let i = 0; i < samples.length; i++) {
      if (!Number.isFinite(samples[i])) throw new RangeError(`audio sample ${this.samplesIn + i} is ${samples[i]}; pass finite samples`);
    }
    this.samplesIn += samples.length;
    const buffered = new Float32Array(this.pending.length + samples.length);
    buffered.set(this.pending);
    buffered.set(samples, this.pending.length);
    const hop = this.hopSize;
    const nHops = Math.floor(buffered.length / hop);
    const out = new Float32Array(nHops * hop);
    for (let i = 0; i < nHops; i++) out.set(await this.processHop(buffered.subarray(i * hop, (i + 1) * hop)), i * hop);
    this.pending = buffered.slice(nHops * hop);
    return this.emit(out);
  }

  /** Zeros through the look-ahead; every remaining sample out (total out == total in); reset. */
  async flush() {
    const remaining = this.samplesIn - this.samplesOut;
    const hop = this.hopSize;
    const nZero = ((hop - (this.pending.length % hop)) % hop) + Math.ceil(this.latencySamples / hop) * hop;
    const samplesIn = this.samplesIn;
    this.flushing = true; // flush hops are padding, never skipped as silence
    let out;
    try {
      out = await this.process(new Float32Array(nZero));
    } finally {
      this.flushing = false;
    }
    this.samplesIn = samplesIn;
    out = out.slice(0, remaining);
    this.reset();
    return out;
  }

  emit(out) {
    if (this.toDrop) {
      const drop = Math.min(this.toDrop, out.length);
      out = out.subarray(drop);
      this.toDrop -= drop;
    }
    this.samplesOut += out.length;
    return out;
  }

  /** One hop in, one hop out, delayed by latencySamples (no compensation here). */
  async processHop(hopSamples) {
    const hop = hopSamples.length;
    if (this.options.skip_silent_hops && !this.flushing) {
      let energy = 0;
      for (let i = 0; i < hop; i++) energy += hopSamples[i] * hopSamples[i];
      if (energy < this.silenceThreshold * hop) return new Float32Array(hop);
    }
    const t0 = performance.now();
    const fe = this.frontEnd;
    const spec = this.history.shift(); // the oldest buffer becomes the newest frame
    fe.analysis(hopSamples, this.dspState, spec);
    this.history.push(spec);
    const featErb = new Float32Array(fe.nbErb);
    const featSpec = new Float32Array(2 * fe.nbDf);
    fe.features(spec, this.dspState, featErb, featSpec);
    const T = this.ort.Tensor;
    const values = {
      feat_erb: new T("float32", featErb, [1, 1, 1, fe.nbErb]),
      feat_spec: new T("float32", featSpec, [1, 2, 1, fe.nbDf]),
      frame_samples: new T("float32", Float32Array.from(hopSamples), [1, 1, 1, hop]),
    };
    Object.assign(values, await this.runGraph("enc", values));
    const lsnr = values.lsnr.data[0];
    this.lastLsnrDb = lsnr;
    const [applyErb, applyZeros, applyDf] = applyStages(lsnr, this.options);

    const noisy = this.history[this.history.length - 1 - this.lookahead]; // frame t-L
    const enhanced = this.enhanced;
    if (applyErb) {
      const mask = (await this.runGraph("erb_dec", values)).erb_mask.data;
      fe.applyErbMask(noisy, mask, enhanced);
    } else if (applyZeros) {
      enhanced.fill(0);
    } else {
      enhanced.set(noisy);
    }
    if (applyDf) {
      const coefs = (await this.runGraph("df_dec", values)).df_coefs.data;
      const window = this.history.slice(0, this.streaming.df_order);
      fe.deepFilter(window, coefs, this.streaming.df_order, enhanced);
    }
    if (applyErb && this.options.post_filter_beta > 0) fe.postFilter(noisy, enhanced, this.options.post_filter_beta);
    if (this.attenLimGain !== null) {
      const g = this.attenLimGain;
      for (let k = 0; k < enhanced.length; k++) enhanced[k] = enhanced[k] * (1 - g) + noisy[k] * g;
    }
    const out = fe.synthesis(enhanced, this.dspState, new Float32Array(hop));
    if (this.hopTimesMs.length >= MAX_TIMED_HOPS) this.hopTimesMs.splice(0, MAX_TIMED_HOPS / 2);
    this.hopTimesMs.push(performance.now() - t0);
    return out;
  }

  /** Run component `name` on `values` (features and earlier graphs' outputs) and its states;
   *  store its state outputs as the next hop's state inputs. Tensors by name, never position. */
  async runGraph(name, values) {
    const b = this.bundle;
    const g = b.graph(name);
    const feeds = {};
    for (const t of g.inputs) {
      const value = t.role === "state_in" ? this.modelState[t.name] : values[t.name];
      if (value === undefined) throw new Error(`graph ${name} needs input ${t.name}, which no earlier step produced`);
      feeds[b.fileName(g, t.name)] = value;
    }
    const results = await b.sessions[name].run(feeds);
    const out = {};
    for (const t of g.outputs) {
      const value = results[b.fileName(g, t.name)];
      if (t.role === "state_out") this.modelState[`state_in.${t.name.slice("state_out.".length)}`] = value;
      else out[t.name] = value;
    }
    return out;
  }

  dispose() {
    this.frontEnd.dispose();
  }
}

/** A whole signal through a fresh stream: output of the same length, aligned with the input.
 *  `hopTimesMs`, when given, receives the wall time of every enhanced (non-silent) hop. */
export async function enhance(bundle, pffft, audio, options = {}, hopTimesMs = null) {
  const stream = new EnhancementStream(bundle, pffft, options);
  try {
    const head = await stream.process(audio);
    const tail = await stream.flush();
    const out = new Float32Array(head.length + tail.length);
    out.set(head);
    out.set(tail, head.length);
    hopTimesMs?.push(...stream.hopTimesMs);
    return out;
  } finally {
    stream.dispose();
  }
}

/** {median, mean, p95, hops} of per-hop wall times in ms. */
export function hopTimeSummary(times) {
  const sorted = [...times].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  return { median: at(0.5), mean: sorted.reduce((a, b) => a + b, 0) / Math.max(sorted.length, 1), p95: at(0.95), hops: sorted.length };
}
