"""Real audio from ../shared/data for tests (never packaged)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("DFNET4_SDK_DATA", REPO_ROOT.parent / "shared" / "data"))


def data_file(relative: str) -> Path:
    """A file of the shared data set; a missing file is an error, never a skip."""
    path = DATA_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"test audio {path} is missing: the shared data folder must sit beside the repo")
    return path


def load_clip(relative: str, sample_rate: int = 48000, seconds: float | None = None, offset_s: float = 0.0) -> np.ndarray:
    """Mono float32 audio at ``sample_rate`` (soxr-resampled), optionally cut."""
    import soxr

    audio, sr = sf.read(str(data_file(relative)), dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != sample_rate:
        audio = soxr.resample(audio, sr, sample_rate).astype(np.float32)
    start = int(offset_s * sample_rate)
    end = None if seconds is None else start + int(seconds * sample_rate)
    return np.ascontiguousarray(audio[start:end])


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """speech + noise scaled to ``snr_db`` (noise tiled/cut to the speech length)."""
    reps = int(np.ceil(len(speech) / len(noise)))
    noise = np.tile(noise, reps)[: len(speech)]
    gain = np.sqrt(np.sum(speech**2) / (np.sum(noise**2) * 10 ** (snr_db / 10)))
    return (speech + gain * noise).astype(np.float32)
