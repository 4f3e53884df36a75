"""Reading, validating, resampling and atomically writing audio."""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from dfnet4_sdk.errors import AudioFileError, AudioInputError

_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}


def to_float32(audio: np.ndarray, what: str = "audio") -> np.ndarray:
    """Convert int16/int32/float64 samples to float32 in [-1, 1] and reject NaN/Inf."""
    audio = np.asarray(audio)
    if audio.dtype in _INT_SCALE:
        audio = audio.astype(np.float32) / np.float32(_INT_SCALE[audio.dtype])
    elif audio.dtype.kind == "f":
        audio = audio.astype(np.float32, copy=False)
    else:
        raise AudioInputError(f"{what} has dtype {audio.dtype}; expected float32/float64 or int16/int32 PCM samples")
    if audio.ndim > 2:
        raise AudioInputError(f"{what} has shape {audio.shape}; expected [samples] or [samples, channels]")
    # One dot product (BLAS, the fastest full pass numpy has: this runs on every streamed chunk)
    # decides the common case; the element-wise scan runs only when the sum of squares is not
    # finite (a NaN/Inf sample, or samples beyond ~1e19 whose squares overflow: then no error).
    flat = audio.reshape(-1)
    if math.isfinite(float(flat.dot(flat))):
        return audio
    bad = ~np.isfinite(audio)
    if bad.any():
        first = int(np.argwhere(bad)[0][0])
        raise AudioInputError(
            f"{what} contains {int(bad.sum())} NaN/Inf samples (first at sample {first}); "
            "enhancement would output NaN. Clean the input first, e.g. np.nan_to_num(audio)"
        )
    return audio


def resample(audio: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """High-quality resampling along axis 0 (soxr); a no-op when the rates match."""
    if from_hz == to_hz or audio.shape[0] == 0:
        return audio
    return soxr.resample(audio, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Read any format soundfile supports as float32 [samples, channels]."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"input file {path} does not exist")
    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(
            f"cannot read {path} as audio ({e}); supported formats: {', '.join(sorted(sf.available_formats()))}"
        ) from e
    if audio.shape[0] == 0:
        raise AudioInputError(f"{path} contains no samples")
    return to_float32(audio, what=str(path)), int(sample_rate)


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Fail before any work when the output exists (unless overwrite) or has an unknown format."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise AudioFileError(f"output {path} exists; pass --overwrite to replace it")
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        raise AudioFileError(f"cannot write {path}: unknown audio format {path.suffix!r}; use .wav or .flac")
    if not path.parent.exists():
        raise AudioFileError(f"output directory {path.parent} does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success, so an
    error or Ctrl-C never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str | None = None) -> None:
    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    subtype = subtype or sf.default_subtype(fmt)
    if not subtype.startswith(("FLOAT", "DOUBLE")):
        audio = np.clip(audio, -1.0, 1.0)  # integer PCM would wrap around, not clip
    with atomic_output(path) as tmp:
        sf.write(str(tmp), audio, sample_rate, subtype=subtype, format=path.suffix.lstrip(".").upper())
