"""The real clip every conformance cell streams."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from dfnet4_sdk.audio_io import read_audio, resample

DATA_DIR = Path(os.environ.get("DFNET4_SDK_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CLIP = "noisy_real/dns5_blind_street_48k.flac"  # real noisy speech, CC BY 4.0 (DNS5 blind test)


def load_clip(sample_rate: int, seconds: float, offset_s: float = 0.0) -> np.ndarray:
    path = DATA_DIR / CLIP
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the shared data folder must sit beside the repo")
    audio, sr = read_audio(path)
    audio = resample(audio.mean(axis=1), sr, sample_rate)
    start = int(offset_s * sample_rate)
    return np.ascontiguousarray(audio[start : start + int(seconds * sample_rate)])
