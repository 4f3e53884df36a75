"""``StreamPool``'s fast hop: B streams on buffers bound once to the batched frame graph.

Where the backend runs a graph on caller-owned buffers (``runtimes.base.BindsBuffers``:
onnxruntime's IO binding, LiteRT's tensor views), a hop outside the graph is a few numpy calls on
arrays allocated here once: the window multiply and the FFT write each stream's spectrum straight
into the graph's ``spec`` input, the graph writes its outputs and every next state into this
object's buffers (two state sets, A in -> B out then B in -> A out, alternating, as
``EnhancementStream`` does for one stream), and synthesis reads ``spec_enhanced`` where the graph
wrote it. Per hop nothing is validated, converted, stacked, gathered or allocated but the output.

The formulas are ``dsp.FrontEnd``'s (``analysis_into`` / ``synthesis_into``: each row's numbers
are those of the one-stream hop), applied in blocks of ``BLOCK_ROWS`` rows. A fixed-count
graph (LiteRT's 32) is called once per group of rows; the buffers then have R rows, B padded up
to whole groups (the padding rows' spectra stay zero, their outputs are never read).

On LiteRT each bound call still copies every input into the interpreter and every output out
of it (``TfliteBackend.bind``): with the states that is 92 KB (DfNet4Lite) to 125 KB (DFN3) per
stream each way, 23-30 us per stream-hop on this machine, counted inside the graph call.

Letters: B streams, R buffer rows (>= B), F bins, H hop, M = fft - hop memory samples.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dfnet4_sdk import dsp

# Rows per FFT call. The gufuncs write into the graph's buffers (no np.fft wrapper, no output
# allocation), so the ~100 KB jump ``dsp.FFT_ROWS_PER_CALL`` avoids does not show: analysis +
# synthesis of 128 streams cost 6.4 / 5.2 / 4.7 / 4.3 / 4.2 us per stream-hop with 8 / 16 / 32 /
# 64 / 128 rows per call (thread CPU time, loaded 2-core machine); 64 keeps the two scratch
# frames at 240 KB each.
BLOCK_ROWS = 64


class BoundFrames:
    """The batched frame graph bound to this object's buffers, for ``streams`` rows.

    Args:
        backend: a backend with ``bind`` (``runtimes.base.BindsBuffers``).
        graph: (the batched frame graph's name, streams per call: -1 any number).
        streams: B.
        front_end: the manifest's ``dsp.FrontEnd``.
        thresholds: the gating thresholds [3] float32 (the same for every row).
    """

    def __init__(self, backend, graph: tuple[str, int], streams: int, front_end: dsp.FrontEnd, thresholds: np.ndarray):
        m = backend.manifest
        name, per_call = graph
        spec = m.graph(name)
        group = streams if per_call == -1 else per_call
        self.streams, self.rows = streams, -(-streams // group) * group
        self._fe, self._hop = front_end, front_end.hop
        r = self.rows
        # Every bound buffer is held by this object: the graph calls keep raw pointers to them.
        self._inputs = inputs = {t.name: np.zeros((r, *t.shape[1:]), np.float32) for t in spec.inputs if t.role != "state_in"}
        inputs["gating_thresholds_db"][:] = thresholds.reshape(1, -1)
        self._spec = inputs["spec"].view(np.complex64).reshape(r, -1)  # [R, F] complex64: the graph's "spec"
        self._samples = inputs.get("frame_samples")
        self.outputs = {t.name: np.zeros((r, *t.shape[1:]), np.float32) for t in spec.outputs if t.role != "state_out"}
        self.enhanced = self.outputs["spec_enhanced"].view(np.complex64).reshape(r, -1)  # [R, F], written by the graph
        self.noisy = self.outputs["spec_noisy"].view(np.complex64).reshape(r, -1)
        io = [(s.input_name, s.output_name) for s in m.states_of(m.frame_graph.name)]
        self._initial = {s.input_name: s.initial() for s in m.states_of(m.frame_graph.name)}
        sets = tuple({i: np.zeros((r, *self._initial[i].shape[1:]), np.float32) for i, _ in io} for _ in range(2))
        self._sets = sets
        # The rows of a set the pool sees as its ``states`` ([B, ...] views).
        self._views = tuple({k: v[:streams] for k, v in s.items()} for s in sets)
        calls: list[list[Callable[[], None]]] = []
        for current, following in ((sets[0], sets[1]), (sets[1], sets[0])):
            phase = []
            for start in range(0, r, group):
                rows = slice(start, start + group)
                feed = {**{k: v[rows] for k, v in inputs.items()}, **{k: v[rows] for k, v in current.items()}}
                out = {**{k: v[rows] for k, v in self.outputs.items()},
                       **{o: following[i][rows] for i, o in io}}
                phase.append(backend.bind(name, feed, out))
            calls.append(phase)
        self._calls = tuple(tuple(p) for p in calls)
        self._phase = 0
        block = min(BLOCK_ROWS, streams)
        self._windowed = np.empty((block, front_end.fft_size), np.float32)
        self._frame = np.empty((block, front_end.fft_size), np.float32)
        self.restart()

    @property
    def states(self) -> dict[str, np.ndarray]:
        """The current state set, [B, ...] per state input name (writable views)."""
        return self._views[self._phase]

    @property
    def following(self) -> dict[str, np.ndarray]:
        """The set the next call writes (its rows hold the states before the last call)."""
        return self._views[self._phase ^ 1]

    def restart(self) -> None:
        """Every row (padding included) at its initial states."""
        for k, v in self._sets[self._phase].items():
            v[:] = self._initial[k]

    def restart_row(self, row: int) -> None:
        for k, v in self._sets[self._phase].items():
            v[row] = self._initial[k][0]

    def analysis(self, x: np.ndarray, memory: np.ndarray) -> None:
        """x [B, H] and its analysis memory [B, M] -> the graph's ``spec`` rows; memory <- x."""
        block = len(self._windowed)
        for start in range(0, self.streams, block):
            rows = slice(start, min(start + block, self.streams))
            self._fe.analysis_into(x[rows], memory[rows], self._spec[rows], self._windowed)
        if self._samples is not None:
            self._samples.reshape(self.rows, -1)[: self.streams] = x

    def run(self) -> None:
        """One hop of the graph for every row: reads the current set, writes the following one."""
        for call in self._calls[self._phase]:
            call()
        self._phase ^= 1

    def synthesis(self, spec: np.ndarray, memory: np.ndarray) -> np.ndarray:
        """[B, F] complex64 -> [B, H] float32: inverse FFT, window, overlap-add with ``memory``."""
        out = np.empty((self.streams, self._hop), np.float32)
        block = len(self._frame)
        for start in range(0, self.streams, block):
            rows = slice(start, min(start + block, self.streams))
            self._fe.synthesis_into(spec[rows], memory[rows], out[rows], self._frame)
        return out
