"""Files in, files out: ``enhance_file`` streams a file from disk to disk in blocks.

Memory stays flat in the file's length: the input is read a block at a time, resampled to
the model rate and back on the fly (soxr streams, the same samples as resampling the whole
signal), enhanced by the offline path's ``OfflineStream`` (the block graphs) or, without
block graphs or when libDF's gating acts, by a stream (then the file is read again from the
start, as ``Runtime.enhance`` would also have streamed it), and written as it comes. The
output equals ``Runtime.enhance`` on the whole file.

Everything that can be checked before the work is: the output path, its format, sample
format and directory (the output file is opened before the model is loaded), and disk space.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import soundfile as sf
import soxr

from dfnet4_sdk.audio_io import (
    atomic_output,
    check_free_space,
    check_output_path,
    clip_to_format,
    open_audio,
    open_output,
    output_subtype,
    to_float32,
)
from dfnet4_sdk.errors import AudioFileError, AudioInputError, PathError
from dfnet4_sdk.offline import OfflineStream, StageSkipped
from dfnet4_sdk.runtime import Runtime

BLOCK_SECONDS = 10.0  # read and write this much audio at a time (about 2 MB per 48 kHz channel)


def enhance_file(
    input_path: str | Path,
    output_path: str | Path,
    runtime: Runtime | Callable[[], Runtime],
    overwrite: bool = False,
    progress_factory: Callable[[int], Any] | None = None,
    subtype: str | None = None,
    block_seconds: float = BLOCK_SECONDS,
) -> dict[str, Any]:
    """Enhance ``input_path`` into ``output_path`` (written atomically, in the input's sample
    format unless ``subtype`` says otherwise), a block at a time. ``runtime`` is a ``Runtime``
    or a factory for one, called only once the input and output have been checked.
    ``progress_factory(total_frames)`` returns a bar with ``update(frames)``, ``reset()`` and
    ``close()`` (tqdm's). Returns a summary: runtime, paths, sample rate, channels, seconds,
    subtype, clipped_samples (beyond full scale, clipped by an integer sample format) and path
    ("offline" or "streaming")."""
    output_path = check_output_path(output_path, overwrite)
    with open_audio(input_path) as src:
        if src.frames == 0:
            raise AudioInputError(f"{input_path} contains no samples")
        rate, channels = src.samplerate, src.channels
        out_subtype = output_subtype(output_path, src.subtype, subtype)
        block = max(1, int(block_seconds * rate))
        if src.subtype in ("FLOAT", "DOUBLE"):
            _check_finite(src, block)  # before any work: only float files can hold NaN/Inf
        with atomic_output(output_path) as tmp:
            open_output(tmp, output_path, rate, channels, out_subtype).close()  # fails now, not after the work
            check_free_space(output_path, src.frames, channels, out_subtype)
            rt = runtime if isinstance(runtime, Runtime) else runtime()
            offline = bool(rt.manifest.block_graphs)
            bar = progress_factory(src.frames) if progress_factory else None
            try:
                try:
                    clipped = _write_enhanced(rt, src, tmp, output_path, out_subtype, block, offline, bar)
                except StageSkipped:  # gating acts somewhere: stream the file, as enhance() would
                    offline = False
                    if bar is not None:
                        bar.reset()
                    clipped = _write_enhanced(rt, src, tmp, output_path, out_subtype, block, offline, bar)
            finally:
                if bar is not None:
                    bar.close()
        frames = src.frames
    return {
        "runtime": rt,
        "input": str(input_path),
        "output": str(output_path),
        "sample_rate": rate,
        "channels": channels,
        "seconds": frames / rate,
        "subtype": out_subtype,
        "clipped_samples": clipped,
        "path": "offline" if offline else "streaming",
    }


def _check_finite(src, block: int) -> None:
    """Read ``src`` through once: ``AudioInputError`` at the first block holding NaN/Inf."""
    for start in range(0, src.frames, block):
        to_float32(src.read(block, dtype="float32", always_2d=True), what=f"{src.name} (block from sample {start})")
    src.seek(0)


def _write_enhanced(rt, src, tmp: Path, output_path: Path, subtype: str, block: int, offline: bool, bar) -> int:
    """One pass over ``src`` from its start into ``tmp``; returns the count of clipped samples."""
    src.seek(0)
    blocks = BlockEnhancer(rt, src.samplerate, src.channels, offline)
    clipped = 0
    with open_output(tmp, output_path, src.samplerate, src.channels, subtype) as dst:
        start = 0
        while True:
            try:
                x = src.read(block, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as e:
                raise AudioFileError(f"cannot read {src.name} after sample {start}: {e}") from e
            if len(x) == 0:
                break
            clipped += _write(dst, blocks.process(to_float32(x, what=f"{src.name} (block from sample {start})")),
                              subtype, output_path)
            start += len(x)
            if bar is not None:
                bar.update(len(x))
        clipped += _write(dst, blocks.finish(), subtype, output_path)
    return clipped


def _write(dst, y: np.ndarray, subtype: str, output_path: Path) -> int:
    """Write a block (clipped when the sample format must); returns how many samples were clipped."""
    y, clipped = clip_to_format(y, subtype)
    try:
        dst.write(y)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:  # a full disk, a vanished directory
        raise AudioFileError(f"failed writing {output_path}: {e}; nothing was written (check the free space)") from e
    return clipped


class BlockEnhancer:
    """A signal [N, C] at ``sample_rate`` given in blocks -> the enhanced signal, the same as
    ``Runtime.enhance`` on the whole of it: resampled to the model rate and back by soxr streams,
    and in between each channel through an ``OfflineStream`` (``offline``) or one stream of
    ``runtime.clone()``. ``process`` returns what is ready; after ``finish``, as many samples as
    were given. With ``offline``, both raise ``StageSkipped`` when gating acts."""

    def __init__(self, runtime, sample_rate: int, channels: int, offline: bool):
        model_rate = runtime.sample_rate
        self.channels = channels
        self.resample_in = self.resample_out = None
        if sample_rate != model_rate:
            self.resample_in = soxr.ResampleStream(sample_rate, model_rate, channels, dtype="float32", quality="HQ")
            self.resample_out = soxr.ResampleStream(model_rate, sample_rate, channels, dtype="float32", quality="HQ")
        if offline:
            self.offline = [OfflineStream(runtime.backend, runtime.options, runtime.offline_threads) for _ in range(channels)]
            self.waiting = [np.zeros(0, np.float32) for _ in range(channels)]  # channels run ahead of each other
        else:
            self.offline = None
            self.stream = runtime.clone()
            self.stream.input_sample_rate = model_rate  # the resampling is done here
        self.samples_in = self.samples_out = 0

    def process(self, x: np.ndarray) -> np.ndarray:
        self.samples_in += len(x)
        if self.resample_in is not None:
            x = self.resample_in.resample_chunk(x)
        return self._out(self._enhance(x, last=False), last=False)

    def finish(self) -> np.ndarray:
        x = np.zeros((0, self.channels), np.float32)
        if self.resample_in is not None:
            x = self.resample_in.resample_chunk(x, last=True)
        y = self._out(self._enhance(x, last=True), last=True)
        owed = self.samples_in - self.samples_out  # resampling can be a sample or two short
        self.samples_out += owed
        return np.concatenate([y, np.zeros((owed, self.channels), np.float32)])

    def _enhance(self, x: np.ndarray, last: bool) -> np.ndarray:
        """Model-rate [n, C] in -> the enhanced model-rate samples ready in every channel."""
        if self.offline is None:
            y = self.stream.process(x)
            return np.concatenate([y, self.stream.flush()]) if last else y
        for c, stream in enumerate(self.offline):
            y = stream.process(np.ascontiguousarray(x[:, c]))
            self.waiting[c] = np.concatenate([self.waiting[c], y, stream.finish() if last else y[:0]])
        n = min(len(w) for w in self.waiting)
        y = np.stack([w[:n] for w in self.waiting], axis=1)
        self.waiting = [w[n:] for w in self.waiting]
        return y

    def _out(self, y: np.ndarray, last: bool) -> np.ndarray:
        if self.resample_out is not None:
            y = self.resample_out.resample_chunk(y, last=last)
        y = y[: self.samples_in - self.samples_out]
        self.samples_out += len(y)
        return y


def default_output_path(input_path: str | Path) -> Path:
    """Where `dfsdk run INPUT` writes without -o: ``INPUT_enhanced.<ext>`` beside the input
    (``.wav`` when the input has no extension)."""
    input_path = Path(input_path)
    return input_path.with_name(f"{input_path.stem}_enhanced{input_path.suffix or '.wav'}")


def check_new_file(path: str | Path, suffix: str, what: str) -> Path:
    """Fail before any work when ``path`` cannot be written as a new ``suffix`` file: wrong
    extension, directory missing or not writable."""
    path = Path(path)
    problems = []
    if path.suffix.lower() != suffix:
        problems.append(f"{what} {path} must end in {suffix}")
    if path.is_dir():
        problems.append(f"{what} {path} is a directory; give a file name")
    if not path.parent.is_dir():
        problems.append(f"{what} directory {path.parent} does not exist; create it first")
    else:
        try:
            tempfile.TemporaryFile(dir=path.parent).close()
        except OSError as e:
            problems.append(f"cannot write {what} in {path.parent}: {e.strerror}")
    if problems:
        raise PathError("; ".join(problems))
    return path


def check_output_dir(path: str | Path, overwrite: bool | None, what: str = "output") -> Path:
    """Fail before any work when directory ``path`` cannot be written: it is a file, it exists and
    ``overwrite`` is False (None: an existing directory is fine, files are added to it), or the
    directory it is in (or itself, when it exists) does not exist or is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{what} {path} exists and is not a directory; choose a directory name")
    if path.exists() and overwrite is False:
        raise PathError(f"{what} {path} exists; pass --overwrite to replace it")
    where = path if path.is_dir() else path.parent
    if not where.is_dir():
        raise PathError(f"{what} {path}: directory {where} does not exist; create it first")
    try:
        tempfile.TemporaryFile(dir=where).close()
    except OSError as e:
        raise PathError(f"cannot write {what} {path}: {where} is not writable ({e.strerror})") from e
    return path
