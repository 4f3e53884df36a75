"""Offline path: a signal through the block graphs, numbers equal to streaming.

Streaming pays one graph call per 10 ms hop. Offline, the same computation runs as
vectorised DSP plus one call per component per block of frames (``<component>_block``
graphs: the sequence form with state carried between blocks), which is several times faster.
It reproduces ``EnhancementStream`` exactly, including libDF's skipping of silent hops (a
skipped hop is as if it never existed, and outputs zeros) and the delay compensation. When
libDF's gating would switch a stage off on some frame, it gives up (``StageSkipped``; then
``enhance_offline`` returns None) and the caller streams instead, so the result never depends
on the path taken.

``OfflineStream`` takes the signal a piece at a time (``dfsdk run`` reads files in blocks and
keeps memory flat); ``enhance_offline`` is one call of it over a whole signal. Top to bottom:
analysis and features of every whole hop given; then block by block, the encoder, the
decoders, and the block's ERB mask, deep filter and synthesis (``_Synthesis``). With two
threads, the last decoder and the block's synthesis run in a second thread while the encoder
works on the next block.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.states import fed_back_as
from dfnet4_sdk.stream import StreamOptions


class StageSkipped(Exception):
    """libDF's gating would switch a stage off on some frame: stream the signal instead."""


def enhance_offline(backend, audio: np.ndarray, options: StreamOptions, threads: int = 1) -> np.ndarray | None:
    """Mono ``audio`` at the model rate -> enhanced audio of the same length, or None when
    gating would skip a stage on some frame (stream it instead). ``threads``: 1 or 2 (see
    ``OfflineStream``); the result is the same."""
    stream = OfflineStream(backend, options, threads)
    try:
        return np.concatenate([stream.process(audio), stream.finish()])
    except StageSkipped:
        return None


class OfflineStream:
    """The offline path over a signal given in pieces of any length: ``process`` returns the
    enhanced samples that are ready (delay-compensated, aligned with the input), ``finish``
    the rest; in all, as many samples as were given. Both raise ``StageSkipped`` when gating
    would switch a stage off (the output so far is then not the streaming result).

    Only whole blocks of frames go through the block graphs until ``finish`` (which pads the
    last one), so the numbers do not depend on how the signal was cut."""

    def __init__(self, backend, options: StreamOptions, threads: int = 1):
        m = backend.manifest
        d, s = m.dsp, m.streaming
        self.backend, self.options, self.threads = backend, options, threads
        self.thresholds = options.gating_thresholds_db
        self.hop, self.latency = d.hop_size_samples, m.latency_samples
        self.flush_hops = -(-m.latency_samples // self.hop)
        self.front_end = dsp.front_end(d, m.tables)
        self.state = dsp.FrontEndState.initial(d, m.tables)
        self.silent_mean_square = m.runtime.silent_hop_mean_square
        self.synthesis = _Synthesis(m, options)
        self.graphs = m.block_graphs
        self.block = self.graphs[0].inputs[0].shape[2]
        self.graph_state = {g.name: {t.input_name: t.initial() for t in m.states_of(g.name)} for g in self.graphs}
        # Step t's mask and taps belong to frame t-L, its DF window to frames t-L-(O-1-Ld) ..
        # t-L+Ld: with `past` = O-1-Ld zero frames (and L for the look-ahead) in front of the
        # spectrum, step t reads padded[t + o] for tap o and noisy frame padded[t + past].
        assert s.df_lookahead_frames <= s.conv_lookahead_frames, "a DF window would reach past the newest frame"
        self.padded = np.zeros((s.conv_lookahead_frames + synthesis_past(s), d.freq_bins), np.complex64)
        # Frames analysed but not yet through the block graphs (fewer than a block).
        self.feat_erb = np.zeros((0, d.nb_erb), np.float32)
        self.feat_spec = np.zeros((0, d.nb_df), np.complex64)
        self.frame_samples = np.zeros((0, self.hop), np.float32)
        self.pending = np.zeros(0, np.float32)  # input samples short of a whole hop
        self.keep = np.zeros(0, bool)  # every hop not yet output: True = runs, False = silent
        self.ready = np.zeros(0, np.float32)  # synthesised audio of the kept hops not yet output
        self.samples_in = self.samples_out = 0
        self.to_drop = self.latency  # the delay compensation

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 samples at the model rate -> the enhanced samples that are ready."""
        audio = np.concatenate([self.pending, np.asarray(audio, np.float32)])
        self.samples_in += len(audio) - len(self.pending)
        n_whole = len(audio) // self.hop
        self.pending = audio[n_whole * self.hop :].copy()
        self._add_hops(audio[: n_whole * self.hop].reshape(-1, self.hop), check_silence=True)
        self._run_blocks(final=False)
        return self._output()

    def finish(self) -> np.ndarray:
        """The rest: the last partial hop and the look-ahead pushed through with zeros (these hops
        always run, as in streaming)."""
        tail = np.concatenate([self.pending, np.zeros((-len(self.pending)) % self.hop + self.flush_hops * self.hop, np.float32)])
        self.pending = np.zeros(0, np.float32)
        self._add_hops(tail.reshape(-1, self.hop), check_silence=False)
        self._run_blocks(final=True)
        out = self._output()
        owed = self.samples_in - self.samples_out  # none: every kept hop has been synthesised
        self.samples_out += owed
        return np.concatenate([out, np.zeros(owed, np.float32)])

    def _add_hops(self, hops: np.ndarray, check_silence: bool) -> None:
        if len(hops) == 0:
            return
        keep = np.ones(len(hops), dtype=bool)
        if check_silence and self.options.skip_silent_hops:
            keep = np.einsum("ij,ij->i", hops, hops) >= self.silent_mean_square * self.hop
        self.keep = np.concatenate([self.keep, keep])
        kept = hops[keep]
        spec = self.front_end.analysis(kept.reshape(-1), self.state)  # [T, F]
        feat_erb, feat_spec = self.front_end.features(spec, self.state)
        self.padded = np.concatenate([self.padded, spec])
        self.feat_erb = np.concatenate([self.feat_erb, feat_erb])
        self.feat_spec = np.concatenate([self.feat_spec, feat_spec])
        self.frame_samples = np.concatenate([self.frame_samples, kept])

    def _run_blocks(self, final: bool) -> None:
        """Every whole block of frames (and with ``final`` the last, zero-padded: the padding
        only ever follows the real frames, so causality keeps it out of their outputs) through
        the block graphs, each block handed to the synthesis as soon as its masks are known.

        The first block graph (the encoder) feeds the others, which depend on nothing else but
        their own states. With ``threads`` >= 2 the last one and the block's synthesis run in a
        second thread, one block behind the encoder: graph calls release the GIL, so on two cores
        the two halves overlap (measured for DfNet4Lite: RTF 0.004 instead of 0.006-0.008)."""
        block, graphs = self.block, self.graphs
        t_frames = len(self.feat_erb)
        n_blocks = -(-t_frames // block) if final else t_frames // block
        if n_blocks == 0:
            return
        pad = max(0, n_blocks * block - t_frames)
        erb = np.concatenate([self.feat_erb, np.zeros((pad, self.feat_erb.shape[1]), np.float32)])
        cplx = np.concatenate([self.feat_spec, np.zeros((pad, self.feat_spec.shape[1]), np.complex64)])
        samples = np.concatenate([self.frame_samples, np.zeros((pad, self.hop), np.float32)])
        order = self.synthesis.order
        parts: list[np.ndarray] = []

        def finish(values: dict[str, np.ndarray], encoded: dict[str, np.ndarray], padded: np.ndarray, t: int) -> None:
            """The last decoder (fed by the encoder's outputs) and the block's synthesis."""
            if len(graphs) > 1:
                values = values | self._run_graph(graphs[-1], encoded)
            parts.append(self.synthesis(padded, values["erb_mask"].reshape(block, -1)[:t], values["df_coefs"].reshape(block, -1)[:t]))

        # One worker thread: its blocks run in order, carrying the last decoder's state.
        with ThreadPoolExecutor(1) if self.threads >= 2 else contextlib.nullcontext() as worker:
            pending = []
            for b in range(n_blocks):
                frames = slice(b * block, (b + 1) * block)
                values = {
                    "feat_erb": erb[frames][None, None],
                    "feat_spec": np.stack([cplx[frames].real, cplx[frames].imag])[None].astype(np.float32),
                    "frame_samples": samples[frames][None, None],
                }
                values.update(self._run_graph(graphs[0], values))
                encoded = dict(values)
                for g in graphs[1:-1]:
                    values.update(self._run_graph(g, values))
                t = min(block, t_frames - b * block)  # real frames of this block
                if not stages.gating(values["lsnr"].reshape(-1)[:t], self.thresholds).apply_df.all():
                    for future in pending:
                        future.cancel()
                    raise StageSkipped("gating would switch a stage off on some frame")
                padded = self.padded[b * block : b * block + t + order - 1]
                if worker is None:
                    finish(values, encoded, padded, t)
                else:
                    pending.append(worker.submit(finish, values, encoded, padded, t))
            for future in pending:
                future.result()
        done = n_blocks * block if not final else t_frames
        self.padded = self.padded[done:]
        self.feat_erb, self.feat_spec, self.frame_samples = self.feat_erb[done:], self.feat_spec[done:], self.frame_samples[done:]
        self.ready = np.concatenate([self.ready, *parts])

    def _run_graph(self, g, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        own = self.graph_state[g.name]
        out = self.backend.run(g.name, {t.name: own[t.name] if t.role == "state_in" else values[t.name] for t in g.inputs})
        results = {}
        for t in g.outputs:
            if t.role == "state_out":
                own[fed_back_as(t.name)] = out[t.name]
            else:
                results[t.name] = out[t.name]
        return results

    def _output(self) -> np.ndarray:
        """The hops whose audio is known, in order (a silent hop is zeros), less the delay."""
        hop = self.hop
        kept_before = np.cumsum(self.keep)
        n_hops = int(np.searchsorted(kept_before, len(self.ready) // hop, side="right"))
        n_kept = int(kept_before[n_hops - 1]) if n_hops else 0
        raw = np.zeros((n_hops, hop), np.float32)
        raw[self.keep[:n_hops]] = self.ready[: n_kept * hop].reshape(-1, hop)
        self.keep, self.ready = self.keep[n_hops:], self.ready[n_kept * hop :]
        out = raw.reshape(-1)
        drop = min(self.to_drop, len(out))
        self.to_drop -= drop
        out = out[drop : drop + self.samples_in - self.samples_out]
        self.samples_out += len(out)
        return out


def synthesis_past(streaming) -> int:
    """Zero frames in front of the spectrum for the deep filter's past taps: O-1-Ld."""
    return streaming.df_order - 1 - streaming.df_lookahead_frames


class _Synthesis:
    """The stages (``stages``: ERB mask, deep filter, post-filter, attenuation limit; every frame
    runs all of them here) and the overlap-add synthesis of consecutive runs of steps, in order
    (the overlap-add memory is carried between calls)."""

    def __init__(self, manifest, options: StreamOptions):
        d, s = manifest.dsp, manifest.streaming
        self.dsp, self.options, self.order = d, options, s.df_order
        self.front_end = dsp.front_end(d, manifest.tables)
        self.state = dsp.FrontEndState.initial(d, manifest.tables)
        self.past = synthesis_past(s)

    def __call__(self, padded: np.ndarray, erb_mask: np.ndarray, df_coefs: np.ndarray) -> np.ndarray:
        """T steps -> T hops of audio; ``padded`` holds the (zero-padded) spectrum from the first
        step's first DF tap: T + order - 1 frames."""
        t = len(erb_mask)
        if t == 0:
            return np.zeros(0, np.float32)
        taps = stages.df_taps(np.reshape(df_coefs, (t, self.dsp.nb_df, -1)), self.order)
        enhanced = stages.mask_and_filter(padded, erb_mask, taps, self.front_end.erb_widths, self.past)
        noisy = padded[self.past : self.past + t]
        enhanced = stages.finish(noisy, enhanced, self.options.post_filter_beta, self.options.atten_lim_gain)
        return self.front_end.synthesis(enhanced, self.state)
