"""Real audio from ../shared/data for tests (never packaged).

A bare clone has no such folder: then every test that needs it skips, with ``MISSING_DATA`` as its
reason, by one of two routes: ``data_file`` (behind ``load_clip``) skips the test that asks for a
file, and conftest's collection hook skips the tests that reference a path inside the folder held
at module level (``DATA_DIR``, ``DEV_EVAL``...) or run a script that imports this module. A file
missing from a folder that is there stays an error, and where ``$DFNET4_SDK_REQUIRE_DATA`` is set
(CI, which has the folder) a missing folder is an error too: nothing there skips silently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dfnet4_sdk.shared_data import (
    REQUIRE_ENV_VAR,
    missing_data_reason,
    shared_data_dir,
    shared_data_present,
    shared_data_required,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = shared_data_dir()
MISSING_DATA = missing_data_reason(DATA_DIR)


def data_present() -> bool:
    return shared_data_present(DATA_DIR)


def data_file(relative: str) -> Path:
    """A file of the shared data set: skips the test (or the module, when called at import) if the
    whole folder is absent; a missing file in a folder that is there is an error, never a skip."""
    if not data_present():
        if shared_data_required():
            raise FileNotFoundError(f"{REQUIRE_ENV_VAR} is set, but the test {MISSING_DATA}")
        pytest.skip(MISSING_DATA, allow_module_level=True)
    path = DATA_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"test audio {path} is missing from {DATA_DIR}, which is there: restore the file")
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
