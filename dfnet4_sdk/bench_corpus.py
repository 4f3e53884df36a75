"""``dfsdk bench --corpus FILES``: what enhancing a whole corpus costs (issue 17 item 2).

A corpus of FILES real noisy clips (stretches of the benchmark clip, each ``seconds`` long) is
written to a temporary folder, then enhanced by each runner into a fresh output folder, exactly
as `dfsdk run CORPUS --output-dir OUT` does: the local batch with 1 and 2 worker processes
(``--jobs``), and Ray Data with 1 and 2 actors on a local Ray (``--ray``; left out, with the
reason, where the ``[ray]`` extra is missing). Throughput = seconds of audio per second of wall
time of the batch call (model loading, file I/O and the records that make a rerun skip included);
Ray's own start-up is timed apart, as a cluster pays it once. Every runner's outputs must be the
bytes of the first one's (``same outputs``).

Threads: the local batch with one job runs one Runtime with its default threads, as `dfsdk run
--jobs 1` does (a model with offline block graphs overlaps them on two cores; the default model's
LiteRT bundle streams files hop by hop, on one); every worker of two jobs, and every Ray actor,
runs one thread.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfnet4_sdk.errors import ConfigError

MARKERS = ("<!-- corpus:start -->", "<!-- corpus:end -->")
RUNNERS = (("local", 1), ("local", 2), ("ray", 1), ("ray", 2))


@dataclass
class CorpusResult:
    runner: str  # "local" (worker processes) or "ray" (Ray Data actors)
    workers: int
    files: int
    audio_seconds: float
    wall_seconds: float  # the batch call; Ray's start-up not included
    startup_seconds: float | None  # Ray's start-up (ray.init), None for the local batch
    failed: int
    same_outputs: bool  # byte for byte the outputs of the first runner

    @property
    def throughput(self) -> float:
        """Seconds of audio per second of wall time."""
        return self.audio_seconds / self.wall_seconds


def check_files(files: int) -> int:
    if isinstance(files, bool) or not isinstance(files, int) or files < 1:
        raise ConfigError(f"--corpus takes the number of files to enhance (at least 1), got {files!r}")
    return files


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def make_corpus(audio_path: str | Path, folder: Path, files: int, seconds: float) -> float:
    """``files`` FLAC files of ``seconds`` each in ``folder`` (two sub-folders, as a corpus tree has),
    cut from the clip at spread offsets (looping); returns the total seconds of audio."""
    import soundfile as sf

    from dfnet4_sdk.audio_io import read_audio

    audio, rate = read_audio(audio_path)
    clip = audio.mean(axis=1).astype(np.float32)
    length = int(round(seconds * rate))
    for i in range(files):
        start = (i * len(clip)) // files
        piece = clip[(start + np.arange(length)) % len(clip)]
        path = folder / f"part{i % 2}" / f"clip{i:04d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, piece, rate, subtype="PCM_16")
    return files * length / rate


def _digests(folder: Path) -> dict[str, str]:
    """Every enhanced file under ``folder`` (not the records) -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.flac")) if ".dfsdk" not in p.parts}


def _run_one(runner: str, workers: int, corpus: Path, out: Path, model: Any) -> tuple[Any, float, float | None]:
    """(BatchReport, wall seconds of the batch call, Ray start-up seconds or None)."""
    if runner == "local":
        from dfnet4_sdk.batch import enhance_batch

        t = time.perf_counter()
        report = enhance_batch([str(corpus)], out, model, jobs=workers)
        return report, time.perf_counter() - t, None
    from dfnet4_sdk.ray_batch import enhance_corpus, local_ray

    t = time.perf_counter()
    with local_ray(workers):
        startup = time.perf_counter() - t
        t = time.perf_counter()
        report = enhance_corpus([str(corpus)], out, model, workers=workers)
        return report, time.perf_counter() - t, startup


def run_corpus(audio_path: str | Path, files: int, seconds: float, model: Any = None,
               runners: tuple[tuple[str, int], ...] = RUNNERS, echo: Callable[[str], None] = print) -> list[CorpusResult]:
    """Make the corpus, enhance it with every runner (Ray's left out where it is not installed),
    and compare every runner's outputs with the first one's."""
    check_files(files)
    if not ray_available() and any(r == "ray" for r, _ in runners):
        echo("Ray is not installed (pip install 'dfnet4-sdk[ray]'): the Ray rows are left out")
        runners = tuple((r, w) for r, w in runners if r != "ray")
    results: list[CorpusResult] = []
    with tempfile.TemporaryDirectory(prefix="dfsdk-bench-corpus-") as tmp:
        corpus = Path(tmp) / "corpus"
        audio_seconds = make_corpus(audio_path, corpus, files, seconds)
        echo(f"corpus: {files} files, {audio_seconds / 60:.1f} min of audio")
        reference: dict[str, str] | None = None
        for runner, workers in runners:
            out = Path(tmp) / f"out-{runner}-{workers}"
            report, wall, startup = _run_one(runner, workers, corpus, out, model)
            digests = _digests(out)
            reference = digests if reference is None else reference
            result = CorpusResult(runner, workers, len(report.results), report.audio_seconds, wall, startup,
                                  len(report.of("failed")), digests == reference and len(digests) == files)
            results.append(result)
            echo(_line(result))
            shutil.rmtree(out)
    return results


def _line(r: CorpusResult) -> str:
    start = f", Ray start {r.startup_seconds:.1f} s" if r.startup_seconds is not None else ""
    return (f"{r.runner} x{r.workers}: {r.files} files, {r.audio_seconds / 60:.1f} min of audio in {r.wall_seconds:.1f} s "
            f"({r.throughput:.0f} s of audio per s{start}); same outputs: {'yes' if r.same_outputs else 'NO'}")


def to_markdown(results: list[CorpusResult], audio_name: str, seconds: float, model_name: str, load: str) -> str:
    from dfnet4_sdk.bench import machine_description

    files = results[0].files if results else 0
    base = {r.runner: r.throughput for r in results if r.workers == 1}
    lines = [MARKERS[0], "## Whole corpora (`dfsdk bench --corpus`)", "",
             f"Written by `dfsdk bench --corpus {files} --seconds {seconds:g}` on {time.strftime('%Y-%m-%d')}. "
             f"Machine: {machine_description()}; {load}.",
             f"Input: {files} files of {seconds:g} s cut from `{audio_name}` (16-bit FLAC, two folders), enhanced with "
             f"`{model_name}` into a fresh output folder as `dfsdk run CORPUS --output-dir OUT` does, by the local batch "
             "(`--jobs`: worker processes; one job is one Runtime with its default threads, each of two jobs one thread) and by "
             "Ray Data on a local Ray (`--ray`: one actor per worker, one CPU each). Throughput: seconds of audio per "
             "second of wall time of the batch call (model loading, reading, writing and the skip records included); "
             "Ray's start-up (`ray.init`) is timed apart: a cluster pays it once. Same outputs: every enhanced file "
             "byte for byte the first row's.",
             "", "| runner | workers | files | audio (min) | wall (s) | s of audio per s | vs 1 worker | Ray start (s) "
             "| failed | same outputs |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        start = f"{r.startup_seconds:.1f}" if r.startup_seconds is not None else ""
        lines.append(f"| {r.runner} | {r.workers} | {r.files} | {r.audio_seconds / 60:.1f} | {r.wall_seconds:.1f} "
                     f"| {r.throughput:.0f} | {_ratio(r.throughput, base.get(r.runner))} | {start} | {r.failed} "
                     f"| {'yes' if r.same_outputs else 'no'} |")
    lines += ["", MARKERS[1]]
    return "\n".join(lines) + "\n"


def _ratio(value: float, base: float | None) -> str:
    return f"{value / base:.2f}x" if base else ""
