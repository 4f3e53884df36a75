"""``StreamPool``: many live streams (calls, speakers) enhanced together, one graph call per hop.

    pool = StreamPool("dfnet4-lite-v1", streams=32)   # any model Runtime accepts; same options
    out = pool.process(chunks)                        # chunks [B, N]: row i is stream i
    tail = pool.flush()                               # [B, M]: the rest of every stream
    pool.reset(3)                                     # stream 3 starts a new signal

Each row's output equals what its own ``Runtime`` (same model and options) outputs for that row:
the same per-hop recipe (``dsp.FrontEnd`` analysis and synthesis, the fused frame graph, the
``stages`` post-filter and attenuation limit, libDF's silence rule and delay compensation), run
on B streams at once. The pool owns every streaming state, each stacked on a leading stream axis
under the manifest's state names; the loaded model holds none.

Per hop the graph runs once for all streams where the backend can batch its frame graph (a
``frame_streams`` graph in the bundle, or the torch backend's frame module), else once per
stream (``batched`` says which). Where the backend also runs graphs on caller-owned buffers
(onnxruntime, LiteRT), the batched graph is bound once to the pool's buffers
(``stream_pool_bound``): a hop converts, checks and allocates nothing around the graph call. A
digitally silent hop of one stream outputs zeros and changes none of that stream's state while
the other streams run (``skip_silent_hops``). One stream, fewer streams than fill a fixed-count
graph, per-stream calls (``batched=False``) and bundles without a fused frame graph run one
``EnhancementStream`` per row: each row is then exactly its own ``Runtime``'s hop.

Letters: B streams (rows), N samples per row, H hop, F bins, M = fft - hop memory samples.
"""

from __future__ import annotations

import numbers
import threading
from typing import Any

import numpy as np

from dfnet4_sdk import dsp, stages
from dfnet4_sdk.errors import AudioInputError, ConfigError
from dfnet4_sdk.runtimes.base import streams_graph
from dfnet4_sdk.stream import EnhancementStream, StreamOptions
from dfnet4_sdk.stream_pool_bound import BoundFrames

MAX_STREAMS = 65536
# A fixed-count batched graph (LiteRT's 32) is padded only when the rows fill this share of it;
# fewer rows run one by one. Measured (bench --streams, loaded 2-core machine): a 32-stream call
# costs 0.6 (DFN3) to 1.0 (DfNet4Lite) times 32 single-stream calls, so padding pays from about
# 19 to 32 rows; 3/4 sits between. On bound buffers a hop where this share of the streams is
# active runs them all (the silent rows' states restored after) instead of gathering the active ones.
PAD_FILL = 0.75


class StreamPool:
    """B mono streams over one loaded model (see the module docstring).

    Args:
        model, backend, atten_lim_db, post_filter_beta, min_db_thresh, max_db_erb_thresh,
            max_db_df_thresh, skip_silent_hops, num_threads: as ``Runtime`` (the same defaults,
            the same checks); every stream uses the same options.
        streams: the number of streams B (rows of every chunk), 1 to ``MAX_STREAMS``.
        batched: None (default) batches graph calls where the backend can; False forces one
            graph call per stream (the fallback path, for comparison).

    Chunks are at the model's sample rate (``sample_rate``). ``process``, ``flush`` and
    ``reset`` take a lock, as ``Runtime``'s do.
    """

    def __init__(self, model: Any = None, streams: int = 1, backend: str | None = None, *, batched: bool | None = None,
                 **options: Any):
        from dfnet4_sdk.runtime import Runtime

        if not isinstance(streams, numbers.Integral) or isinstance(streams, bool) or not 1 <= streams <= MAX_STREAMS:
            raise ConfigError(f"streams must be an integer from 1 to {MAX_STREAMS} (one row of each chunk per stream), "
                              f"got {streams!r}")
        if batched not in (None, True, False):
            raise ConfigError(f"batched must be None, True or False, got {batched!r}")
        unknown = sorted(set(options) - _RUNTIME_OPTIONS)
        if unknown:
            raise ConfigError(f"StreamPool got unknown options {unknown}; it takes {sorted(_RUNTIME_OPTIONS)} "
                              "(as Runtime) and streams, batched")
        # Runtime resolves the model and backend and checks the options: one home for both.
        runtime = Runtime(model, backend, **options)
        self._setup(runtime.backend, int(streams), runtime.options, batched)

    @classmethod
    def over_backend(cls, backend, streams: int, options: StreamOptions | None = None,
                     batched: bool | None = None) -> "StreamPool":
        """A pool over an already loaded backend (the exporter's validation uses it)."""
        pool = object.__new__(cls)
        pool._setup(backend, int(streams), options or StreamOptions(**backend.manifest.runtime.options), batched)
        return pool

    def _setup(self, backend, streams: int, options: StreamOptions, batched: bool | None) -> None:
        self.backend, self.manifest, self.options, self.streams = backend, backend.manifest, options, streams
        m = self.manifest
        self._front_end = dsp.front_end(m.dsp, m.tables)  # the manifest's bands, decay and norm inits, as the stream
        self._silent_mean_square = m.runtime.silent_hop_mean_square
        self._thresholds = self.options.gating_thresholds_db
        self._graph = None  # (graph name, streams per call: -1 any) when the frame graph runs batched
        if m.frame_graph is not None and batched is not False:
            self._graph = streams_graph(self.backend)
        if batched and self._graph is None:
            raise ConfigError(f"the {m.backend} backend of {m.model_name} cannot run its frame graph for many streams "
                              "per call (no frame_streams graph); use batched=None to fall back to per-stream calls")
        self._needs_samples = m.frame_graph is not None and "frame_samples" in m.frame_graph.input_names
        # A bundle's batched graph takes the thresholds per stream ([B, 3]), a frame graph [3].
        graph = next((g for g in m.graphs if self._graph is not None and g.name == self._graph[0]), None)
        self._row_thresholds = graph is not None and any(t.name == "gating_thresholds_db" and len(t.shape) == 2
                                                         for t in graph.inputs)
        self._io = [] if m.frame_graph is None else [(s.input_name, s.output_name) for s in m.states_of(m.frame_graph.name)]
        self._lock = threading.RLock()
        self._rows: list[EnhancementStream] | None = None
        self._bound: BoundFrames | None = None
        per_call = None if self._graph is None else self._graph[1]
        too_few = per_call not in (None, -1) and streams < per_call * PAD_FILL  # a fixed-count graph would run rows alone
        if m.frame_graph is None or streams == 1 or self._graph is None or too_few:
            # One stream object per row: its own hop, graph binding and gating, as its Runtime.
            self._rows = [EnhancementStream(self.backend, self.options) for _ in range(self.streams)]
        elif hasattr(self.backend, "bind") and self._row_thresholds and (
                per_call == -1 or streams % per_call == 0 or streams % per_call >= per_call * PAD_FILL):
            self._bound = BoundFrames(self.backend, self._graph, streams, self._front_end, self._thresholds)
        self._start()

    # -- read-only facts ---------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.manifest.dsp.sample_rate_hz

    @property
    def hop_size_samples(self) -> int:
        return self.manifest.dsp.hop_size_samples

    @property
    def latency_samples(self) -> int:
        return self.manifest.latency_samples

    @property
    def batched(self) -> bool:
        """True when one graph call per hop serves every stream."""
        return self._graph is not None

    # -- state -------------------------------------------------------------------------------
    def _start(self) -> None:
        """Every stream at its start (a new signal in every row)."""
        b, m = self.streams, self.manifest
        self._pending = np.zeros((b, 0), np.float32)
        self._to_drop = np.full(b, self.latency_samples, np.int64)  # delay compensation, per row
        self._dropping = True  # any row still owes delay (``_to_drop`` not all zero)
        self._samples_in = np.zeros(b, np.int64)  # per row since its start (reset restarts a row)
        self._samples_out = np.zeros(b, np.int64)  # real output samples given, per row
        self._flushing = False
        if self._rows is not None:
            for s in self._rows:
                s.reset()
            return
        initial = dsp.FrontEndState.initial(m.dsp, m.tables)
        memory = initial.analysis_memory.size
        self._dsp = dsp.FrontEndState(np.zeros((b, memory), np.float32), np.zeros((b, memory), np.float32),
                                      initial.erb_norm_state, initial.unit_norm_state)  # norms: graph states
        if self._bound is not None:  # the states live in the bound buffers
            self._bound.restart()
            self.states = self._bound.states
            return
        self.states = {s.input_name: np.repeat(s.initial(), b, axis=0) for s in m.states_of(m.frame_graph.name)}

    def reset(self, stream: int | None = None) -> None:
        """Restart stream ``stream`` (every stream when None: the pool's start). The restarted row
        stays aligned with the others: its next ``latency_samples`` output samples are zeros (the
        delay its own new ``Runtime`` would drop), then its new signal's output follows, delay-
        compensated. Exact at hop boundaries (every chunk so far a whole number of hops); else the
        row's partial hop is zeroed and its new signal starts after it."""
        with self._lock:
            if stream is None:
                self._start()
                return
            i = self._row(stream)
            p = self._pending.shape[1]
            self._pending[i] = 0.0
            self._to_drop[i] = self.latency_samples + p
            self._dropping = True
            self._samples_in[i] = self._samples_out[i] = 0
            if self._rows is not None:
                self._rows[i].reset()
                return
            initial = dsp.FrontEndState.initial(self.manifest.dsp, self.manifest.tables)
            self._dsp.analysis_memory[i] = initial.analysis_memory
            self._dsp.synthesis_memory[i] = initial.synthesis_memory
            for s in self.manifest.states_of(self.manifest.frame_graph.name):
                self.states[s.input_name][i] = s.initial()[0]

    def _row(self, stream: object) -> int:
        if not isinstance(stream, numbers.Integral) or isinstance(stream, bool) or not -self.streams <= stream < self.streams:
            raise ConfigError(f"stream must be a row index from 0 to {self.streams - 1}, got {stream!r}")
        return int(stream) % self.streams

    # -- streaming API -----------------------------------------------------------------------
    def process(self, chunks: np.ndarray) -> np.ndarray:
        """Enhance the next samples of every stream: ``chunks`` [B, N] (row i: stream i; any N,
        float32/float64/int16). Returns [B, n], the samples that are ready (the same n for every
        row; the output lags by ``latency_samples`` until ``flush``)."""
        x = self._check_chunks(chunks)
        with self._lock:
            self._samples_in += x.shape[1]
            hop = self.hop_size_samples
            if x.shape[1] == hop and not self._pending.shape[1]:  # one hop per call: no buffering
                return self._emit(self._process_hop(x))
            pending = np.concatenate([self._pending, x], axis=1) if self._pending.size else x
            n_hops = pending.shape[1] // hop
            out = np.empty((self.streams, n_hops * hop), np.float32)
            for h in range(n_hops):
                out[:, h * hop : (h + 1) * hop] = self._process_hop(pending[:, h * hop : (h + 1) * hop])
            self._pending = np.ascontiguousarray(pending[:, n_hops * hop :])
            return self._emit(out)

    def flush(self) -> np.ndarray:
        """End every stream: push zeros through the look-ahead and return [B, M], each row's
        remaining samples (rows with less left are zero-padded at the end). Over a stream's life
        its row (after the zeros a ``reset(i)`` puts first) equals its own ``Runtime``'s output,
        as long as its input. Afterwards every stream starts anew."""
        with self._lock:
            owed = self._samples_in - self._samples_out
            if owed.max(initial=0) <= 0:
                self._start()
                return np.zeros((self.streams, 0), np.float32)
            pending, hop = self._pending.shape[1], self.hop_size_samples
            # Row i's remaining samples come after its own remaining delay (beyond what all rows share).
            lead = self._to_drop - self._to_drop.min()
            needed = int((owed + self._to_drop).max()) - pending
            n_zero = (-pending) % hop + -(-max(needed, 0) // hop) * hop
            self._flushing = True  # flush hops are padding, never skipped as silence
            try:
                out = self.process(np.zeros((self.streams, n_zero), np.float32))
            finally:
                self._flushing = False
            ends = lead + owed
            out = out[:, : int(ends.max())].copy()
            for i in range(self.streams):
                out[i, ends[i]:] = 0.0
            self._start()
            return out

    def _check_chunks(self, chunks: object) -> np.ndarray:
        from dfnet4_sdk.audio_io import to_float32

        x = to_float32(chunks, what="chunks")
        b = self.streams
        if x.ndim != 2 or x.shape[0] != b:
            hint = ""
            if x.ndim == 2 and x.shape[1] == b:
                hint = f"; this looks like [N, B] (samples first): pass chunks.T, rows are streams, not channels"
            elif x.ndim == 1 and b == 1:
                hint = "; wrap one stream's samples as chunks[None, :]"
            raise AudioInputError(f"chunks must be [B, N] = [{b}, N] (row i is stream i of this {b}-stream pool), "
                                  f"got shape {x.shape}{hint}")
        return np.ascontiguousarray(x)

    def _emit(self, out: np.ndarray) -> np.ndarray:
        """Delay compensation per row, the rows kept aligned: the drop all rows share is cut off;
        what only some rows still owe (a restarted row's delay) becomes zeros."""
        if not self._dropping:
            self._samples_out += out.shape[1]
            return out
        common = int(min(self._to_drop.min(), out.shape[1]))
        out = out[:, common:]
        self._to_drop -= common
        for i in np.flatnonzero(self._to_drop):
            zeroed = int(min(self._to_drop[i], out.shape[1]))
            out[i, :zeroed] = 0.0
            self._to_drop[i] -= zeroed
            self._samples_out[i] -= zeroed
        self._dropping = bool(self._to_drop.any())
        self._samples_out += out.shape[1]
        return out

    # -- one hop -----------------------------------------------------------------------------
    def _process_hop(self, x: np.ndarray) -> np.ndarray:
        """[B, H] -> [B, H], delayed by ``latency_samples`` (compensation in ``_emit``)."""
        if self._rows is not None:  # each row's stream runs its own hop
            out = np.empty_like(x)
            for i, r in enumerate(self._rows):
                r._flushing = self._flushing
                out[i] = r.process_hop(x[i])
            return out
        if self.options.skip_silent_hops and not self._flushing:
            energy = np.einsum("bh,bh->b", x, x)
            is_active = energy >= self._silent_mean_square * x.shape[1]
            active = np.flatnonzero(is_active)
            if active.size < self.streams:
                if self._bound is not None and active.size >= self.streams * PAD_FILL:
                    return self._run_bound(x, np.flatnonzero(~is_active))
                out = np.zeros_like(x)
                if active.size:
                    out[active] = self._run_rows(x[active], active)
                return out
        return self._run_rows(x, None) if self._bound is None else self._run_bound(x, None)

    def _run_bound(self, x: np.ndarray, silent: np.ndarray | None) -> np.ndarray:
        """Every row through the bound graph; the ``silent`` rows then output zeros and get their
        memories and states back (as if their hop had been skipped)."""
        bound, st, b = self._bound, self._dsp, self.streams
        if silent is not None:
            kept = st.analysis_memory[silent], st.synthesis_memory[silent]  # copies (fancy indexing)
        bound.analysis(x, st.analysis_memory)
        bound.run()
        self.states = bound.states
        enhanced = self._finish(bound.enhanced[:b], bound.noisy[:b], bound.outputs["lsnr"][:b])
        y = bound.synthesis(np.ascontiguousarray(enhanced, dtype=np.complex64), st.synthesis_memory)
        if silent is not None:
            st.analysis_memory[silent], st.synthesis_memory[silent] = kept
            before = bound.following
            for k, v in self.states.items():
                v[silent] = before[k][silent]
            y[silent] = 0.0
        return y

    def _run_rows(self, x: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """Analysis, frame graph, finish and synthesis for the streams ``rows`` (None: all)."""
        fe = self._front_end
        if rows is None:
            st, states = self._dsp, self.states
        else:
            st = dsp.FrontEndState(self._dsp.analysis_memory[rows], self._dsp.synthesis_memory[rows], None, None)
            states = {k: v[rows] for k, v in self.states.items()}
        spec = fe.analysis_frame(x, st)  # [b, F] complex64
        thresholds = self._thresholds
        if self._row_thresholds:
            thresholds = np.ascontiguousarray(np.broadcast_to(thresholds, (x.shape[0], thresholds.size)))
        feed = {"spec": np.ascontiguousarray(spec).view(np.float32).reshape(*spec.shape, 2),
                "gating_thresholds_db": thresholds, **states}
        if self._needs_samples:
            feed["frame_samples"] = x.reshape(x.shape[0], 1, 1, -1)
        out = self._run_frame_graph(feed)
        enhanced = self._finish(_as_rows(out["spec_enhanced"]), _as_rows(out["spec_noisy"]), out["lsnr"])
        y = fe.synthesis_frame(enhanced, st)
        new_states = {state_in: out[state_out] for state_in, state_out in self._io}
        if rows is None:
            self.states = new_states
        else:
            self._dsp.analysis_memory[rows] = st.analysis_memory
            self._dsp.synthesis_memory[rows] = st.synthesis_memory
            for k, v in new_states.items():
                self.states[k][rows] = v
        return y

    def _finish(self, enhanced: np.ndarray, noisy: np.ndarray, lsnr: np.ndarray) -> np.ndarray:
        """The post-filter and attenuation limit on the graph's [b, F] output, where the options
        ask for them (the graph gives them unfinished); else ``enhanced`` as it is."""
        o = self.options
        if o.post_filter_beta <= 0 and o.atten_lim_gain is None:
            return enhanced
        gates = stages.gating(lsnr.reshape(-1, 1), self._thresholds)  # [b, T = 1]
        return stages.finish(noisy[:, None], enhanced[:, None], o.post_filter_beta, o.atten_lim_gain, gates)[:, 0]

    def _run_frame_graph(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call for all rows of ``feed`` (in groups of a fixed-count graph's streams), or one
        per row where the backend cannot batch."""
        b = feed["spec"].shape[0]
        single = self.manifest.frame_graph.name
        if self._graph is None or b == 1:  # one row: the single-stream graph (static shapes, faster)
            return self._run_rows_alone(single, feed)
        name, per_call = self._graph
        if per_call == -1 or per_call == b:
            return self.backend.run(name, feed)
        shared = () if self._row_thresholds else ("gating_thresholds_db",)  # [3]: the same for every row
        parts = []
        for start in range(0, b, per_call):
            part = {k: (v if k in shared else v[start : start + per_call]) for k, v in feed.items()}
            rows = part["spec"].shape[0]
            if rows < per_call * PAD_FILL:  # too few to fill a fixed-count call: row by row
                parts.append(self._run_rows_alone(single, part))
                continue
            short = per_call - rows
            if short:  # a fixed-count graph: pad with copies of the first row, outputs dropped
                part = {k: (v if k in shared else np.concatenate([v, np.repeat(v[:1], short, axis=0)]))
                        for k, v in part.items()}
            parts.append({k: np.asarray(v)[:rows] for k, v in self.backend.run(name, part).items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_rows_alone(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call of the single-stream frame graph per row of ``feed`` (thresholds [3])."""
        rows = []
        for i in range(feed["spec"].shape[0]):
            row = {k: v[i : i + 1] for k, v in feed.items() if k != "gating_thresholds_db"}
            rows.append(self.backend.run(graph, {**row, "gating_thresholds_db": self._thresholds}))
        return rows[0] if len(rows) == 1 else {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def _as_rows(pairs: np.ndarray) -> np.ndarray:
    """[b, F, 2] float32 re/im -> [b, F] complex64 (a view when contiguous)."""
    pairs = np.ascontiguousarray(pairs, dtype=np.float32)
    return pairs.view(np.complex64).reshape(pairs.shape[0], -1)


_RUNTIME_OPTIONS = frozenset({"atten_lim_db", "post_filter_beta", "min_db_thresh", "max_db_erb_thresh",
                              "max_db_df_thresh", "skip_silent_hops", "num_threads"})
