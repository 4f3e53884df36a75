"""The batched frame graph ``frame_streams`` (issue 17): the fused frame graph (models/frame.py)
with a leading stream axis, so ``StreamPool`` runs B streams in one call per hop.

Its manifest entry is the frame graph's with the name ``frame_streams``, ``streams`` = -1 (any
number, where the converter keeps a dynamic axis) or a fixed count, and the first axis of every
input and output the stream axis (written -1 in the shapes when any number): the states are the
frame graph's stacked on it, ``gating_thresholds_db`` is [B, 3] (one row of thresholds per
stream, where the frame graph's is [3]).

It is converted like the others (``exporters/base.py``) and validated by the one validation
function (``exporters/validate.py``): the PyTorch reference run records the batched frame calls
of ``CHECK_STREAMS`` different streams (``record_streams``), the graph is checked on those calls
(names, shapes, values), and a ``StreamPool`` over the exported backend enhances the same streams
(``streams_audio_snr``) against PyTorch's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from dfnet4_sdk.manifest import ANY_STREAMS, GraphSpec, TensorSpec

STREAMS_GRAPH = "frame_streams"
THRESHOLDS = "gating_thresholds_db"  # [3] in the frame graph, [B, 3] in the batched one
CHECK_STREAMS = 3  # streams of the reference run that validates a batched graph
STREAM_AXIS = "streams"  # the dynamic axis's name inside a graph file


def describe_streams_graph(frame: GraphSpec, streams: int = ANY_STREAMS) -> GraphSpec:
    """The ``frame_streams`` entry for the frame graph ``frame`` at ``streams`` per call."""
    if frame.kind != "frame" or frame.streams != 1:
        raise ValueError(f"describe_streams_graph needs the single-stream frame graph, got {frame.name!r}")

    def batched(t: TensorSpec) -> TensorSpec:
        return replace(t, shape=(streams, *t.shape) if t.name == THRESHOLDS else (streams, *t.shape[1:]))

    return replace(frame, name=STREAMS_GRAPH, streams=streams, file=None, sha256=None,
                   inputs=tuple(batched(t) for t in frame.inputs), outputs=tuple(batched(t) for t in frame.outputs))


def dynamic_axes(spec: GraphSpec) -> dict[str, dict[int, str]] | None:
    """torch.onnx's ``dynamic_axes`` for a graph that takes any number of streams, else None."""
    if spec.streams != ANY_STREAMS:
        return None
    return {t.name: {0: STREAM_AXIS} for t in (*spec.inputs, *spec.outputs)}


def streams_graph_of(manifest) -> GraphSpec | None:
    """The manifest's batched frame graph, if it has one."""
    return next((g for g in manifest.graphs if g.kind == "frame" and g.streams != 1), None)


def check_rows(graph: GraphSpec) -> int:
    """How many streams validate ``graph``: its fixed count, or ``CHECK_STREAMS`` for any number."""
    return CHECK_STREAMS if graph.streams == ANY_STREAMS else graph.streams


def check_streams_audio(audio: np.ndarray, count: int = CHECK_STREAMS) -> np.ndarray:
    """``count`` different streams made from one clip [N] -> [count, N], cycling through the clip,
    the clip reversed at half level and a quiet copy shifted by a third (the rows gate
    differently), each further cycle shifted again."""
    audio = np.asarray(audio, dtype=np.float32)
    variants = [audio, audio[::-1] * np.float32(0.5), np.roll(audio, audio.size // 3) * np.float32(0.05)]
    rows = [np.roll(variants[k % 3], (k // 3) * audio.size // (count // 3 + 1)) for k in range(count)]
    return np.ascontiguousarray(np.stack(rows))


class _RecordedStreams:
    """The PyTorch backend as a backend with a batched frame graph: its frame module runs the
    streams in one call, recorded in ``recorder.calls[STREAMS_GRAPH]``."""

    frame_streams = (STREAMS_GRAPH, ANY_STREAMS)

    def __init__(self, recorder):
        self.recorder, self.manifest, self.name = recorder, recorder.manifest, recorder.name

    def run(self, graph: str, inputs):
        from dfnet4_sdk.models.frame import FRAME_GRAPH

        if graph == STREAMS_GRAPH and np.ndim(inputs[THRESHOLDS]) == 1:  # the batched graph's form: [B, 3]
            rows = len(inputs["spec"])
            inputs = {**inputs, THRESHOLDS: np.ascontiguousarray(np.broadcast_to(inputs[THRESHOLDS], (rows, 3)))}
        outputs = self.recorder.backend.run(FRAME_GRAPH if graph == STREAMS_GRAPH else graph, inputs)
        self.recorder.calls.setdefault(graph, []).append(
            ({k: np.array(v) for k, v in inputs.items()}, {k: np.array(v) for k, v in outputs.items()}))
        return outputs


def record_streams(recorder, audio: np.ndarray, count: int = CHECK_STREAMS) -> None:
    """Stream ``check_streams_audio(audio, count)`` through the PyTorch frame module batched
    (every stage on), recording each call as ``frame_streams`` and (the streams, their enhanced
    audio) as ``recorder.streams_reference``; nothing when that is recorded already."""
    if getattr(recorder, "streams_reference", None) is None:
        rows = check_streams_audio(audio, count)
        recorder.streams_reference = (rows, _enhance(_RecordedStreams(recorder), rows))


def streams_audio_snr(backend, rows: np.ndarray, reference: np.ndarray) -> float:
    """The worst row's SNR of ``StreamPool`` over ``backend`` (its batched graph) against ``reference``."""
    from dfnet4_sdk.metrics import snr_db

    out = _enhance(backend, rows)
    return min(snr_db(reference[i], out[i]) for i in range(rows.shape[0]))


def _enhance(backend, rows: np.ndarray) -> np.ndarray:
    from dfnet4_sdk.exporters.validate import ALL_STAGES
    from dfnet4_sdk.stream_pool import StreamPool

    pool = StreamPool.over_backend(backend, rows.shape[0], ALL_STAGES, batched=True)
    return np.concatenate([pool.process(rows), pool.flush()], axis=1)
