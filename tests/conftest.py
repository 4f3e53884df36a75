"""Shared fixtures: an isolated model cache, the DFN3 model, real clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
from audio_data import load_clip, mix_at_snr


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory):
    """Imported models are cached per test session, never in the user's home."""
    os.environ["DFNET4_SDK_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def dfn3():
    from dfnet4_sdk.models import load_model

    return load_model("dfn3")


@pytest.fixture(scope="session")
def noisy_real_48k() -> np.ndarray:
    """10 s real noisy street recording (DNS5 blind test, CC BY 4.0)."""
    return load_clip("noisy_real/dns5_blind_street_48k.flac")


@pytest.fixture(scope="session")
def speech_mix_48k() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): VCTK p286 speech at 48 kHz with city noise at 5 dB SNR."""
    clean = load_clip("speech/vctk_p286_011_48k.flac")
    noise = load_clip("noise/blanket_city_00.flac", seconds=10.0)
    return clean, mix_at_snr(clean, noise, 5.0)
