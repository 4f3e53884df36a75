"""Reading, validating, resampling and atomically writing audio."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from dfnet4_sdk.errors import AudioFileError, AudioInputError, ConfigError, PathError

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
    with open_audio(path) as f:
        try:
            audio = f.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as e:
            raise AudioFileError(f"cannot read {path} as audio ({e})") from e
        sample_rate = f.samplerate
    if audio.shape[0] == 0:
        raise AudioInputError(f"{path} contains no samples")
    return to_float32(audio, what=str(path)), int(sample_rate)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """float32 ``[samples]``: the channels of ``[samples, channels]`` averaged, ``[samples]`` as is."""
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def read_mono(path: str | Path, sample_rate: int | None = None, seconds: float | None = None) -> tuple[np.ndarray, int]:
    """``read_audio``'s channels averaged to float32 ``[samples]``, resampled to ``sample_rate``
    (None: the file's) and cut to its first ``seconds`` (None: all); returns (audio, rate)."""
    audio, rate = read_audio(path)
    audio = to_mono(audio)
    if sample_rate is not None and rate != sample_rate:
        audio, rate = resample(audio, rate, sample_rate), sample_rate
    if seconds is not None:
        audio = audio[: int(seconds * rate)]
    return np.ascontiguousarray(audio, dtype=np.float32), rate


def open_audio(path: str | Path) -> sf.SoundFile:
    """An audio file opened for reading (in blocks: ``f.read(frames, dtype="float32", always_2d=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise PathError(f"input file {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(
            f"cannot read {path} as audio ({e}); supported formats: {', '.join(sorted(sf.available_formats()))}"
        ) from e


def audio_format(path: str | Path) -> str:
    """soundfile's format name for a file name: "WAV" for x.wav."""
    return Path(path).suffix.lstrip(".").upper()


def check_output_path(path: str | Path, overwrite: bool) -> Path:
    """Fail before any work when the output exists (unless overwrite), is a directory, lies in a
    directory that does not exist, or has a format soundfile cannot write with a header.
    (Writability, the sample rate and the sample format are checked by ``open_output``.)"""
    path = Path(path)
    problems = []
    if path.is_dir():
        problems.append(f"output {path} is a directory; give a file name such as {path / 'enhanced.wav'}")
    elif path.exists() and not overwrite:
        problems.append(f"output {path} exists; pass --overwrite to replace it")
    fmt = audio_format(path)
    if fmt == "RAW":
        problems.append(f"cannot write {path}: headerless .raw audio cannot be read back without its rate and "
                        "sample format; use .wav or .flac")
    elif fmt not in sf.available_formats():
        problems.append(f"cannot write {path}: unknown audio format {path.suffix!r}; use .wav or .flac")
    if not path.parent.is_dir():
        problems.append(f"output directory {path.parent} does not exist; create it first")
    if problems:
        raise PathError("; ".join(problems))
    return path


_WIDE_SUBTYPES = ("FLOAT", "DOUBLE", "PCM_32", "PCM_24")
_BYTES_PER_SAMPLE = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


def output_subtype(path: str | Path, input_subtype: str | None, requested: str | None = None) -> str:
    """The sample format to write ``path`` in: ``requested`` if given (validated), else the input's
    when the output format takes it (float stays float, 24-bit stays 24-bit), else the widest PCM
    the format takes for wide input, else the format's default."""
    fmt = audio_format(path)
    if requested is not None:
        requested = requested.upper()
        if not sf.check_format(fmt, requested):
            raise ConfigError(
                f"--subtype {requested} cannot be written as {fmt} ({Path(path).name}); "
                f"{fmt} takes: {', '.join(sf.available_subtypes(fmt))}"
            )
        return requested
    candidates = [input_subtype] + (["PCM_24", "PCM_16"] if input_subtype in _WIDE_SUBTYPES else [])
    return next((c for c in candidates if c and sf.check_format(fmt, c)), sf.default_subtype(fmt))


def clip_to_format(audio: np.ndarray, subtype: str) -> tuple[np.ndarray, int]:
    """Samples beyond full scale clipped when ``subtype`` cannot hold them (every format but
    float; integer PCM would wrap around), and how many were."""
    if subtype in ("FLOAT", "DOUBLE"):
        return audio, 0
    clipped = int(np.count_nonzero(np.abs(audio) > 1.0))
    return (np.clip(audio, -1.0, 1.0) if clipped else audio), clipped


def check_free_space(path: str | Path, frames: int, channels: int, subtype: str) -> None:
    """Fail before any work when an uncompressed output clearly cannot fit on its disk."""
    path = Path(path)
    if subtype not in _BYTES_PER_SAMPLE or audio_format(path) in ("FLAC", "OGG", "MP3"):
        return  # compressed: the size is not known in advance
    need = frames * channels * _BYTES_PER_SAMPLE[subtype]
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise AudioFileError(
            f"not enough disk space for {path}: it needs about {need / 1e6:.0f} MB, {path.parent} has "
            f"{free / 1e6:.0f} MB free; free some space or write elsewhere"
        )


def open_output(tmp: str | Path, path: str | Path, sample_rate: int, channels: int, subtype: str) -> sf.SoundFile:
    """``tmp`` opened for writing audio in ``path``'s format; fails (before any work, when called
    early) if the format cannot hold this rate, channel count or sample format."""
    fmt = audio_format(path)
    try:
        return sf.SoundFile(str(tmp), "w", samplerate=sample_rate, channels=channels, subtype=subtype, format=fmt)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise PathError(
            f"cannot write {path} as {fmt} {subtype} at {sample_rate} Hz with {channels} channel(s): {e}"
        ) from e


def new_file_mode(path: str | Path, directory: bool = False) -> int:
    """The mode a new file (or ``directory``) at ``path`` gets: the mode of the one it replaces,
    else 0666 (0777) less the umask, as ``open`` (``mkdir``) would give it. For files written
    through a private temporary (``mkstemp``/``mkdtemp`` make them 0600/0700) and renamed into place."""
    with contextlib.suppress(OSError):
        return stat.S_IMODE(os.stat(path).st_mode)
    return (0o777 if directory else 0o666) & ~_umask()


def _umask() -> int:
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success, so an
    error, Ctrl-C or SIGTERM (see the CLI) never leaves a half-written file. The file gets the
    mode of the file it replaces, else the umask's (as ``open`` would give it)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    except OSError as e:
        raise PathError(f"cannot write in {path.parent}: {e.strerror}; choose a writable directory") from e
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
