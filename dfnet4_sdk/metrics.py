"""Signal comparison metrics (numpy only)."""

from __future__ import annotations

import numpy as np


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """SNR of ``estimate`` against ``reference``: 10 log10(|ref|^2 / |ref - est|^2)."""
    reference = np.asarray(reference, dtype=np.float64)
    err = np.sum((reference - np.asarray(estimate, dtype=np.float64)) ** 2)
    sig = np.sum(reference**2)
    if err == 0:
        return float("inf")
    return float(10.0 * np.log10(sig / err))


def estimate_delay(reference: np.ndarray, estimate: np.ndarray, max_lag_samples: int) -> int:
    """Lag (samples) by which ``estimate`` trails ``reference``, by FFT cross-correlation,
    searched in [-max_lag_samples, max_lag_samples]."""
    n = len(reference) + len(estimate)
    size = 1 << (n - 1).bit_length()
    xc = np.fft.irfft(np.fft.rfft(estimate, size) * np.conj(np.fft.rfft(reference, size)), size)
    lags = np.concatenate([np.arange(0, max_lag_samples + 1), np.arange(-max_lag_samples, 0)])
    values = np.concatenate([xc[: max_lag_samples + 1], xc[size - max_lag_samples :]])
    return int(lags[np.argmax(values)])


def align(reference: np.ndarray, estimate: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``estimate`` back by ``lag`` and trim both to the common length."""
    if lag > 0:
        estimate = estimate[lag:]
    elif lag < 0:
        reference = reference[-lag:]
    n = min(len(reference), len(estimate))
    return reference[:n], estimate[:n]
