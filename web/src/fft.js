// Real FFT of any even size whose factors are 2, 3 and 5 (960 at 48 kHz, 320 at 16 kHz), from
// PFFFT compiled to WASM (@echogarden/pffft-wasm, BSD). fft.js, the usual npm choice, only does
// powers of two; a 960-point transform through it needs Bluestein's three 2048-point transforms
// (README: measured here, several times slower than PFFFT's one).
//
// Conventions are libDF's: `forward` is the unnormalised rFFT, `inverse` the unnormalised
// inverse (no 1/N), both over interleaved complex arrays of fft/2 + 1 bins [re0, im0, re1, ...].

const PFFFT_REAL = 0;
const PFFFT_FORWARD = 0;
const PFFFT_BACKWARD = 1;

/** Load the WASM module once; `moduleUrl` overrides where the browser finds pffft.js. */
export async function loadPffft(moduleUrl) {
  const mod = moduleUrl ? await import(moduleUrl) : await import("@echogarden/pffft-wasm/simd");
  return mod.default();
}

/** A real FFT of `size` points bound to its own WASM buffers (one per stream: not shared). */
export class RealFft {
  constructor(pffft, size) {
    if (size % 32 !== 0) throw new Error(`PFFFT real transforms need a size that is a multiple of 32, got ${size}`);
    this.pffft = pffft;
    this.size = size;
    this.bins = size / 2 + 1;
    this.setup = pffft._pffft_new_setup(size, PFFFT_REAL);
    if (!this.setup) throw new Error(`PFFFT cannot transform ${size} points (factors must be 2, 3 and 5)`);
    const bytes = size * 4;
    this.inPtr = pffft._pffft_aligned_malloc(bytes);
    this.outPtr = pffft._pffft_aligned_malloc(bytes);
    this.workPtr = pffft._pffft_aligned_malloc(bytes);
  }

  heap(ptr) {
    // Read HEAPF32 each time: a memory growth elsewhere in the module replaces the view.
    return this.pffft.HEAPF32.subarray(ptr >> 2, (ptr >> 2) + this.size);
  }

  /** real[size] -> out[2 * bins] interleaved complex, unnormalised. */
  forward(real, out) {
    const n = this.size;
    this.heap(this.inPtr).set(real);
    this.pffft._pffft_transform_ordered(this.setup, this.inPtr, this.outPtr, this.workPtr, PFFFT_FORWARD);
    const r = this.heap(this.outPtr);
    // PFFFT's ordered real layout: [X0.re, X(n/2).re, X1.re, X1.im, ...].
    out[0] = r[0];
    out[1] = 0;
    for (let k = 2; k < n; k++) out[k] = r[k];
    out[n] = r[1];
    out[n + 1] = 0;
    return out;
  }

  /** spec[2 * bins] interleaved complex -> out[size] real, unnormalised (no 1/size). */
  inverse(spec, out) {
    const n = this.size;
    const x = this.heap(this.inPtr);
    x[0] = spec[0];
    x[1] = spec[n];
    for (let k = 2; k < n; k++) x[k] = spec[k];
    this.pffft._pffft_transform_ordered(this.setup, this.inPtr, this.outPtr, this.workPtr, PFFFT_BACKWARD);
    out.set(this.heap(this.outPtr));
    return out;
  }

  dispose() {
    const p = this.pffft;
    p._pffft_aligned_free(this.inPtr);
    p._pffft_aligned_free(this.outPtr);
    p._pffft_aligned_free(this.workPtr);
    p._pffft_destroy_setup(this.setup);
  }
}
