"""The quantization table of docs/QUANTIZATION.md: model x backend x scheme, each measured the
same way against PyTorch fp32:

- audio SNR: ``seconds`` of the real street clip streamed with every stage on (states fed back);
- worst graph error: each graph over the same frames, relative to the output's range;
- PESQ / DNSMOS OVRL deltas: dev_eval clips enhanced with the runtime's default options, the
  cell minus PyTorch (negative = worse);
- size: the component graph files; latency: per-hop time of the three graph calls over 100
  recorded frames, one thread, the lowest of 3 medians (the DSP around them is the same for
  every backend).

Cells are exported bundles (``dfsdk export``'s path, validated) or, for ONNX scheme
comparisons that the exporter would refuse, graph files quantized from the fp32 bundle
(``quantize.FilesBackend``), marked "not shippable" when they miss the tolerance.
"""

from __future__ import annotations

import datetime
import logging
import math
import platform
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfnet4_sdk.exporters.quantize import lowest_median_ms

log = logging.getLogger(__name__)

# (label, OnnxScheme kwargs): ONNX int8 schemes compared with the exporter's choice.
ONNX_COMPARISONS = (
    ("int8 dynamic (ORT quantize_dynamic)", {"kind": "dynamic"}),
    ("int8 weights via DequantizeLinear", {"kind": "weights"}),
    ("int8 static QDQ, MinMax", {"kind": "static", "calibration": "minmax"}),
    ("int8 static QDQ, Percentile 99.99", {"kind": "static", "calibration": "percentile"}),
    ("int16x8 static QDQ, MinMax", {"kind": "static", "calibration": "minmax", "activation_type": "QInt16"}),
)


@dataclass
class ReportRow:
    model: str
    backend: str
    scheme: str
    status: str = "ok"
    audio_snr_db: float = math.nan
    worst_graph_error: float = math.nan
    pesq_delta: float = math.nan
    ovrl_delta: float = math.nan
    size_mb: float = math.nan
    size_ratio: float = math.nan
    latency_ms: float = math.nan
    latency_ratio: float = math.nan
    notes: list[str] = field(default_factory=list)


def hop_latency_ms(backend, recorder, frames: int = 100, rounds: int = 3) -> float:
    """ms per hop of the component graph calls over recorded inputs (states from the
    recording), one thread: the lowest of ``rounds`` medians (the machine may be shared)."""
    graphs = [g.name for g in backend.manifest.component_graphs]
    n = min(frames, *(len(recorder.calls[g]) for g in graphs))
    feeds = [[recorder.calls[g][i][0] for g in graphs] for i in range(n)]

    def one_hop(hop) -> None:
        for g, inputs in zip(graphs, hop):
            backend.run(g, inputs)

    return lowest_median_ms(one_hop, feeds, rounds, warmup=10)


def _stream(backend, audio: np.ndarray, options=None) -> np.ndarray:
    from dfnet4_sdk.stream import EnhancementStream

    stream = EnhancementStream(backend, options, fused=False)
    return np.concatenate([stream.process(audio), stream.flush()])


def measure_backend(backend, sizes_bytes: int, reference, eval_items, dnsmos) -> ReportRow:
    """One cell: ``reference`` = (recorder, torch output, audio) of the street clip;
    ``eval_items`` = [(noisy 48k, clean 16k, torch output 16k, torch scores)]."""
    from dfnet4_sdk.exporters.validate import ALL_STAGES, validate_graphs

    from dfnet4_sdk.audio_io import resample
    from dfnet4_sdk.evaluation import pesq_wb
    from dfnet4_sdk.metrics import snr_db

    recorder, torch_out, audio = reference
    row = ReportRow("", "", "")
    errors = validate_graphs(_Only(backend), recorder)
    row.worst_graph_error = max(e for errs in errors.values() for e in errs.values())
    row.audio_snr_db = snr_db(torch_out, _stream(backend, audio, ALL_STAGES))
    row.latency_ms = hop_latency_ms(backend, recorder)
    row.size_mb = sizes_bytes / 1e6
    if eval_items:
        pesq_d, ovrl_d = [], []
        for noisy, clean, _, scores in eval_items:
            out = resample(_stream(backend, noisy), 48000, 16000)
            pesq_d.append(pesq_wb(clean, out, 16000) - scores["pesq"])
            ovrl_d.append(dnsmos(out, 16000)["ovrl"] - scores["ovrl"])
        row.pesq_delta, row.ovrl_delta = float(np.mean(pesq_d)), float(np.mean(ovrl_d))
    return row


class _Only:
    """A backend seen with its component graphs only (validate_graphs walks manifest.graphs)."""

    def __init__(self, backend):
        from dataclasses import replace

        self.backend, self.name = backend, backend.name
        self.manifest = replace(backend.manifest, graphs=backend.manifest.component_graphs)

    def run(self, graph, inputs):
        return self.backend.run(graph, inputs)


def _graph_bytes(bundle) -> int:
    total = 0
    for g in bundle.manifest.component_graphs:
        p = bundle.graph_path(g.name)
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
    return total


def build_report(models: Sequence[str], targets: Sequence[str], audio: np.ndarray, fixture: np.ndarray,
                 calibration: Sequence[np.ndarray], eval_pairs: Sequence[tuple[np.ndarray, np.ndarray]],
                 work_dir: str | Path | None = None, comparisons: bool = True) -> list[ReportRow]:
    """Export and measure every model x target x precision (fp32, fp16, int8) plus the ONNX
    scheme comparisons. ``audio``/``fixture``/``calibration`` at 48 kHz; ``eval_pairs`` =
    [(noisy, clean)] at 16 kHz."""
    import torch
    from dfnet4_sdk.exporters import quantize as q
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.exporters.validate import ALL_STAGES, RecordingBackend
    from dfnet4_sdk.runtimes import load_backend
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend

    from dfnet4_sdk.audio_io import resample
    from dfnet4_sdk.errors import BackendNotAvailableError, DfSdkError
    from dfnet4_sdk.evaluation import Dnsmos, pesq_wb
    from dfnet4_sdk.models import load_model

    torch.set_num_threads(1)
    work = Path(work_dir or tempfile.mkdtemp(prefix="quant-report-"))
    dnsmos = Dnsmos(num_threads=1)
    rows: list[ReportRow] = []
    for model_name in models:
        torch.manual_seed(0)  # untrained presets: the same random weights in every process
        model = load_model(model_name).eval()
        recorder = RecordingBackend(TorchBackend(model))
        torch_out = _stream(recorder, audio, ALL_STAGES)
        reference = (recorder, torch_out, audio)
        torch_backend = TorchBackend(model)
        eval_items = []
        for noisy, clean in eval_pairs:
            out = resample(_stream(torch_backend, resample(noisy, 16000, 48000)), 48000, 16000)
            eval_items.append((resample(noisy, 16000, 48000), clean, out,
                               {"pesq": pesq_wb(clean, out, 16000), "ovrl": dnsmos(out, 16000)["ovrl"]}))
        for target in targets:
            float_row = None
            for precision in ("fp32", "fp16", "int8"):
                label = f"{precision}" + (" (exporter's choice)" if precision == "int8" else "")
                out_dir = work / f"{target}-{precision}-{model_name}"
                try:
                    bundle = export_bundle(model, converter_for(target), out_dir, precision=precision,
                                           fixture_audio=fixture, calibration=calibration if precision == "int8" else None,
                                           overwrite=True)
                    backend = load_backend(target, bundle)
                except BackendNotAvailableError as e:
                    rows.append(ReportRow(model_name, target, label, status=f"cannot run here: {e}"))
                    continue
                except DfSdkError as e:
                    rows.append(ReportRow(model_name, target, label, status=f"export refused: {e}"))
                    continue
                heavy = target == "coreml"  # the numpy MIL interpreter: ~15 ms per graph call
                row = measure_backend(backend, _graph_bytes(bundle), reference, [] if heavy else eval_items, dnsmos)
                row.model, row.backend, row.scheme = model_name, target, label
                if heavy:
                    row.notes.append("runs in the numpy MIL interpreter on Linux: latency not representative")
                if precision == "int8" and bundle.manifest.quantization:
                    schemes = {g: v.get("weights", v.get("scheme", "")) for g, v in bundle.manifest.quantization.get("graphs", {}).items()}
                    if len(set(schemes.values())) > 1:
                        row.notes.append("per graph: " + "; ".join(f"{g}: {s}" for g, s in schemes.items()))
                if precision == "fp32":
                    float_row = row
                    fp32_bundle = bundle
                rows.append(row)
            if float_row is not None:
                for r in rows:
                    if r.model == model_name and r.backend == target:
                        r.size_ratio = r.size_mb / float_row.size_mb
                        r.latency_ratio = r.latency_ms / float_row.latency_ms
            if target == "onnx" and comparisons and float_row is not None:
                frames = q.calibration_frames(model, calibration)
                for label, kwargs in ONNX_COMPARISONS:
                    scheme = q.OnnxScheme(**kwargs)
                    paths = {}
                    for g in fp32_bundle.manifest.component_graphs:
                        paths[g.name] = work / f"cmp-{model_name}-{len(rows)}-{g.name}.onnx"
                        q.quantize_onnx(fp32_bundle.graph_path(g.name), paths[g.name], scheme, frames[g.name])
                    backend = q.FilesBackend(fp32_bundle.manifest, paths)
                    row = measure_backend(backend, sum(p.stat().st_size for p in paths.values()), reference, eval_items, dnsmos)
                    row.model, row.backend, row.scheme = model_name, "onnx", label
                    row.size_ratio, row.latency_ratio = row.size_mb / float_row.size_mb, row.latency_ms / float_row.latency_ms
                    tol_ok = row.worst_graph_error <= 0.2 and row.audio_snr_db >= (35.0 if "int16" in label else 25.0)
                    row.status = "ok" if tol_ok else "not shippable (misses the tolerance)"
                    rows.append(row)
    return rows


def to_markdown(rows: Sequence[ReportRow], clip: str, seconds: float, eval_names: Sequence[str], calibration_s: float) -> str:
    import onnxruntime

    from dfnet4_sdk import __version__

    def f(x, fmt):
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    lines = [
        "| model | backend | scheme | status | audio SNR dB | graph err | PESQ Δ | DNSMOS OVRL Δ | size MB (x fp32) | ms/hop (x fp32) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.backend} | {r.scheme} | {r.status} | {f(r.audio_snr_db, '.1f')} | {f(r.worst_graph_error, '.3f')} | "
            f"{f(r.pesq_delta, '+.3f')} | {f(r.ovrl_delta, '+.3f')} | {f(r.size_mb, '.2f')} ({f(r.size_ratio, '.2f')}) | "
            f"{f(r.latency_ms, '.3f')} ({f(r.latency_ratio, '.2f')}) | {'; '.join(r.notes)} |"
        )
    head = (
        f"Written by `dfsdk quantize --report` on {datetime.date.today().isoformat()}: {platform.platform()}, "
        f"{platform.processor() or platform.machine()}, dfnet4-sdk {__version__}, onnxruntime {onnxruntime.__version__}, "
        f"one thread. Audio SNR and graph error: {seconds:.0f} s of `{clip}` against PyTorch fp32 (every stage on, "
        f"states fed back). PESQ / DNSMOS OVRL Δ: cell minus PyTorch fp32 on {len(eval_names)} dev_eval clips "
        f"({', '.join(eval_names)}). Calibration: {calibration_s:.0f} s of speech + noise mixtures (not dev_eval, "
        "not the street clip). Size: the three component graphs. ms/hop: the three graph calls per hop over 100 "
        "recorded frames, lowest of 3 medians (a shared 2-core machine: ratios are steadier than absolute times)."
    )
    return head + "\n\n" + "\n".join(lines) + "\n"
