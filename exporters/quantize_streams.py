"""Does int8 pay on the batched frame graph ``frame_streams`` (issue 17 item 3)? The measurement
behind the answer, rerun with ``python -m dfnet4_sdk.exporters.quantize_streams``.

The int8 frame graph's scheme (``quantize.ONNX_CANDIDATES[0]``: ``MatMulNBits`` with int8
activations quantized per row and block, the DSP matmuls left float, as ``exporters/onnx.py``
quantizes a fused frame graph) is applied to a float bundle's ``frame`` and ``frame_streams``
graphs (``int8_frame_graphs``), then measured against the float graphs:

- cost (``cost_per_stream_hop``): both batched graphs on the same recorded calls (B streams of
  real audio, every state as in deployment), alternated call by call in one process, one
  thread; the median of the paired int8 / fp32 time ratios reads through the load of a shared
  machine, the absolute times do not;
- rows (``row_report``): a ``StreamPool`` over the int8 batched graph against (a) itself with
  another row 40 dB louder or quieter (row independence: activation scales computed over the
  whole batch, as dynamic quantization does, would let one stream's level change another's
  output), (b) each row through the int8 single-stream frame graph, what a ``Runtime`` on an
  int8 bundle runs (``StreamPool`` promises >= 60 dB), (c) the fp32 pool (quantization error).

Measured Nov 2026 on the 2-core AMD EPYC (AVX2, no VNNI; load 3-5 from other work; the ratios
are the figures, two runs): the int8 batched graph is not cheaper than the fp32 one per
stream-hop, 1.00-1.02x at B=8, 1.06-1.11x at 32, 1.14-1.16x at 128, for DfNet4Lite and DFN3 alike
(``MatMulNBits`` at 32-128 rows takes 1.5-1.8x onnxruntime's fp32 GEMM here; Gemm/MatMul are
16-20% of the graph, the rest is Conv, ConvTranspose, Where, Slice and Concat). Rows are
independent (bit-identical when another row is 40 dB louder), but they stay 44-59 dB from the
int8 single-stream graph: rounding activations to int8 turns the float graphs' last-bit
differences between 1 and B rows into whole quantization steps, which the recurrent states carry
on. int8 against fp32: 34-47 dB (DFN3 34-45, DfNet4Lite 41-47). Calibrated static scales (QDQ on
MatMul/Gemm, the same for both graphs) measured 0.96-1.06x at 30-41 dB from fp32 and 50-53 dB
from the single-stream graph. So ``frame_streams`` stays fp32 (``OnnxConverter``). LiteRT: its
int8 quantizer cannot leave the DSP matmuls float (``TfliteConverter``), and forcing it on the
32-stream graph measured 1.01x (DFN3) and 1.16x (DfNet4Lite) fp32's cost at -2 to 0 dB from fp32.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

FRAME, STREAMS = "frame", "frame_streams"
LOUDER_DB = 40.0  # the other row's change in the row-independence check


def int8_frame_graphs(bundle, model, out_dir: Path) -> dict[str, Path]:
    """``frame`` and ``frame_streams`` of the float ONNX ``bundle`` (exported with streams)
    quantized as ``exporters/onnx.py`` quantizes a fused frame graph; ``model``: the
    ``EnhancementModel`` the bundle was exported from (its DSP constants name the float nodes)."""
    import onnx

    from dfnet4_sdk.exporters.onnx import _dsp_nodes
    from dfnet4_sdk.exporters.quantize import ONNX_CANDIDATES, quantize_onnx
    from dfnet4_sdk.exporters.step_modules import graph_module

    specs = {g.name: g for g in bundle.manifest.graphs}
    paths = {}
    for name in (FRAME, STREAMS):
        src = bundle.graph_path(name)
        keep = _dsp_nodes(onnx.load(str(src)), graph_module(model, specs[name]))
        paths[name] = Path(out_dir) / f"{name}.int8.onnx"
        quantize_onnx(src, paths[name], replace(ONNX_CANDIDATES[0], exclude=keep))
    return paths


def files_backend(bundle, paths: dict[str, Path] | None = None):
    """An onnxruntime backend over the bundle's frame graphs (``paths``: other files for them)."""
    from dfnet4_sdk.exporters.quantize_measure import FilesBackend

    return FilesBackend(bundle.manifest, paths or {g: bundle.graph_path(g) for g in (FRAME, STREAMS)})


class _Recorder:
    """A backend that records every batched frame graph call's inputs."""

    def __init__(self, backend):
        self.backend, self.manifest, self.name, self.calls = backend, backend.manifest, backend.name, []

    def run(self, graph, inputs):
        if graph == STREAMS:
            self.calls.append({k: np.ascontiguousarray(v) for k, v in inputs.items()})
        return self.backend.run(graph, inputs)


def stream_rows(backend, rows: np.ndarray) -> np.ndarray:
    """``rows`` [B, N] through a ``StreamPool`` over ``backend``'s batched graph -> [B, N]."""
    from dfnet4_sdk.stream_pool import StreamPool

    pool = StreamPool.over_backend(backend, rows.shape[0], batched=True)
    return np.concatenate([pool.process(rows), pool.flush()], axis=1)


def single_stream(backend, row: np.ndarray) -> np.ndarray:
    """One row through the single-stream frame graph, as a ``Runtime`` runs it."""
    from dfnet4_sdk.stream import EnhancementStream

    stream = EnhancementStream(backend, fused=True)
    return np.concatenate([stream.process(row), stream.flush()])


def row_report(fp32, int8, rows: np.ndarray) -> dict[str, float]:
    """Row independence and quality of the int8 batched graph (backends from ``files_backend``):
    ``other_row_louder`` / ``other_row_quieter``: the largest change of any other row's output
    when row 1 is ``LOUDER_DB`` louder / quieter; ``vs_single_stream_db``: the worst row's SNR
    against the int8 single-stream graph; ``vs_fp32_db``: the worst row's SNR against fp32."""
    from dfnet4_sdk.metrics import snr_db

    out = stream_rows(int8, rows)
    others = [i for i in range(rows.shape[0]) if i != 1]
    report = {}
    for key, gain in (("other_row_louder", LOUDER_DB), ("other_row_quieter", -LOUDER_DB)):
        changed = rows.copy()
        changed[1] *= np.float32(10 ** (gain / 20))
        report[key] = float(np.abs(stream_rows(int8, changed)[others] - out[others]).max())
    report["vs_single_stream_db"] = min(snr_db(single_stream(int8, r), o) for r, o in zip(rows, out))
    report["vs_fp32_db"] = min(snr_db(f, o) for f, o in zip(stream_rows(fp32, rows), out))
    return report


def recorded_calls(backend, audio: np.ndarray, streams: int, hops: int) -> list[dict[str, np.ndarray]]:
    """The batched graph's inputs over ``hops`` hops of ``streams`` different stretches of
    ``audio`` (after 20 hops of warm-up), states as in deployment."""
    hop = backend.manifest.dsp.hop_size_samples
    offsets = (np.arange(streams) * audio.size) // streams
    rows = audio[(offsets[:, None] + np.arange((hops + 20) * hop)[None, :]) % audio.size]
    recorder = _Recorder(backend)
    stream_rows(recorder, rows)
    return recorder.calls[20 : 20 + hops]


def cost_per_stream_hop(fp32_path: Path, int8_path: Path, calls, rounds: int = 6) -> tuple[float, float, float]:
    """(fp32 us, int8 us per stream-hop, median of the paired int8 / fp32 call-time ratios):
    both graphs on the same ``calls``, alternated call by call (the order swapped every call)."""
    from dfnet4_sdk.exporters.quantize_measure import session

    sessions = {"fp32": session(fp32_path), "int8": session(int8_path)}
    names = [i.name for i in sessions["fp32"].get_inputs()]
    feeds = [{k: c[k] for k in names} for c in calls]
    for s in sessions.values():
        for f in feeds[:5]:
            s.run(None, f)
    times = {"fp32": [], "int8": []}
    for r in range(rounds):
        for j, f in enumerate(feeds):
            for k in ("fp32", "int8") if (r + j) % 2 == 0 else ("int8", "fp32"):
                t = time.perf_counter()
                sessions[k].run(None, f)
                times[k].append(time.perf_counter() - t)
    rows = len(calls[0]["spec"])
    fp32, int8 = np.array(times["fp32"]), np.array(times["int8"])
    return float(np.median(fp32)) * 1e6 / rows, float(np.median(int8)) * 1e6 / rows, float(np.median(int8 / fp32))


@dataclass
class StreamsInt8Result:
    model: str
    report: dict[str, float]
    costs: dict[int, tuple[float, float, float]]  # streams -> cost_per_stream_hop


def measure(model_name: str, audio: np.ndarray, sample_rate: int, streams=(8, 32, 128),
            rounds: int = 6) -> StreamsInt8Result:
    """Everything above for one model: its fp32 bundle with ``frame_streams`` (exported once,
    cached), the int8 graphs made from it, the row report on 3 s of ``audio`` [N] (3 rows) and
    the cost at each stream count."""
    from dfnet4_sdk.audio_io import resample
    from dfnet4_sdk.exporters.cache import cached_export
    from dfnet4_sdk.models import load_model

    model = load_model(model_name)
    bundle = cached_export(model, "onnx", "fp32", streams=True)
    rate = bundle.manifest.dsp.sample_rate_hz
    audio = np.ascontiguousarray(resample(audio, sample_rate, rate), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = int8_frame_graphs(bundle, model, Path(tmp))
        fp32, int8 = files_backend(bundle), files_backend(bundle, paths)
        x = np.ascontiguousarray(audio[: 3 * rate], dtype=np.float32)
        rows = np.stack([x, np.roll(x, rate) * np.float32(0.3), x[::-1] * np.float32(0.5)])
        report = row_report(fp32, int8, rows)
        costs = {b: cost_per_stream_hop(bundle.graph_path(STREAMS), paths[STREAMS], recorded_calls(fp32, audio, b, 40),
                                        rounds) for b in streams}
    return StreamsInt8Result(model_name, report, costs)


def to_markdown(results: list[StreamsInt8Result], load: str) -> str:
    lines = [f"int8 vs fp32 batched frame graph (ONNX, one thread; {load})", "",
             "| model | streams | fp32 us per stream-hop | int8 | int8 / fp32 (paired) |", "|---|---|---|---|---|"]
    for r in results:
        lines += [f"| `{r.model}` | {b} | {f:.1f} | {q:.1f} | {ratio:.2f}x |" for b, (f, q, ratio) in r.costs.items()]
    lines += ["", "| model | other rows' change, row 1 +40 dB | -40 dB | rows vs int8 single-stream graph | int8 vs fp32 |",
              "|---|---|---|---|---|"]
    for r in results:
        p = r.report
        lines.append(f"| `{r.model}` | {p['other_row_louder']:.2g} | {p['other_row_quieter']:.2g} "
                     f"| {p['vs_single_stream_db']:.1f} dB | {p['vs_fp32_db']:.1f} dB |")
    return "\n".join(lines)


def main(argv=None) -> None:
    from dfnet4_sdk.audio_io import read_audio
    from dfnet4_sdk.bench_streams import load_note, parse_streams

    ap = argparse.ArgumentParser(prog="python -m dfnet4_sdk.exporters.quantize_streams", description=__doc__.split("\n")[0])
    ap.add_argument("audio", help="a real recording (e.g. ../shared/data/noisy_real/dns5_blind_street_48k.flac)")
    ap.add_argument("--models", default="dfnet4-lite-v1,dfn3")
    ap.add_argument("--streams", default="8,32,128")
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args(argv)
    audio, sr = read_audio(args.audio)
    results = [measure(name, audio.mean(axis=1), sr, parse_streams(args.streams), args.rounds)
               for name in args.models.split(",")]
    print(to_markdown(results, load_note()))


if __name__ == "__main__":
    main()
