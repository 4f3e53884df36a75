"""DNSMOS (Reddy et al.), non-intrusive speech quality: P.835 (SIG, BAK, OVRL) and P.808 scores
of a signal at any rate, with the two ONNX models that ``speechmos`` ships, run with onnxruntime
(speechmos's own code needs librosa and is never imported; nothing is downloaded):

- ``speechmos/dnsmos_models/sig_bak_ovr.onnx``: DNSMOS P.835, raw 16 kHz audio in 9.01 s
  segments, scores mapped by the non-personalised polynomials of Microsoft's DNS-Challenge
  ``dnsmos_local.py``;
- ``speechmos/dnsmos_models/model_v8.onnx``: DNSMOS P.808 on a 120-band log-mel spectrogram
  (computed here in numpy as librosa 0.9.1 did: n_fft 321, hop 160, Hann, zero padding,
  Slaney mel, ``power_to_db(ref=max)``, ``(db + 40) / 40``).

The packages come with the ``[eval]`` extra; ``require_eval_package`` imports one or raises a
typed error naming the extra (``dfnet4_sdk.evaluation`` uses it for PESQ and STOI too).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
from pathlib import Path

import numpy as np

from dfnet4_sdk.audio_io import resample, to_mono
from dfnet4_sdk.errors import AudioInputError, BackendNotAvailableError

log = logging.getLogger(__name__)

EVAL_EXTRA_HINT = 'pip install "dfnet4-sdk[eval]"'
DNSMOS_RATE_HZ = 16000
DNSMOS_SEGMENT_S = 9.01  # the models' input length; audio is tiled up to it, then hopped by 1 s
DNSMOS_MODELS = {  # file in speechmos/dnsmos_models -> sha256 of the copy this code was checked on
    "sig_bak_ovr.onnx": "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
    "model_v8.onnx": "9246480c58567bc6affd4200938e77eef49468c8bc7ed3776d109c07456f6e91",
}
# DNS-Challenge dnsmos_local.py, is_personalized_MOS=False: raw P.835 outputs -> MOS
_P835_POLY = {
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}
_MEL_N_FFT, _MEL_HOP, _MEL_BANDS = 321, 160, 120  # P.808 front-end: 900 frames x 120 bands per segment


def require_eval_package(module: str, what: str):
    """Import an optional metric package or raise a typed error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendNotAvailableError(
            f"{what} needs the Python package {module!r}, which is not installed ({e}); "
            f"install the evaluation extra: {EVAL_EXTRA_HINT}"
        ) from e


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:  # Slaney: linear below 1 kHz, logarithmic above
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), hz * 3.0 / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def _mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] Slaney-normalised triangles, as librosa.filters.mel."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    ramps = np.subtract.outer(mel_hz, fft_hz)
    widths = np.diff(mel_hz)
    lower, upper = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class Dnsmos:
    """DNSMOS P.835 + P.808 with onnxruntime sessions loaded once (see the module docstring)."""

    def __init__(self, num_threads: int = 0):
        ort = require_eval_package("onnxruntime", "DNSMOS")
        require_eval_package("speechmos", "DNSMOS (its ONNX models)")
        folder = Path(importlib.util.find_spec("speechmos").submodule_search_locations[0]) / "dnsmos_models"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        sessions = {}
        for name, sha in DNSMOS_MODELS.items():
            path = folder / name
            if not path.is_file():
                raise BackendNotAvailableError(f"DNSMOS model {path} is missing; reinstall speechmos: {EVAL_EXTRA_HINT}")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                log.warning("DNSMOS model %s differs from the copy this SDK was checked on (sha256 %s)", path, sha)
            sessions[name] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self._p835, self._p808 = sessions["sig_bak_ovr.onnx"], sessions["model_v8.onnx"]
        self._mel = _mel_filterbank(DNSMOS_RATE_HZ, _MEL_N_FFT, _MEL_BANDS)
        n = np.arange(_MEL_N_FFT)
        self._window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / _MEL_N_FFT)).astype(np.float32)  # periodic Hann

    def _segments(self, audio: np.ndarray) -> np.ndarray:
        """[S, 144160] 9.01 s segments hopped by 1 s, exactly as dnsmos_local.py cuts them."""
        fs, seg_len = DNSMOS_RATE_HZ, int(DNSMOS_SEGMENT_S * DNSMOS_RATE_HZ)
        while len(audio) < seg_len:
            audio = np.append(audio, audio)
        num_hops = int(np.floor(len(audio) / fs) - DNSMOS_SEGMENT_S) + 1
        segs = [audio[int(i * fs) : int((i + DNSMOS_SEGMENT_S) * fs)] for i in range(num_hops)]
        return np.stack([s for s in segs if len(s) == seg_len]).astype(np.float32)

    def _log_mel(self, segments: np.ndarray) -> np.ndarray:
        """[S, 900, 120] P.808 features of each segment minus its last 10 ms."""
        pad = _MEL_N_FFT // 2
        y = np.pad(segments[:, :-_MEL_HOP], ((0, 0), (pad, pad)), mode="constant")
        frames = np.lib.stride_tricks.sliding_window_view(y, _MEL_N_FFT, axis=1)[:, ::_MEL_HOP]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1)) ** 2
        mel = power.astype(np.float32) @ self._mel.T
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        db -= 10.0 * np.log10(np.maximum(mel.max(axis=(1, 2), keepdims=True), 1e-10))
        db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - 80.0)
        return ((db + 40.0) / 40.0).astype(np.float32)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Scores of a whole signal (mono or downmixed), means over its segments."""
        audio = resample(to_mono(audio), sample_rate, DNSMOS_RATE_HZ)
        if len(audio) == 0 or not np.any(audio):
            raise AudioInputError("DNSMOS needs a non-empty, non-silent signal")
        segs = self._segments(audio)
        raw = self._p835.run(None, {"input_1": segs})[0]  # [S, 3]: sig, bak, ovrl
        p808 = self._p808.run(None, {"input_1": self._log_mel(segs)})[0][:, 0]
        scores = {k: float(np.mean(_P835_POLY[k](raw[:, i]))) for i, k in enumerate(("sig", "bak", "ovrl"))}
        scores["p808"] = float(np.mean(p808))
        return scores


@functools.lru_cache(maxsize=1)
def _shared_dnsmos() -> Dnsmos:
    return Dnsmos()


def dnsmos(audio: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS of ``audio`` at any rate: {"sig", "bak", "ovrl", "p808"} (MOS, 1..5)."""
    return _shared_dnsmos()(audio, sr)
