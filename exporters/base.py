"""The export pipeline, the same for every target, as named passes:

    plan      which graphs at which precision, from what the converter declares (``plan.py``)
    reference stream the fixture clip through PyTorch, recording every graph call
    convert   each planned graph, wrapped with positional I/O in manifest order
              (``step_modules.py``), written by the target's converter
    validate  the written graphs against PyTorch: names, then shapes, then values
              (``validate.py``, the function ``dfsdk conformance`` also calls)
    finalize  drop optional graphs that failed, write fixtures and the manifest with every
              file's sha256, move the bundle into place atomically

Nothing is written to the output directory unless validation passes (as optimum does).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from dfnet4_sdk.audio_io import new_file_mode
from dfnet4_sdk.bundle import FIXTURES_NAME, Bundle, file_sha256, write_manifest
from dfnet4_sdk.errors import BundleError, ExportError
from dfnet4_sdk.exporters.fixtures import fixture_cases, frame_lsnr, make_fixtures, record_cases
from dfnet4_sdk.exporters.plan import Capabilities, ExportPlan, capabilities_of, plan_export
from dfnet4_sdk.exporters.step_modules import BlockModule, FrameStepModule, StepModule, example_inputs, graph_module
from dfnet4_sdk.exporters.streams import check_rows, streams_graph_of
from dfnet4_sdk.exporters.validate import (
    ALL_STAGES,
    TOLERANCES,
    RecordingBackend,
    Tolerance,
    Validation,
    exported_audio_snr,
    offline_audio_snr,
    record_reference,
    validate_against_pytorch,
    validate_graphs,
)
from dfnet4_sdk.manifest import GraphSpec, Manifest
from dfnet4_sdk.models.base import EnhancementModel

__all__ = [  # the pipeline, and the names its callers import from here
    "ALL_STAGES", "TOLERANCES", "BlockModule", "Capabilities", "ExportPlan", "FrameStepModule", "GraphConverter",
    "RecordingBackend", "StepModule", "Tolerance", "Validation", "capabilities_of", "converter_for", "export",
    "export_bundle", "exported_audio_snr", "make_fixtures", "offline_audio_snr", "plan_export", "record_reference",
    "synthetic_fixture_audio", "validate_against_pytorch", "validate_graphs",
]

log = logging.getLogger(__name__)


class GraphConverter(Protocol):
    """One target's converter (``exporters/onnx.py``, ...).

    ``capabilities`` (``plan.Capabilities``) declares what it can carry; at the precisions it
    lists as ``calibrated``, ``convert`` gets a keyword ``calibration`` (the graph's recorded
    per-frame inputs, a list of name -> array dicts). Optional: an attribute ``quantization``
    (graph name -> what was done), which goes into the manifest's ``quantization``.
    """

    target: str
    suffix: str
    precisions: tuple[str, ...]
    capabilities: Capabilities

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


SYNTHETIC_FIXTURE_SOURCE = "synthetic voiced signal + noise, 5 dB SNR (dfnet4_sdk.exporters.base.synthetic_fixture_audio)"


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
    streams: bool = False,
) -> Bundle:
    """Export ``model`` for ``converter.target`` at ``precision`` into the bundle ``out_dir``.

    ``fused`` / ``blocks``: include the fused frame graph / the block graphs (None: what the
    converter declares). ``calibration``: clips at the model's rate streamed through PyTorch to
    record each graph's inputs for quantizing converters (default: the fixture audio). ``streams``:
    also the batched frame graph ``frame_streams`` (``exporters/streams.py``, for ``StreamPool``)."""
    model = model.eval()
    plan = plan_export(model, converter, precision, fused=fused, blocks=blocks, streams=streams)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")
    if fixture_audio is None:
        fixture_audio = synthetic_fixture_audio(model.dsp.sample_rate_hz)
        fixture_source = SYNTHETIC_FIXTURE_SOURCE
    batched = streams_graph_of(plan.manifest)
    recorder, enhanced = record_reference(model, fixture_audio, streams=check_rows(batched) if batched else 0)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        manifest = convert_graphs(plan, model, converter, recorder, staging,
                                  calibration if calibration is not None else [fixture_audio],
                                  calibration_source=_calibration_source(calibration, model.dsp.sample_rate_hz))
        validation = validate_staged(plan, manifest, staging, recorder, fixture_audio, enhanced)
        manifest = finalize(plan, manifest, validation, staging, out_dir, recorder, fixture_audio, enhanced,
                            fixture_source or "user-provided audio")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("exported %s %s %s to %s (audio SNR vs torch %.1f dB)", manifest.model_family, plan.target, precision,
             out_dir, validation.audio_snr_db)
    return Bundle.load(out_dir)


def convert_graphs(plan: ExportPlan, model: EnhancementModel, converter: GraphConverter, recorder: RecordingBackend,
                   staging: Path, calibration_clips: Sequence[np.ndarray], calibration_source: str) -> Manifest:
    """The convert pass: every planned graph written into ``staging`` by ``converter``; returns
    the plan's manifest with each graph's file, sha256 and tensor names, the quantization done
    and the weights' source, also written to ``staging`` (without fixtures or validation)."""
    frames = None
    if plan.calibrated:
        from dfnet4_sdk.exporters.quantize_calibrate import calibration_frames

        frames = calibration_frames(model, calibration_clips)
    metadata = _graph_metadata(plan.manifest)
    graphs = []
    for spec in plan.manifest.graphs:
        calls = recorder.calls.get(spec.name)
        example = example_inputs(spec, calls[0][0] if spec.kind != "block" and calls else None)
        file = f"{spec.name}{converter.suffix}"
        extra = {"calibration": frames.get(spec.name)} if frames is not None else {}
        with torch.no_grad():
            names = converter.convert(graph_module(model, spec), example, spec, staging / file, plan.precision, metadata,
                                      **extra)
        graphs.append(replace(spec, file=file, sha256=file_sha256(staging / file), tensor_names=names))
    done = getattr(converter, "quantization", None) or {}
    quantization = {g.name: done[g.name] for g in graphs if g.name in done}
    if quantization:
        quantization = {"precision": plan.precision, "graphs": quantization,
                        "calibration": calibration_source if plan.calibrated else "none"}
    manifest = replace(
        plan.manifest,
        graphs=tuple(graphs),
        quantization=quantization,
        # The weights exported, as load_model resolved them (absent for a model built in memory).
        source_model=dict(getattr(model, "source_model", None) or {}),
    )
    write_manifest(staging, manifest)
    return manifest


def validate_staged(plan: ExportPlan, manifest: Manifest, staging: Path, recorder: RecordingBackend,
                    audio: np.ndarray, enhanced: np.ndarray) -> Validation:
    """The validate pass: load the staged graphs on the target's backend (which checks each
    file's tensor names and shapes against the manifest) and compare them with PyTorch
    (``validate_against_pytorch``); ExportError lists every problem."""
    from dfnet4_sdk.runtimes import load_backend

    what = f"{plan.target} {plan.precision} export of {manifest.model_family} failed validation: "
    try:
        backend = load_backend(plan.target, Bundle.load(staging))
    except BundleError as e:
        raise ExportError(what + f"the written graphs do not match their specs: {e}") from e
    validation = validate_against_pytorch(backend, recorder, audio, enhanced, TOLERANCES[(plan.target, plan.precision)],
                                          plan.optional_graphs)
    if not validation.passed:
        raise ExportError(what + "; ".join(validation.problems))
    if validation.note:
        log.warning("%s %s export of %s: %s", plan.target, plan.precision, manifest.model_family, validation.note)
    return validation


def finalize(plan: ExportPlan, manifest: Manifest, validation: Validation, staging: Path, out_dir: Path,
             recorder: RecordingBackend, audio: np.ndarray, enhanced: np.ndarray, fixture_source: str) -> Manifest:
    """The finalize pass: drop the graphs validation left out, write the golden fixtures (per-frame,
    and the audio cases through the written component graphs: ``fixtures.py``) and the manifest
    (every file's sha256, the validation), then replace ``out_dir`` with ``staging``."""
    from dfnet4_sdk.runtimes import load_backend

    for g in manifest.graphs:
        if g.name in validation.left_out:
            (staging / g.file).unlink()
    manifest = replace(manifest, graphs=tuple(g for g in manifest.graphs if g.name not in validation.left_out))
    write_manifest(staging, manifest)
    d = manifest.dsp
    cases = fixture_cases(audio, d.sample_rate_hz, d.hop_size_samples, frame_lsnr(recorder))
    case_arrays, case_entries = record_cases(load_backend(plan.target, Bundle.load(staging)), cases)
    np.savez_compressed(staging / FIXTURES_NAME, **make_fixtures(plan.manifest, recorder, audio, enhanced), **case_arrays)
    manifest = replace(
        manifest,
        fixtures={"file": FIXTURES_NAME, "sha256": file_sha256(staging / FIXTURES_NAME), "source": fixture_source,
                  "cases": case_entries},
        validation=validation.to_manifest(),
    )
    write_manifest(staging, manifest)
    staging.chmod(new_file_mode(out_dir, directory=True))  # mkdtemp's 0700 would leak through
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return manifest


def _calibration_source(calibration: Sequence[np.ndarray] | None, sample_rate: int) -> str:
    if calibration is None:
        return "fixture audio"
    return f"{len(calibration)} clips, {sum(len(c) for c in calibration) / sample_rate:.1f} s"


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
    from dfnet4_sdk.registry import load_registered

    return load_registered(CONVERTERS, target, "export target", ExportError)()


def export(model: Any, target: str, out_dir: str | Path, precision: str = "fp32", **kwargs) -> Bundle:
    """Resolve ``model`` (name, checkpoint, archive or model) and export it."""
    from dfnet4_sdk.models import load_model

    return export_bundle(load_model(model), converter_for(target), out_dir, precision=precision, **kwargs)
