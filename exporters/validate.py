"""The validate pass: exported graphs against PyTorch, one function for the exporter and for
``dfsdk conformance`` (``dfnet4_sdk/conformance.py``).

The PyTorch model streams the audio with every stage on and every graph call is recorded
(``record_reference``). ``validate_against_pytorch`` then checks a backend over the exported
graphs in three stages, collecting every problem before it reports:

1. names: each graph, fed its recorded first frame, returns exactly the outputs its spec names;
2. shapes: each of those outputs has its spec's shape;
3. values: each graph over every recorded frame (reference inputs, its own states fed back),
   each output's worst error relative to the reference's range, against the declared
   ``Tolerance.graph_rel_error``; then the enhanced audio of every path the bundle has (the
   three component graphs, the fused frame graph, the block graphs of the offline path)
   against PyTorch's, against ``Tolerance.audio_snr_db``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.states import is_state_input
from dfnet4_sdk.stream import EnhancementStream, StreamOptions

# Every graph runs on every frame while fixtures are recorded and exports are validated.
ALL_STAGES = StreamOptions(min_db_thresh=-math.inf, max_db_erb_thresh=math.inf, max_db_df_thresh=math.inf,
                           skip_silent_hops=False)


@dataclass(frozen=True)
class Tolerance:
    """Declared accuracy of a target x precision: the worst per-graph output error relative to
    the output's range, and the SNR of the enhanced audio against PyTorch fp32."""

    graph_rel_error: float
    audio_snr_db: float


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("onnx", "fp32"): Tolerance(1e-4, 60.0),
    ("onnx", "fp16"): Tolerance(3e-2, 35.0),
    ("onnx", "int8"): Tolerance(2e-1, 25.0),
    ("tflite", "fp32"): Tolerance(1e-4, 60.0),
    ("tflite", "fp16"): Tolerance(3e-2, 35.0),
    ("tflite", "int8"): Tolerance(2e-1, 25.0),
    ("coreml", "fp32"): Tolerance(1e-4, 60.0),
    ("coreml", "fp16"): Tolerance(3e-2, 35.0),
    ("coreml", "int8"): Tolerance(2e-1, 25.0),
}

# The enhanced-audio paths a bundle can have, in the order they are measured.
PATHS = ("components", "frame", "streams", "blocks")


class RecordingBackend:
    """Wraps a backend and records every graph call (inputs and outputs), frame by frame."""

    def __init__(self, backend):
        self.backend = backend
        self.manifest = backend.manifest
        self.name = backend.name
        self.calls: dict[str, list[tuple[dict, dict]]] = {g.name: [] for g in backend.manifest.graphs}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.backend.run(graph, inputs)
        self.calls[graph].append(({k: np.array(v) for k, v in inputs.items()}, {k: np.array(v) for k, v in outputs.items()}))
        return outputs


def record_reference(model, audio: np.ndarray, streams: int = 0) -> tuple[RecordingBackend, np.ndarray]:
    """Stream ``audio`` through the PyTorch backend with every stage on, once through the three
    component graphs and once through the fused frame graph (``streams`` > 0: and that many
    streams made from it through the batched frame graph, ``exporters/streams.py``); returns the
    recorder (every graph's calls) and the enhanced audio."""
    from dfnet4_sdk.exporters.streams import record_streams
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend

    recorder = RecordingBackend(TorchBackend(model))
    enhanced = _stream(recorder, audio, fused=False)
    _stream(recorder, audio, fused=True)
    if streams:
        record_streams(recorder, audio, streams)
    return recorder, enhanced


@dataclass
class Validation:
    """What ``validate_against_pytorch`` measured. ``problems``: names, then shapes, then values;
    ``left_out``: optional graphs that failed and are to be dropped (``note`` says why)."""

    tolerance: Tolerance
    graph_rel_error: dict[str, dict[str, float]] = field(default_factory=dict)
    path_snr_db: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    left_out: tuple[str, ...] = ()
    note: str | None = None

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def audio_snr_db(self) -> float:
        """The worst SNR over the paths that stay (nan when the audio was not compared)."""
        kept = [v for k, v in self.path_snr_db.items() if not (k == "blocks" and self.left_out)]
        return min(kept) if kept else math.nan

    def to_manifest(self) -> dict:
        """The manifest's ``validation`` section."""
        return {
            "graph_rel_error": self.graph_rel_error,
            "audio_snr_db": self.audio_snr_db,
            "tolerance": {"graph_rel_error": self.tolerance.graph_rel_error, "audio_snr_db": self.tolerance.audio_snr_db},
            **({"note": self.note} if self.note else {}),
        }


def validate_against_pytorch(backend, recorder: RecordingBackend, audio: np.ndarray, reference: np.ndarray,
                             tolerance: Tolerance, optional_graphs: tuple[str, ...] = ()) -> Validation:
    """Check ``backend``'s graphs against the PyTorch calls in ``recorder`` and its enhanced
    audio against ``reference`` (PyTorch's, from ``record_reference(model, audio)``), in the
    stages of the module docstring. Block graphs are checked end to end (the offline path);
    when they are all in ``optional_graphs`` and only their path misses the tolerance, they are
    put in ``left_out`` instead of ``problems``."""
    from dfnet4_sdk.exporters.streams import check_rows, record_streams, streams_graph_of

    v = Validation(tolerance)
    names, shapes, values = [], [], []
    batched = streams_graph_of(backend.manifest)
    if batched is not None:
        record_streams(recorder, audio, check_rows(batched))  # its reference, unless recorded already
    for g in backend.manifest.graphs:
        if g.kind == "block":
            continue
        errors = _graph_errors(backend, g, recorder.calls[g.name], names, shapes)
        if errors is None:
            continue
        v.graph_rel_error[g.name] = errors
        values += [f"{g.name}.{k}: relative error {e:.2e} > {tolerance.graph_rel_error:.0e}"
                   for k, e in errors.items() if not e <= tolerance.graph_rel_error]
    if names or shapes:
        v.problems = names + shapes + values + ["enhanced audio not compared: a graph does not match its spec"]
        return v
    v.path_snr_db = path_snr_db(backend, audio, reference, getattr(recorder, "streams_reference", None))
    blocks = tuple(g.name for g in backend.manifest.block_graphs)
    for path, snr in v.path_snr_db.items():
        if snr >= tolerance.audio_snr_db:
            continue
        if path == "blocks" and blocks and set(blocks) <= set(optional_graphs):
            # The block graphs only make enhance() faster; a converter that mangles them
            # (LiteRT folds some transpose chains into a wrong reshape: a GroupedLinear whose
            # groups equal both axes of the permuted input) costs speed, never correctness.
            v.left_out = blocks
            v.note = (f"block graphs left out: their offline path gave {snr:.1f} dB SNR vs PyTorch "
                      f"< {tolerance.audio_snr_db:.0f} dB (converter fault); enhance() streams instead")
            continue
        values.append(f"enhanced audio SNR vs PyTorch {snr:.1f} dB < {tolerance.audio_snr_db:.0f} dB ({path} path)")
    v.problems = values
    return v


def _graph_errors(backend, g, calls, names: list[str], shapes: list[str]) -> dict[str, float] | None:
    """One graph over its recorded calls, its own states fed back: each output's worst error
    relative to the reference's range; None (with the problem appended to ``names`` or
    ``shapes``) when its first frame's outputs do not match the spec."""
    from dfnet4_sdk.manifest import shape_matches

    # Stacked on the stream axis for a batched graph (as many rows as its recorded calls).
    states = {s.input_name: np.repeat(s.initial(), len(calls[0][0][s.input_name]) if calls else 1, axis=0)
              for s in backend.manifest.states_of(g.name)}
    outputs = [t for t in g.outputs if t.role != "state_out"]
    worst: dict[str, float] = {}
    scale: dict[str, float] = {}
    for i, (inputs, ref_out) in enumerate(calls):
        feed = {k: v for k, v in inputs.items() if not is_state_input(k)}
        try:
            out = backend.run(g.name, {**feed, **states})
        except KeyError as e:  # a backend that cannot find a tensor by its name
            names.append(f"{g.name}: running it by the spec's tensor names failed: {e}")
            return None
        if i == 0:
            missing = [n for n in g.output_names if n not in out]
            extra = sorted(set(out) - set(g.output_names))
            if missing or extra:
                names.append(f"{g.name}: outputs missing {missing}, unexpected {extra}")
                return None
            wrong = [f"{g.name}.{t.name}: shape {tuple(np.shape(out[t.name]))}, spec {tuple(t.shape)}"
                     for t in g.outputs if not shape_matches(np.shape(out[t.name]), t.shape)]
            if wrong:
                shapes.extend(wrong)
                return None
        for t in outputs:
            ref = ref_out[t.name]
            worst[t.name] = max(worst.get(t.name, 0.0), float(np.max(np.abs(out[t.name].reshape(ref.shape) - ref))))
            scale[t.name] = max(scale.get(t.name, 0.0), float(np.max(np.abs(ref))))
        states = {s.input_name: out[s.output_name] for s in backend.manifest.states_of(g.name)}
    return {k: worst[k] / max(scale[k], 1e-6) for k in worst}


def path_snr_db(backend, audio: np.ndarray, reference: np.ndarray,
                streams_reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """SNR of the enhanced audio against ``reference`` on each path the bundle has (the batched
    frame graph's: its streams against ``streams_reference``, from ``record_reference``)."""
    m = backend.manifest
    snr = {"components": snr_db(reference, _stream(backend, audio, fused=False))}
    if m.frame_graph is not None:
        snr["frame"] = snr_db(reference, _stream(backend, audio, fused=True))
    if streams_reference is not None and any(g.kind == "frame" and g.streams != 1 for g in m.graphs):
        from dfnet4_sdk.exporters.streams import streams_audio_snr

        snr["streams"] = streams_audio_snr(backend, *streams_reference)
    if m.block_graphs:
        snr["blocks"] = offline_audio_snr(backend, audio, reference)
    return snr


def worst_graph_error(validation: Mapping[str, object]) -> float:
    """The largest relative error of any graph output in a manifest's ``validation`` section."""
    return max(err for errs in validation["graph_rel_error"].values() for err in errs.values())


def validate_graphs(backend, recorder: RecordingBackend) -> dict[str, dict[str, float]]:
    """Each non-block graph's per-output relative error (the values stage alone)."""
    names: list[str] = []
    errors = {g.name: _graph_errors(backend, g, recorder.calls[g.name], names, names)
              for g in backend.manifest.graphs if g.kind != "block"}
    if names:
        from dfnet4_sdk.errors import ExportError

        raise ExportError("graphs do not match their specs: " + "; ".join(names))
    return errors


def exported_audio_snr(backend, audio: np.ndarray, reference: np.ndarray) -> float:
    """Worst SNR of the enhanced audio against ``reference`` over the backend's paths."""
    return min(path_snr_db(backend, audio, reference).values())


def offline_audio_snr(backend, audio: np.ndarray, reference: np.ndarray) -> float:
    """SNR of the offline path (block graphs) against ``reference``."""
    from dfnet4_sdk.offline import enhance_offline

    return snr_db(reference, enhance_offline(backend, audio, ALL_STAGES))


def _stream(backend, audio: np.ndarray, fused: bool) -> np.ndarray:
    stream = EnhancementStream(backend, ALL_STAGES, fused=fused)
    return np.concatenate([stream.process(audio), stream.flush()])
