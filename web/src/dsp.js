// libDF's front-end for one stream, one hop at a time: analysis, ERB and complex features with
// their exponential-mean norm states, ERB mask, deep filter, post-filter, synthesis. The same
// formulas as the Python runtime (dfnet4_sdk/dsp.py); spectra are interleaved complex
// Float32Arrays [re0, im0, re1, im1, ...] of F = fft/2 + 1 bins.

import { RealFft } from "./fft.js";

export const ERB_NORM_INIT_DB = [-60, -90]; // initial ERB exponential mean, linspace over the bands
export const UNIT_NORM_INIT = [0.001, 0.0001]; // initial complex unit norm, linspace over the DF bins
const ERB_POWER_EPS = 1e-10;
const ERB_FEATURE_SCALE_DB = 40;
const POST_FILTER_EPS = 1e-12;
const f32 = Math.fround;

/** w[n] = sin(pi/2 * sin^2(pi * (n + 0.5) / fft)), float32 (the analysis = synthesis window). */
export function vorbisWindow(fftSize) {
  const w = new Float32Array(fftSize);
  const half = fftSize / 2;
  for (let n = 0; n < fftSize; n++) {
    const inner = Math.sin((0.5 * Math.PI * (n + 0.5)) / half);
    w[n] = Math.sin(0.5 * Math.PI * inner * inner);
  }
  return w;
}

const freqToErb = (hz) => 9.265 * Math.log1p(hz / (24.7 * 9.265));
const erbToFreq = (erb) => 24.7 * 9.265 * (Math.exp(erb / 9.265) - 1);

/** sum(terms[0..n)) in float32 as numpy's add.reduceat sums a band: the first term plus numpy's
 *  pairwise sum of the rest (8 running sums from 8 terms on). Matches numpy bit for bit. */
function numpyBandSum(terms, n) {
  if (n === 1) return terms[0];
  const rest = n - 1;
  let res = 0;
  if (rest < 8) {
    for (let i = 1; i < n; i++) res = f32(res + terms[i]);
  } else {
    const r = Array.from({ length: 8 }, (_, j) => terms[1 + j]);
    let i = 8;
    for (; i < rest - (rest % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = f32(r[j] + terms[1 + i + j]);
    res = f32(f32(f32(r[0] + r[1]) + f32(r[2] + r[3])) + f32(f32(r[4] + r[5]) + f32(r[6] + r[7])));
    for (; i < rest; i++) res = f32(res + terms[1 + i]);
  }
  return f32(terms[0] + res);
}

/** Round half to even, as numpy's round. */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Bins per ERB band (libDF's erb_fb), summing to fft/2 + 1. */
export function erbBandWidths(dsp) {
  const { sample_rate_hz: sr, fft_size: fft, nb_erb: nbErb, min_nb_erb_freqs: minFreqs } = dsp;
  const bins = fft / 2 + 1;
  const freqWidth = sr / fft;
  const step = freqToErb(sr / 2) / nbErb;
  const widths = new Array(nbErb).fill(0);
  let prevBin = 0;
  let binsOver = 0;
  for (let band = 0; band < nbErb; band++) {
    const edge = roundHalfEven(erbToFreq((band + 1) * step) / freqWidth);
    let nb = edge - prevBin - binsOver;
    if (nb < minFreqs) {
      binsOver = minFreqs - nb;
      nb = minFreqs;
    } else {
      binsOver = 0;
    }
    widths[band] = nb;
    prevBin = edge;
  }
  widths[nbErb - 1] += 1;
  const total = widths.reduce((a, b) => a + b, 0);
  widths[nbErb - 1] -= Math.max(total - bins, 0);
  if (widths.reduce((a, b) => a + b, 0) !== bins) throw new Error(`ERB widths ${widths} do not sum to ${bins} bins`);
  return widths;
}

/** exp(-hop / (sr * tau)) rounded at the first decimal where it differs from 1 (0.99 at 48 kHz). */
export function normAlpha(dsp) {
  const alpha = Math.exp(-dsp.hop_size_samples / (dsp.sample_rate_hz * dsp.norm_tau_s));
  let a = 1;
  for (let precision = 3; a >= 1; precision++) a = Number(alpha.toFixed(precision));
  return a;
}

/** numpy's float32 linspace as libDF computes it: start + i * step. */
export function linspace(start, stop, num) {
  const step = f32(f32(f32(stop) - f32(start)) / Math.max(num - 1, 1)); // each float32 op rounded, as numpy
  return Float32Array.from({ length: num }, (_, i) => f32(start) + f32(i * step));
}

/** The front-end's tables a schema 2 manifest carries in `dsp`, derived as libDF does (for
 *  schema 1 manifests, which lack them). */
export function deriveTables(dsp) {
  return {
    erbWidths: erbBandWidths(dsp),
    normAlpha: normAlpha(dsp),
    erbNormInit: Array.from(linspace(ERB_NORM_INIT_DB[0], ERB_NORM_INIT_DB[1], dsp.nb_erb)),
    specNormInit: Array.from(linspace(UNIT_NORM_INIT[0], UNIT_NORM_INIT[1], dsp.nb_df)),
  };
}

/** Constants of one `dsp` section and its tables (src/bundle.js `tables`), and `newState()`
 *  for each stream's memories. */
export class FrontEnd {
  constructor(pffft, dsp, tables = deriveTables(dsp)) {
    if (dsp.fft_size !== 2 * dsp.hop_size_samples) {
      throw new Error(`fft_size must be 2 * hop_size_samples, got ${dsp.fft_size} and ${dsp.hop_size_samples}`);
    }
    this.dsp = dsp;
    this.hop = dsp.hop_size_samples;
    this.fftSize = dsp.fft_size;
    this.bins = dsp.fft_size / 2 + 1;
    this.nbDf = dsp.nb_df;
    this.nbErb = dsp.nb_erb;
    this.window = vorbisWindow(this.fftSize);
    let sumSq = 0;
    for (const w of this.window) sumSq += w * w;
    // libDF normalises in analysis only: hop / fft / sum(w^2) (1/960 at 48 kHz), folded into the window.
    const scale = f32(this.hop / this.fftSize / sumSq);
    this.scaledWindow = this.window.map((w) => w * scale);
    this.tables = tables;
    this.erbWidths = tables.erbWidths;
    this.alpha = f32(tables.normAlpha);
    this.fft = new RealFft(pffft, this.fftSize);
    this.frame = new Float32Array(this.fftSize); // scratch, this front end's own
    this.bandTerms = new Float32Array(Math.max(...this.erbWidths));
  }

  newState() {
    const memory = this.fftSize - this.hop;
    return {
      analysisMemory: new Float32Array(memory),
      synthesisMemory: new Float32Array(memory),
      erbNorm: Float32Array.from(this.tables.erbNormInit),
      unitNorm: Float32Array.from(this.tables.specNormInit),
    };
  }

  /** hop samples -> spectrum [2F] of [memory, hop] * window * norm; shifts the memory. */
  analysis(hopSamples, state, spec) {
    const mem = state.analysisMemory;
    const m = mem.length;
    const frame = this.frame;
    frame.set(mem);
    frame.set(hopSamples, m);
    mem.set(frame.subarray(this.hop, this.hop + m));
    for (let n = 0; n < this.fftSize; n++) frame[n] *= this.scaledWindow[n];
    return this.fft.forward(frame, spec);
  }

  /** spectrum -> feat_erb [E], feat_spec [2, D] (all real parts, then all imaginary); updates both norms. */
  features(spec, state, featErb, featSpec) {
    const a = this.alpha;
    const b = f32(1 - a);
    let bin = 0;
    for (let band = 0; band < this.nbErb; band++) {
      const width = this.erbWidths[band];
      const weight = f32(1 / width);
      const terms = this.bandTerms;
      for (let k = 0; k < width; k++, bin++) {
        const re = spec[2 * bin];
        const im = spec[2 * bin + 1];
        terms[k] = f32(f32(f32(re * re) + f32(im * im)) * weight);
      }
      const power = numpyBandSum(terms, width);
      const db = f32(f32(Math.log10(f32(power + ERB_POWER_EPS))) * 10);
      // Every float32 operation rounded as numpy (and libDF) do: over the exponential mean's
      // memory (~1/(1-alpha) frames) unrounded steps drift by tens of float32 ulps.
      state.erbNorm[band] = f32(f32(state.erbNorm[band] * a) + f32(db * b));
      featErb[band] = f32(f32(db - state.erbNorm[band]) / ERB_FEATURE_SCALE_DB);
    }
    const d = this.nbDf;
    for (let f = 0; f < d; f++) {
      const re = spec[2 * f];
      const im = spec[2 * f + 1];
      state.unitNorm[f] = f32(f32(state.unitNorm[f] * a) + f32(f32(Math.hypot(re, im)) * b));
      const norm = Math.sqrt(state.unitNorm[f]);
      featSpec[f] = re / norm;
      featSpec[d + f] = im / norm;
    }
  }

  /** out = spec with each ERB band's gain applied to its bins. */
  applyErbMask(spec, mask, out) {
    let bin = 0;
    for (let band = 0; band < this.nbErb; band++) {
      const g = mask[band];
      for (let k = 0; k < this.erbWidths[band]; k++, bin++) {
        out[2 * bin] = spec[2 * bin] * g;
        out[2 * bin + 1] = spec[2 * bin + 1] * g;
      }
    }
  }

  /** out[f] = sum_i coef[f, i] * window[i][f] for f < D; `window` holds O spectra, oldest first;
   *  coefs [D, O, 2] re/im as the graph writes them. */
  deepFilter(window, coefs, order, out) {
    for (let f = 0; f < this.nbDf; f++) {
      let re = 0;
      let im = 0;
      for (let i = 0; i < order; i++) {
        const cr = coefs[(f * order + i) * 2];
        const ci = coefs[(f * order + i) * 2 + 1];
        const xr = window[i][2 * f];
        const xi = window[i][2 * f + 1];
        re += cr * xr - ci * xi;
        im += cr * xi + ci * xr;
      }
      out[2 * f] = re;
      out[2 * f + 1] = im;
    }
  }

  /** libDF's post-filter on `enhanced` in place. libDF walks the bins in chunks of four, so the
   *  last F % 4 bins (the Nyquist bin at 481) are left as they are. */
  postFilter(noisy, enhanced, beta) {
    const n = Math.floor(this.bins / 4) * 4;
    for (let f = 0; f < n; f++) {
      const yr = enhanced[2 * f];
      const yi = enhanced[2 * f + 1];
      const gain = Math.min(Math.max(Math.hypot(yr, yi) / (Math.hypot(noisy[2 * f], noisy[2 * f + 1]) + POST_FILTER_EPS), POST_FILTER_EPS), 1);
      const s = Math.sin((gain * Math.PI) / 2);
      const pf = (1 + beta) / (1 + beta / (s * s));
      enhanced[2 * f] = yr * pf;
      enhanced[2 * f + 1] = yi * pf;
    }
  }

  /** spectrum -> hop output samples: unnormalised irFFT * window, overlap-added with the memory. */
  synthesis(spec, state, out) {
    const frame = this.fft.inverse(spec, this.frame);
    const mem = state.synthesisMemory;
    const hop = this.hop;
    for (let n = 0; n < hop; n++) out[n] = frame[n] * this.window[n] + mem[n];
    for (let n = 0; n < mem.length; n++) mem[n] = frame[hop + n] * this.window[hop + n];
    return out;
  }

  dispose() {
    this.fft.dispose();
  }
}
