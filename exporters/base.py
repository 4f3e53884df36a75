"""The export pipeline, the same for every target:

    describe the model (manifest) -> per graph: wrap ``step`` with positional I/O in manifest
    order -> the target's converter writes the file -> validate every graph and the enhanced
    audio against PyTorch on the fixture clip -> write fixtures + manifest -> move into place.

Nothing is written to the output directory unless validation passes (as optimum does).
"""

from __future__ import annotations

import inspect
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from dfnet4_sdk.audio_io import new_file_mode
from dfnet4_sdk.bundle import FIXTURES_NAME, Bundle, file_sha256, write_manifest
from dfnet4_sdk.errors import ConfigError, ExportError
from dfnet4_sdk.manifest import GraphSpec, Manifest
from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.models.base import EnhancementModel, StreamingComponent
from dfnet4_sdk.models.describe import BLOCK_FRAMES, describe_model
from dfnet4_sdk.stream import EnhancementStream, StreamOptions

log = logging.getLogger(__name__)

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


class GraphConverter(Protocol):
    """One target's converter (``exporters/onnx.py``, ...).

    Optional, for quantizing converters: a keyword parameter ``calibration`` of ``convert``
    (the graph's recorded per-frame inputs, a list of name -> array dicts, passed at int8 /
    int16x8 only), and an attribute ``quantization`` (graph name -> what was done), which
    goes into the manifest's ``quantization``.
    """

    target: str
    suffix: str
    precisions: tuple[str, ...]

    def convert(
        self,
        module: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        spec: GraphSpec,
        path: Path,
        precision: str,
        metadata: Mapping[str, str],
    ) -> dict[str, str]:
        """Write the graph to ``path``; return our-name -> file-name for renamed tensors."""
        ...


class StepModule(nn.Module):
    """A component's exact ``step`` with positional inputs/outputs in manifest order, which is
    what every converter traces. Names are restored by the converter from the GraphSpec."""

    def __init__(self, component: StreamingComponent, spec: GraphSpec):
        super().__init__()
        self.component = component
        self.feature_names = [t.name for t in spec.inputs if t.role != "state_in"]
        self.state_names = [t.name.removeprefix("state_in.") for t in spec.inputs if t.role == "state_in"]
        self.output_names = [t.name for t in spec.outputs if t.role != "state_out"]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = len(self.feature_names)
        inputs = dict(zip(self.feature_names, args[:k]))
        state = dict(zip(self.state_names, args[k:]))
        outputs, new_state = self.component.step(inputs, state)
        return tuple(outputs[n] for n in self.output_names) + tuple(new_state[n] for n in self.state_names)


class FrameStepModule(nn.Module):
    """The fused frame graph (models/frame.py) with positional I/O in manifest order."""

    def __init__(self, model: EnhancementModel, spec: GraphSpec):
        super().__init__()
        from dfnet4_sdk.models.frame import FrameModule

        self.frame = FrameModule(model)
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs if t.role != "state_out"]
        self.state_names = [t.name.removeprefix("state_in.") for t in spec.inputs if t.role == "state_in"]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = dict(zip(self.input_names, args))
        state = {n: values[f"state_in.{n}"] for n in self.state_names}
        outputs, new_state = self.frame(values["spec"], values["gating_thresholds_db"], state, values.get("frame_samples"))
        return tuple(outputs[n] for n in self.output_names) + tuple(new_state[n] for n in self.state_names)


# Precisions whose converters get calibration frames (see GraphConverter).
QUANTIZED_PRECISIONS = ("int8", "int16x8")

class BlockModule(nn.Module):
    """A component's sequence form over a fixed block of frames, positional I/O (offline path)."""

    def __init__(self, component: StreamingComponent, spec: GraphSpec):
        super().__init__()
        self.step_module = StepModule(component, spec)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.step_module
        k = len(m.feature_names)
        outputs, new_state = m.component.forward(dict(zip(m.feature_names, args[:k])), dict(zip(m.state_names, args[k:])))
        return tuple(outputs[n] for n in m.output_names) + tuple(new_state[n] for n in m.state_names)


# (target, precision) -> frames per block graph call, for the exports that include the block
# graphs of the offline path. Measured end to end (`enhance`, DfNet4Lite, 2-core x86): onnxruntime
# is fastest at 100 frames; LiteRT/XNNPACK at 25 (RTF 0.0062 vs 0.0075 at 100: a smaller block's
# activations stay in cache while the three graphs alternate).
BLOCK_EXPORTS = {("onnx", "fp32"): BLOCK_FRAMES, ("onnx", "int8"): BLOCK_FRAMES, ("tflite", "fp32"): 25}
BLOCK_TARGETS = tuple(dict.fromkeys(t for t, _ in BLOCK_EXPORTS))
# (target, precision) pairs whose exports include the fused frame graph. Not fp16: its features
# take log10 of band powers near 1e-10, which fp16 cannot represent. ONNX int8 keeps the frame
# graph's DSP matmuls (ERB filterbank and its inverse) float (exporters/onnx.py); TFLite's
# dynamic-range quantizer cannot leave them out.
FUSED_EXPORTS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"))
FUSED_TARGETS = tuple(dict.fromkeys(t for t, _ in FUSED_EXPORTS))


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


def synthetic_fixture_audio(sample_rate: int, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A deterministic voiced signal (gliding f0, 20 harmonics, syllable-rate envelope) in noise
    at 5 dB SNR: used for fixtures when no real clip is given (the SDK ships no audio)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 21) if k * 240 < sample_rate / 2)
    voiced = harmonics * (0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)) * 0.1
    noise = rng.standard_normal(t.size)
    noise *= np.sqrt(np.mean(voiced**2) / (np.mean(noise**2) * 10 ** 0.5))
    return (voiced + noise).astype(np.float32)


def record_reference(model: EnhancementModel, audio: np.ndarray) -> tuple[RecordingBackend, np.ndarray]:
    """Stream ``audio`` through the PyTorch backend with every stage on, once through the three
    component graphs and once through the fused frame graph; returns the recorder (every graph's
    calls) and the enhanced audio."""
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend

    recorder = RecordingBackend(TorchBackend(model))
    stream = EnhancementStream(recorder, ALL_STAGES, fused=False)
    enhanced = np.concatenate([stream.process(audio), stream.flush()])
    stream = EnhancementStream(recorder, ALL_STAGES, fused=True)
    np.concatenate([stream.process(audio), stream.flush()])
    return recorder, enhanced


def make_fixtures(manifest: Manifest, recorder: RecordingBackend, audio: np.ndarray, enhanced: np.ndarray) -> dict[str, np.ndarray]:
    """Golden fixtures: per-frame frame inputs and model outputs, initial and final states, and
    the audio in/out, so a device port can check itself from the manifest alone."""
    fixtures: dict[str, np.ndarray] = {"audio_in": audio, "audio_out": enhanced}
    for g in manifest.component_graphs:
        calls = recorder.calls[g.name]
        for t in g.inputs:
            if t.role == "feature":
                fixtures[f"{g.name}/{t.name}"] = np.stack([c[0][t.name] for c in calls])
        for t in g.outputs:
            if t.role == "output":
                fixtures[f"{g.name}/{t.name}"] = np.stack([c[1][t.name] for c in calls])
        for s in manifest.states_of(g.name):
            fixtures[f"{g.name}/final.{s.output_name}"] = calls[-1][1][s.output_name]
    return fixtures


def validate_graphs(backend, recorder: RecordingBackend) -> dict[str, dict[str, float]]:
    """Run each exported graph over the recorded frames (reference inputs, its own states fed
    back) and measure every output's max error relative to the reference's range."""
    errors: dict[str, dict[str, float]] = {}
    for g in backend.manifest.graphs:
        if g.kind == "block":  # checked end to end by exported_audio_snr (offline path)
            continue
        states = {s.input_name: s.initial() for s in backend.manifest.states_of(g.name)}
        worst: dict[str, float] = {}
        scale: dict[str, float] = {}
        for inputs, ref_out in recorder.calls[g.name]:
            feed = {k: v for k, v in inputs.items() if not k.startswith("state_in.")}
            out = backend.run(g.name, {**feed, **states})
            for t in g.outputs:
                if t.role == "state_out":
                    continue
                diff = float(np.max(np.abs(out[t.name].reshape(ref_out[t.name].shape) - ref_out[t.name])))
                worst[t.name] = max(worst.get(t.name, 0.0), diff)
                scale[t.name] = max(scale.get(t.name, 0.0), float(np.max(np.abs(ref_out[t.name]))))
            states = {s.input_name: out[s.output_name] for s in backend.manifest.states_of(g.name)}
        errors[g.name] = {k: worst[k] / max(scale[k], 1e-6) for k in worst}
    return errors


def export_bundle(
    model: EnhancementModel,
    converter: GraphConverter,
    out_dir: str | Path,
    precision: str = "fp32",
    fixture_audio: np.ndarray | None = None,
    fixture_source: str | None = None,
    overwrite: bool = False,
    fused: bool | None = None,
    calibration: Sequence[np.ndarray] | None = None,
    blocks: bool | None = None,
) -> Bundle:
    """Export ``model`` for ``converter.target`` at ``precision`` into the bundle ``out_dir``.

    ``calibration``: clips at the model's rate streamed through PyTorch to record each graph's
    inputs for quantizing converters (default: the fixture audio)."""
    from dfnet4_sdk.runtimes import load_backend

    target = converter.target
    if precision not in converter.precisions:
        raise ConfigError(f"{target} export supports precisions {list(converter.precisions)}, not {precision!r}")
    tolerance = TOLERANCES[(target, precision)]
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    model = model.eval()
    if fixture_audio is None:
        fixture_audio = synthetic_fixture_audio(model.dsp.sample_rate_hz)
        fixture_source = "synthetic voiced signal + noise, 5 dB SNR (dfnet4_sdk.exporters.base.synthetic_fixture_audio)"
    recorder, enhanced = record_reference(model, fixture_audio)

    if fused is None:
        fused = (target, precision) in FUSED_EXPORTS
    explicit_blocks = bool(blocks)  # asked for: a faulty block graph fails the export
    if blocks is None:
        blocks = (target, precision) in BLOCK_EXPORTS and _block_graphs_pay_off(model, target)
    base = describe_model(model, backend=target, precision=precision, include_frame=fused,
                          block_frames=BLOCK_EXPORTS.get((target, precision), BLOCK_FRAMES) if blocks else None)
    metadata = _graph_metadata(base)
    calibrating = precision in QUANTIZED_PRECISIONS and "calibration" in inspect.signature(converter.convert).parameters
    if calibrating:
        from dfnet4_sdk.exporters.quantize import calibration_frames

        frames = calibration_frames(model, calibration if calibration is not None else [fixture_audio])
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        graphs = []
        for spec in base.graphs:
            if spec.kind == "block":
                module = BlockModule(model.components[spec.name.removesuffix("_block")], spec)
                example = tuple(torch.zeros(t.shape) for t in spec.inputs)
            else:
                module = FrameStepModule(model, spec) if spec.kind == "frame" else StepModule(model.components[spec.name], spec)
                example = tuple(torch.from_numpy(np.asarray(recorder.calls[spec.name][0][0][t.name])) for t in spec.inputs)
            file = f"{spec.name}{converter.suffix}"
            extra = {"calibration": frames.get(spec.name)} if calibrating else {}
            with torch.no_grad():
                names = converter.convert(module, example, spec, staging / file, precision, metadata, **extra)
            graphs.append(replace(spec, file=file, sha256=file_sha256(staging / file), tensor_names=names))
        fixtures = make_fixtures(base, recorder, fixture_audio, enhanced)
        np.savez_compressed(staging / FIXTURES_NAME, **fixtures)
        done = getattr(converter, "quantization", None) or {}
        quantization = {g.name: done[g.name] for g in graphs if g.name in done}
        if quantization:
            quantization = {"precision": precision, "graphs": quantization,
                            "calibration": ("fixture audio" if calibration is None else
                                            f"{len(calibration)} clips, {sum(len(c) for c in calibration) / model.dsp.sample_rate_hz:.1f} s")
                            if calibrating else "none"}
        manifest = replace(
            base,
            graphs=tuple(graphs),
            quantization=quantization,
            fixtures={"file": FIXTURES_NAME, "sha256": file_sha256(staging / FIXTURES_NAME),
                      "source": fixture_source or "user-provided audio"},
            # The weights exported, as load_model resolved them (absent for a model built in memory).
            source_model=dict(getattr(model, "source_model", None) or {}),
        )
        write_manifest(staging, manifest)

        backend = load_backend(target, Bundle.load(staging))
        graph_errors = validate_graphs(backend, recorder)
        left_out = None
        if manifest.block_graphs and not explicit_blocks:
            block_snr = offline_audio_snr(backend, fixture_audio, enhanced)
            if not block_snr >= tolerance.audio_snr_db:
                # The block graphs only make enhance() faster; a converter that mangles them
                # (LiteRT folds some transpose chains into a wrong reshape: a GroupedLinear whose
                # groups equal both axes of the permuted input) costs speed, never correctness.
                left_out = (f"block graphs left out: their offline path gave {block_snr:.1f} dB SNR vs PyTorch "
                            f"< {tolerance.audio_snr_db:.0f} dB (converter fault); enhance() streams instead")
                log.warning("%s %s export of %s: %s", target, precision, model.family, left_out)
                for g in manifest.block_graphs:
                    (staging / g.file).unlink()
                manifest = replace(manifest, graphs=tuple(g for g in manifest.graphs if g.kind != "block"))
                write_manifest(staging, manifest)
                backend = load_backend(target, Bundle.load(staging))
        audio_snr = exported_audio_snr(backend, fixture_audio, enhanced)
        problems = [
            f"{g}.{name}: relative error {err:.2e} > {tolerance.graph_rel_error:.0e}"
            for g, errs in graph_errors.items() for name, err in errs.items() if not err <= tolerance.graph_rel_error
        ]
        if not audio_snr >= tolerance.audio_snr_db:
            problems.append(f"enhanced audio SNR vs PyTorch {audio_snr:.1f} dB < {tolerance.audio_snr_db:.0f} dB")
        if problems:
            raise ExportError(f"{target} {precision} export of {model.family} failed validation: " + "; ".join(problems))
        manifest = replace(manifest, validation={
            "graph_rel_error": graph_errors,
            "audio_snr_db": audio_snr,
            "tolerance": {"graph_rel_error": tolerance.graph_rel_error, "audio_snr_db": tolerance.audio_snr_db},
            **({"note": left_out} if left_out else {}),
        })
        write_manifest(staging, manifest)
        staging.chmod(new_file_mode(out_dir, directory=True))  # mkdtemp's 0700 would leak through
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s %s %s to %s (audio SNR vs torch %.1f dB)", model.family, target, precision, out_dir, audio_snr)
    return Bundle.load(out_dir)


def _block_graphs_pay_off(model: nn.Module, target: str) -> bool:
    """LiteRT lowers a GRU's sequence form to one cell per frame (25 unrolled cells per block
    graph, measured on DFN3: no faster than streaming, 9 MB more bundle); everything else in
    these models vectorises over a block."""
    return not (target == "tflite" and any(isinstance(m, nn.GRU) for m in model.modules()))


def exported_audio_snr(backend, audio: np.ndarray, reference: np.ndarray) -> float:
    """Worst SNR of the enhanced audio against ``reference`` over the backend's paths (the three
    component graphs, the fused frame graph and the block graphs, those the bundle has)."""
    paths = (False, True) if backend.manifest.frame_graph is not None else (False,)
    worst = math.inf
    for fused in paths:
        stream = EnhancementStream(backend, ALL_STAGES, fused=fused)
        out = np.concatenate([stream.process(audio), stream.flush()])
        worst = min(worst, snr_db(reference, out))
    if backend.manifest.block_graphs:
        worst = min(worst, offline_audio_snr(backend, audio, reference))
    return worst


def offline_audio_snr(backend, audio: np.ndarray, reference: np.ndarray) -> float:
    """SNR of the offline path (block graphs) against ``reference``."""
    from dfnet4_sdk.offline import enhance_offline

    return snr_db(reference, enhance_offline(backend, audio, ALL_STAGES))


def _graph_metadata(manifest: Manifest) -> dict[str, str]:
    """Key facts written into every graph file, so a graph found alone says what it expects."""
    import json

    from dfnet4_sdk import __version__

    d = manifest.dsp
    return {
        "dfnet4_sdk_version": __version__,
        "model_family": manifest.model_family,
        "sample_rate_hz": str(d.sample_rate_hz),
        "fft_size": str(d.fft_size),
        "hop_size_samples": str(d.hop_size_samples),
        "nb_erb": str(d.nb_erb),
        "nb_df": str(d.nb_df),
        "df_order": str(manifest.streaming.df_order),
        "conv_lookahead_frames": str(manifest.streaming.conv_lookahead_frames),
        "df_lookahead_frames": str(manifest.streaming.df_lookahead_frames),
        "dsp_params_json": json.dumps(d.to_dict()),
        "note": "one frame per call; state_in.* / state_out.* are recurrent state; see manifest.json",
    }


# target -> (module, converter class); imported lazily so each toolchain stays optional.
CONVERTERS = {
    "onnx": ("dfnet4_sdk.exporters.onnx", "OnnxConverter", "onnx"),
    "tflite": ("dfnet4_sdk.exporters.tflite", "TfliteConverter", "tflite"),
    "coreml": ("dfnet4_sdk.exporters.coreml", "CoremlConverter", "coreml"),
}
EXPORT_TARGETS = tuple(CONVERTERS)


def converter_for(target: str) -> GraphConverter:
    """The converter of a target name (imports its toolchain lazily)."""
    from dfnet4_sdk.plugins import load_registered

    return load_registered(CONVERTERS, target, "export target", ExportError)()


def export(model: Any, target: str, out_dir: str | Path, precision: str = "fp32", **kwargs) -> Bundle:
    """Resolve ``model`` (name, checkpoint, archive or model) and export it."""
    from dfnet4_sdk.models import load_model

    return export_bundle(load_model(model), converter_for(target), out_dir, precision=precision, **kwargs)
