"""Measuring a quantized graph the way the exporter validates it: over recorded frames with its
own states fed back, each output's worst error relative to the reference's range
(``graph_error``), and its per-call latency (``frame_latency_ms``)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dfnet4_sdk.states import is_state_input, state_pairs


def session(path: str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class FilesBackend:
    """An onnxruntime backend over loose graph files (manifest of the float bundle), so a
    candidate scheme is measured without writing a bundle."""

    name = "onnx"

    def __init__(self, manifest, paths: Mapping[str, Path]):
        self.manifest = manifest
        self._sessions = {g: session(p) for g, p in paths.items()}
        self._inputs = {g.name: g.input_names for g in manifest.graphs}
        self._outputs = {g.name: list(g.output_names) for g in manifest.graphs}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self._inputs[graph]}
        return dict(zip(self._outputs[graph], self._sessions[graph].run(self._outputs[graph], feed)))


def graph_error(sess, spec, states0: Mapping[str, np.ndarray], calls) -> dict[str, float]:
    """One graph over recorded calls, its own states fed back: each output's worst error
    relative to the reference's range."""
    pairs = state_pairs(spec.input_names)
    outputs = [t.name for t in spec.outputs if t.role != "state_out"]
    names = list(spec.output_names)
    states = dict(states0)
    worst = {n: 0.0 for n in outputs}
    scale = {n: 0.0 for n in outputs}
    for inputs, ref in calls:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items() if not is_state_input(k)}
        out = dict(zip(names, sess.run(names, {**feed, **states})))
        for n in outputs:
            worst[n] = max(worst[n], float(np.max(np.abs(out[n].reshape(ref[n].shape) - ref[n]))))
            scale[n] = max(scale[n], float(np.max(np.abs(ref[n]))))
        states = {i: out[o] for i, o in pairs}
    return {n: worst[n] / max(scale[n], 1e-6) for n in outputs}


LATENCY_ROUNDS = 3  # the machine is shared: the best of a few medians is the steady figure


def frame_latency_ms(sess, calls, repeats: int = 100) -> float:
    """ms per call over recorded inputs (states from the recording), one thread: the lowest of
    LATENCY_ROUNDS medians, so a burst of load on a shared machine does not decide a choice."""
    names = [o.name for o in sess.get_outputs()]
    feeds = [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in c[0].items()} for c in calls[:repeats]]
    return lowest_median_ms(lambda f: sess.run(names, f), feeds, LATENCY_ROUNDS, warmup=20)


def lowest_median_ms(call, items: Sequence, rounds: int, warmup: int) -> float:
    """ms per ``call(item)``: ``warmup`` calls first, then the lowest of ``rounds`` medians over
    ``items`` (a burst of load on a shared machine must not decide a figure)."""
    for item in items[:warmup]:
        call(item)
    medians = []
    for _ in range(rounds):
        times = []
        for item in items:
            t = time.perf_counter()
            call(item)
            times.append(time.perf_counter() - t)
        medians.append(float(np.median(times)))
    return 1e3 * min(medians)
