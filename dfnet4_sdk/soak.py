"""Soak: one stream fed real audio one hop at a time for hours (``dfsdk bench --soak HOURS``).

Per time window: the per-hop latency percentiles (p50 / p95 / p99 / max) and the process's
resident memory; at the end, whether memory grew after warm-up. A stream that leaks a
kilobyte per hop grows by 360 MB an hour; one that holds no growing buffer stays flat.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfnet4_sdk.errors import AudioFileError, ConfigError

SOAK_MAX_WINDOW_S = 60.0  # one report line per minute in a long soak, ten windows in a short one
SOAK_RSS_TOLERANCE_MB = 8.0  # allocator noise; a leak of 1 KB per hop is 360 MB per hour


@dataclass
class SoakWindow:
    end_s: float  # wall-clock seconds since the soak started
    hops: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float  # resident memory at the end of the window


@dataclass
class SoakReport:
    model: str
    backend: str
    clip: str
    hours: float
    window_s: float
    hop_s: float  # audio per hop (10 ms for every shipped model)
    warmup_windows: int
    windows: list[SoakWindow]

    @property
    def audio_hours(self) -> float:
        """Audio streamed (the clip looped)."""
        return sum(w.hops for w in self.windows) * self.hop_s / 3600.0

    @property
    def rss_after_warmup_mb(self) -> float:
        return self.windows[self.warmup_windows - 1].rss_mb

    @property
    def rss_growth_mb(self) -> float:
        """Resident memory at the end minus after warm-up."""
        return self.windows[-1].rss_mb - self.rss_after_warmup_mb

    @property
    def rss_grew(self) -> bool:
        return self.rss_growth_mb > SOAK_RSS_TOLERANCE_MB

    def verdict(self) -> str:
        return (f"RSS {self.rss_after_warmup_mb:.1f} MB after warm-up ({self.warmup_windows} window"
                f"{'s' if self.warmup_windows > 1 else ''}), {self.windows[-1].rss_mb:.1f} MB at the end: "
                f"{'GREW' if self.rss_grew else 'flat'} ({self.rss_growth_mb:+.1f} MB, tolerance {SOAK_RSS_TOLERANCE_MB:.0f} MB)")

    def to_markdown(self) -> str:
        from dfnet4_sdk.bench import machine_description, versions

        lines = [
            "# Soak", "",
            f"Written by `dfsdk bench --soak {self.hours:g}` on {datetime.date.today().isoformat()}.",
            f"Machine: {machine_description()}.", f"Versions: {versions()}.",
            f"`{self.model}` on {self.backend}: `{self.clip}` looped, one hop per `process` call, one stream, "
            f"{self.hours * 3600:.0f} s wall clock ({self.audio_hours * 3600:.0f} s of audio); per-hop latency and "
            f"resident memory (RSS) per {self.window_s:g} s window.", "",
            "| window end s | hops | p50 ms | p95 ms | p99 ms | max ms | RSS MB |", "|---|---|---|---|---|---|---|",
        ]
        lines += [f"| {w.end_s:.1f} | {w.hops} | {w.p50_ms:.3f} | {w.p95_ms:.3f} | {w.p99_ms:.3f} | {w.max_ms:.3f} | "
                  f"{w.rss_mb:.1f} |" for w in self.windows]
        return "\n".join([*lines, "", self.verdict() + ".", ""])


def soak(hours: float, audio_path: str | Path, model: str | None = None, backend: str | None = None,
         window_s: float | None = None, echo=None, clock=time.perf_counter) -> SoakReport:
    """Stream ``audio_path`` (mono mix, looped) through one ``Runtime`` stream one hop per
    ``process`` call for ``hours`` of wall-clock time (fractions welcome: 0.01 is 36 s). Every
    ``window_s`` (default: a tenth of the run, at most a minute) records that window's per-hop
    latency percentiles and the process's resident memory; the first tenth of the windows (at
    least one) is warm-up. ``echo`` gets one line per window."""
    from dfnet4_sdk.audio_io import read_audio, resample
    from dfnet4_sdk.runtime import Runtime
    from dfnet4_sdk.shipped import DEFAULT_MODEL

    check_hours(hours)
    duration = hours * 3600.0
    window_s = min(SOAK_MAX_WINDOW_S, duration / 10) if window_s is None else window_s
    if not (isinstance(window_s, (int, float)) and math.isfinite(window_s) and 0 < window_s <= duration):
        raise ConfigError(f"window_s must be a number of seconds in (0, {duration:g}], got {window_s}")
    audio, rate = read_audio(audio_path)
    rt = Runtime(model, backend=backend, num_threads=1)
    hop = rt.hop_size_samples
    x = resample(audio.mean(axis=1), rate, rt.sample_rate)
    hops = np.ascontiguousarray(x[: len(x) // hop * hop]).reshape(-1, hop)
    if len(hops) == 0:
        raise AudioFileError(f"{audio_path} is shorter than one hop ({hop} samples at {rt.sample_rate} Hz)")
    n_windows = max(1, math.ceil(duration / window_s - 1e-9))
    times = np.empty(1 << 16)  # per-hop seconds of the current window, doubled when full
    windows: list[SoakWindow] = []
    start = clock()
    i = 0
    for k in range(n_windows):
        window_end = min(duration, (k + 1) * window_s)
        n = 0
        while n == 0 or clock() - start < window_end:  # at least one hop: a slow hop never empties a window
            if n == len(times):
                times = np.concatenate([times, np.empty_like(times)])
            t = clock()
            rt.process(hops[i])
            times[n] = clock() - t
            n += 1
            i = (i + 1) % len(hops)
        ms = times[:n] * 1e3
        p50, p95, p99 = np.percentile(ms, [50, 95, 99])
        windows.append(SoakWindow(clock() - start, n, float(p50), float(p95), float(p99), float(ms.max()), _rss_mb()))
        if echo is not None:
            w = windows[-1]
            echo(f"window {k + 1}/{n_windows} at {w.end_s:7.1f} s: {w.hops} hops, p50 {w.p50_ms:.3f} p95 {w.p95_ms:.3f} "
                 f"p99 {w.p99_ms:.3f} max {w.max_ms:.3f} ms, RSS {w.rss_mb:.1f} MB")
    return SoakReport(str(model or DEFAULT_MODEL), rt.backend.name, Path(audio_path).name, hours, window_s,
                      hop / rt.sample_rate, max(1, math.ceil(n_windows / 10)), windows)


def check_hours(hours: float) -> None:
    if not (isinstance(hours, (int, float)) and math.isfinite(hours) and hours > 0):
        raise ConfigError(f"soak hours must be a finite number > 0 (fractions welcome: 0.01 is 36 s), got {hours}")


def _rss_mb() -> float:
    """Current resident memory of this process (VmRSS), not the peak (where there is no /proc,
    the peak, which still shows growth)."""
    from dfnet4_sdk.bench import memory_mb

    return memory_mb("VmRSS")
