"""Before/after log-spectrograms as a PNG (matplotlib, Agg canvas, no pyplot state).

    plot_spectrograms("out.png", {"noisy": (x, 48000), "enhanced": (y, 48000)}, title="street")

Panels are stacked top to bottom in the order given, share the time axis and one colour scale
(the loudest bin of all panels is 0 dB, the scale spans ``DYNAMIC_RANGE_DB``), so a quieter
panel really is darker. matplotlib comes with the ``[eval]`` extra and is imported only here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dfnet4_sdk.audio_io import atomic_output, read_audio
from dfnet4_sdk.errors import AudioInputError, BackendNotAvailableError

FIG_WIDTH_IN = 10.0
PANEL_HEIGHT_IN = 2.2
TITLE_HEIGHT_IN = 0.6  # room for the title and the time axis label
DPI = 100  # a figure of n panels is 1000 x round(100 * (0.6 + 2.2 n)) pixels
WINDOW_S = 0.032  # STFT window ~32 ms (512 samples at 16 kHz, 2048 at 48 kHz), hop a quarter of it
DYNAMIC_RANGE_DB = 80.0


def check_plotting_available():
    """Return matplotlib, or raise a typed error naming the extra to install."""
    try:
        return importlib.import_module("matplotlib")
    except ImportError as e:
        raise BackendNotAvailableError(
            f"plotting needs matplotlib, which is not installed ({e}); install it with "
            'pip install "dfnet4-sdk[eval]"'
        ) from e


def png_size(num_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with ``num_panels`` spectrograms."""
    return round(FIG_WIDTH_IN * DPI), round((TITLE_HEIGHT_IN + PANEL_HEIGHT_IN * num_panels) * DPI)


def log_spectrogram(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """[freq_bins, frames] power in dB (unnormalised) of a mono or downmixed signal."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    n_fft = 1 << round(float(np.log2(WINDOW_S * sample_rate)))
    hop = n_fft // 4
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    return 10.0 * np.log10(np.maximum(spec.T, 1e-12))


def plot_spectrograms(
    path_png: str | Path,
    signals: Mapping[str, tuple[np.ndarray, int]],
    title: str | None = None,
) -> Path:
    """Write stacked log-spectrograms of ``signals`` ({label: (audio, sample_rate)}) to a PNG."""
    check_plotting_available()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not signals:
        raise AudioInputError("nothing to plot: signals is empty; pass {label: (audio, sample_rate)}")
    specs = {label: (log_spectrogram(x, sr), len(x) / sr, sr) for label, (x, sr) in signals.items()}
    top = max(float(s.max()) for s, _, _ in specs.values())
    fig = Figure(figsize=(FIG_WIDTH_IN, TITLE_HEIGHT_IN + PANEL_HEIGHT_IN * len(specs)), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, (spec, seconds, sr)) in zip(axes, specs.items()):
        image = ax.imshow(spec - top, origin="lower", aspect="auto", cmap="magma", vmin=-DYNAMIC_RANGE_DB, vmax=0.0,
                          extent=(0.0, seconds, 0.0, sr / 2000.0), interpolation="nearest")
        ax.set_ylabel("frequency (kHz)")
        ax.set_title(label, loc="left", fontsize="medium")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="power (dB re. loudest bin)", pad=0.01)
    if title:
        fig.suptitle(title)
    path_png = Path(path_png)
    with atomic_output(path_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path_png


def plot_spectrogram_files(path_png: str | Path, files: Mapping[str, str | Path], title: str | None = None) -> Path:
    """``plot_spectrograms`` of audio files ({label: path}), e.g. a noisy input and its enhanced output."""
    check_plotting_available()
    signals = {}
    for label, path in files.items():
        audio, sr = read_audio(path)
        signals[label] = (audio, sr)
    return plot_spectrograms(path_png, signals, title=title)
