"""``Runtime``: the public streaming API over any backend.

    rt = Runtime()                       # default model, best available backend
    out = rt.process(chunk)              # any chunk length; mono [N] or multi-channel [N, C]
    out = np.concatenate([out, rt.flush()])  # total output length == total input length
    clean = rt.enhance(audio, sample_rate)   # whole signal at any sample rate

One loaded model (the backend) is shared by one ``EnhancementStream`` per channel; the
stream owns all state. Output is delay-compensated and aligned with the input.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import numbers
import os
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dfnet4_sdk.audio_io import resample, to_float32
from dfnet4_sdk.errors import AudioInputError, ConfigError, ModelNotAvailableError
from dfnet4_sdk.stream import EnhancementStream, StreamOptions

log = logging.getLogger(__name__)


def _resolve_backend(model: Any, backend: str | None, num_threads: int):
    """A bundle runs on the backend it was exported for; anything else is a PyTorch model,
    run by the torch backend or exported once for the named backend and cached."""
    from dfnet4_sdk.bundle import Bundle, is_bundle
    from dfnet4_sdk.runtimes import load_backend
    from dfnet4_sdk.shipped import DEFAULT_MODEL, RUNTIME_PACKAGES, shipped_model

    model = DEFAULT_MODEL if model is None else model
    shipped = shipped_model(model)
    prebuilt = shipped.bundle_for(backend) if shipped is not None else None
    if prebuilt is not None:
        # A bundle packaged with the SDK: no torch, no export on first use.
        return load_backend(prebuilt.backend, Bundle.load(prebuilt.path), num_threads=num_threads)
    if shipped is not None and backend is None and importlib.util.find_spec("torch") is None:
        raise ModelNotAvailableError(
            f"model {model!r} ships as a {', '.join(f'{b.backend} {b.precision}' for b in shipped.bundles)} bundle, "
            f"but its runtime is not installed here: pip install {', '.join(RUNTIME_PACKAGES[b.backend] for b in shipped.bundles)}"
            " where it has wheels, or install the torch extra to export the model for onnxruntime"
        )
    if isinstance(model, Bundle) or (isinstance(model, (str, Path)) and is_bundle(model)):
        bundle = model if isinstance(model, Bundle) else Bundle.load(model)
        target = bundle.manifest.backend
        if backend not in (None, target):
            raise ConfigError(
                f"bundle {bundle.root} was exported for {target!r}, not {backend!r}; "
                f"export one with `dfsdk export --model MODEL --target {backend} -o DIR`"
            )
        return load_backend(target, bundle, num_threads=num_threads)
    if isinstance(model, (str, Path)) and Path(model).is_dir() and not any(Path(model).rglob("config.ini")):
        from dfnet4_sdk.errors import BundleError

        raise BundleError(f"no manifest.json in {model}; expected a bundle directory written by `dfsdk export` "
                          "(or an official DeepFilterNet3 export directory, with config.ini)")
    if importlib.util.find_spec("torch") is None:
        raise ModelNotAvailableError(
            f"model {model!r} is not a bundle and needs PyTorch to load: install the torch extra "
            "(pip install 'dfnet4-sdk[torch]'), or run the default model or an exported bundle, which need no torch"
        )
    from dfnet4_sdk.models import load_model

    torch_model = load_model(model)
    if backend == "torch":
        return load_backend("torch", torch_model, num_threads=num_threads)
    from dfnet4_sdk.exporters.cache import cached_export

    if backend is None:
        # Best available: onnxruntime runs the fused frame graph several times faster than eager
        # PyTorch; the export happens once per model and is cached (exporting also needs onnx).
        if not _onnx_available() or importlib.util.find_spec("onnx") is None:
            return load_backend("torch", torch_model, num_threads=num_threads)
        backend = "onnx"
    return load_backend(backend, cached_export(torch_model, backend), num_threads=num_threads)


def _onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


class Runtime:
    """Streaming speech enhancement.

    Threads: a ``Runtime`` is one stream (one per channel). Its ``process``, ``flush`` and
    ``reset`` take a lock, so calls from several threads never corrupt memory, but they feed
    that one stream in whatever order the threads arrive: for parallel streams give each
    thread its own ``clone()`` (same loaded model, own state; clones run in parallel on every
    backend). ``enhance`` never touches the stream (a stream in progress continues exactly as
    if it had not been called) and may run in any thread, alongside ``process`` or another
    ``enhance``.

    Args:
        model: a model name (a shipped model such as "dfnet4-mix-v2" or "dfn3"; `dfsdk models`
            lists them), a DfNet4 preset, a checkpoint, a DFN3 archive, a bundle directory,
            or an ``EnhancementModel``; None for the default (``dfnet4_sdk.shipped.DEFAULT_MODEL``,
            chosen by measurement: docs/MODEL_CARD.md).
        backend: "torch", "onnx", "tflite" or "coreml". None: a shipped model runs its packaged
            bundle (DFN3: LiteRT; no torch, no export), a bundle its own backend, anything else the
            best available: exported once for onnxruntime and cached, else eager torch.
        atten_lim_db: maximum attenuation in dB (100 = unlimited), as libDF.
        post_filter_beta: libDF's post-filter strength (0 = off, 0.02 = upstream's choice).
        min_db_thresh, max_db_erb_thresh, max_db_df_thresh: libDF's local-SNR gating.
        skip_silent_hops: output zeros for digitally silent hops without touching state (libDF).
        num_threads: intra-op threads of the backend (1 to ``MAX_THREADS``).
        offline_threads: threads ``enhance`` spreads the block graphs of its offline path over:
            with 2, the deep-filter decoder and the synthesis of one block run while the encoder
            works on the next (the numbers are identical; only the time changes). None: 2 when
            the machine has two cores, else 1. Independent of ``num_threads``, which these small
            graphs barely use (BENCHMARKS.md). At most ``MAX_THREADS``.
        input_sample_rate: the rate of the chunks given to ``process`` (default: the model's);
            other rates are resampled in and out on the fly (soxr, delay-compensated).
    """

    def __init__(
        self,
        model: Any = None,
        backend: str | None = None,
        *,
        atten_lim_db: float = 100.0,
        post_filter_beta: float = 0.0,
        min_db_thresh: float = -15.0,
        max_db_erb_thresh: float = 35.0,
        max_db_df_thresh: float = 35.0,
        skip_silent_hops: bool = True,
        num_threads: int = 1,
        offline_threads: int | None = None,
        input_sample_rate: int | None = None,
    ):
        if offline_threads is None:
            offline_threads = min(2, os.cpu_count() or 1)
        problems = [p for p in (_thread_problem("num_threads", num_threads),
                                _thread_problem("offline_threads", offline_threads)) if p]
        try:
            options = StreamOptions(
                atten_lim_db=atten_lim_db,
                post_filter_beta=post_filter_beta,
                min_db_thresh=min_db_thresh,
                max_db_erb_thresh=max_db_erb_thresh,
                max_db_df_thresh=max_db_df_thresh,
                skip_silent_hops=skip_silent_hops,
            )
        except ConfigError as e:
            problems.append(str(e).removeprefix("invalid stream options: "))
        if problems:
            raise ConfigError("invalid Runtime arguments: " + "; ".join(problems))
        if input_sample_rate is not None:
            _check_rate(input_sample_rate, "input_sample_rate")  # before loading anything
        self.offline_threads = int(offline_threads)
        self.options = options
        self.backend = _resolve_backend(model, backend, int(num_threads))
        self.manifest = self.backend.manifest
        rate = self.manifest.dsp.sample_rate_hz if input_sample_rate is None else input_sample_rate
        self.input_sample_rate = _check_rate(rate, "input_sample_rate")
        self._init_stream()

    def _init_stream(self) -> None:
        self._lock = threading.RLock()  # serialises process / flush / reset of this stream
        self._streams: list[_Channel] = []
        self._channel_layout: int | None = None  # None: not started; 0: mono 1-D; C: [N, C]

    def clone(self) -> "Runtime":
        """A new, independent stream over the same loaded model (for another thread or speaker):
        no state is shared, the graphs are not loaded again."""
        other = object.__new__(Runtime)
        other.options, other.backend, other.manifest = self.options, self.backend, self.manifest
        other.input_sample_rate, other.offline_threads = self.input_sample_rate, self.offline_threads
        other._init_stream()
        return other

    # -- read-only facts ---------------------------------------------------------------------
    @property
    def sample_rate(self) -> int:
        """The model's sample rate (``process`` expects ``input_sample_rate``, by default this)."""
        return self.manifest.dsp.sample_rate_hz

    @property
    def hop_size_samples(self) -> int:
        return self.manifest.dsp.hop_size_samples

    @property
    def latency_samples(self) -> int:
        """Algorithmic delay the runtime compensates (STFT overlap + look-ahead)."""
        return self.manifest.latency_samples

    @property
    def model_family(self) -> str:
        return self.manifest.model_family

    # -- streaming ---------------------------------------------------------------------------
    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Enhance the next chunk (model sample rate). Returns the samples that are ready;
        the output lags by ``latency_samples`` until ``flush``."""
        audio = _check_audio(chunk, "chunk")
        with self._lock:
            layout = 0 if audio.ndim == 1 else audio.shape[1]
            if layout == 0 and audio.size == 0 and self._channel_layout:
                layout = self._channel_layout  # an empty 1-D chunk is fine in any layout
            self._ensure_streams(layout)
            if layout == 0:
                return self._streams[0].process(audio)
            outs = [s.process(audio[:, c] if audio.ndim == 2 else audio) for c, s in enumerate(self._streams)]
            return np.stack(outs, axis=1)

    def flush(self) -> np.ndarray:
        """Return the remaining output (look-ahead pushed through with zeros) and reset."""
        with self._lock:
            if self._channel_layout is None:
                return np.zeros(0, dtype=np.float32)
            layout = self._channel_layout
            outs = [s.flush() for s in self._streams]
            self._channel_layout = None
            return outs[0] if layout == 0 else np.stack(outs, axis=1)

    def reset(self) -> None:
        """Forget every state; the next ``process`` starts a new signal."""
        with self._lock:
            for s in self._streams:
                s.reset()
            self._channel_layout = None

    def _ensure_streams(self, layout: int) -> None:
        if self._channel_layout is None:
            n = max(layout, 1)
            while len(self._streams) < n:
                self._streams.append(_Channel(self.backend, self.options, self.input_sample_rate))
            del self._streams[n:]
            for s in self._streams:
                s.reset()
            self._channel_layout = layout
        elif layout != self._channel_layout:
            raise AudioInputError(
                f"chunk has {'1-D mono' if layout == 0 else f'{layout} channels'} but this stream started with "
                f"{'1-D mono' if self._channel_layout == 0 else f'{self._channel_layout} channels'}; "
                "call reset() (or flush()) before changing the channel layout"
            )

    # -- whole signals -----------------------------------------------------------------------
    def enhance(
        self,
        audio: np.ndarray,
        sample_rate: int,
        chunk_seconds: float = 1.0,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Enhance a whole signal [N] or [N, C] at any sample rate; returns the same shape and rate.
        ``progress`` is called with the number of input samples consumed after each chunk
        (``chunk_seconds`` long, on the streaming path). A stream in progress on this runtime
        is not disturbed: ``process`` continues where it left off."""
        audio = _check_audio(audio, "audio")
        if audio.shape[0] == 0:
            raise AudioInputError("audio is empty; nothing to enhance")
        _check_rate(sample_rate)
        if not _is_number(chunk_seconds) or not (math.isfinite(chunk_seconds) and chunk_seconds > 0):
            raise ConfigError(f"chunk_seconds must be a finite number of seconds > 0 (default 1.0), got {chunk_seconds!r}")
        x = resample(audio, sample_rate, self.sample_rate)
        y = self._enhance_offline(x) if self.manifest.block_graphs else None
        if y is None:
            y = self._enhance_streaming(x, sample_rate, chunk_seconds, progress)
        elif progress is not None:
            progress(audio.shape[0])
        y = resample(y, self.sample_rate, sample_rate)
        # Resampling can be off by a sample or two; the contract is output length == input length.
        n = audio.shape[0]
        if y.shape[0] < n:
            y = np.concatenate([y, np.zeros((n - y.shape[0], *y.shape[1:]), dtype=np.float32)])
        return y[:n]

    def _enhance_offline(self, x: np.ndarray) -> np.ndarray | None:
        """Block graphs and vectorised DSP (dfnet4_sdk/offline.py): the streaming result, faster.
        None when gating would skip a stage somewhere (then the signal is streamed)."""
        from dfnet4_sdk.offline import enhance_offline

        channels = [x] if x.ndim == 1 else [x[:, c] for c in range(x.shape[1])]
        outs = [enhance_offline(self.backend, np.ascontiguousarray(ch), self.options, self.offline_threads) for ch in channels]
        if any(o is None for o in outs):
            return None
        return outs[0] if x.ndim == 1 else np.stack(outs, axis=1)

    def _enhance_streaming(self, x: np.ndarray, sample_rate: int, chunk_seconds: float, progress) -> np.ndarray:
        rt = self.clone()
        rt.input_sample_rate = self.sample_rate  # x is already at the model rate
        step = max(int(chunk_seconds * self.sample_rate), self.hop_size_samples)
        parts = []
        for start in range(0, x.shape[0], step):
            parts.append(rt.process(x[start : start + step]))
            if progress is not None:
                progress(min(x.shape[0], start + step) * sample_rate // self.sample_rate)
        parts.append(rt.flush())
        return np.concatenate(parts, axis=0)


MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ = 4000, 768000
# Thread counts beyond this only cost memory (each thread a stack; 100000 took 16 GB).
MAX_THREADS = max(64, 4 * (os.cpu_count() or 1))
# A 2-D array with more "channels" than this and than samples is taken for channels-first.
MAX_CHANNELS_FIRST_GUESS = 16


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_rate(sample_rate: object, what: str = "sample_rate") -> int:
    ok = _is_number(sample_rate) and math.isfinite(sample_rate) and float(sample_rate).is_integer()
    if not ok or not MIN_SAMPLE_RATE_HZ <= sample_rate <= MAX_SAMPLE_RATE_HZ:
        raise AudioInputError(
            f"{what} must be an integer in [{MIN_SAMPLE_RATE_HZ}, {MAX_SAMPLE_RATE_HZ}] Hz, got {sample_rate!r}"
        )
    return int(sample_rate)


def _thread_problem(name: str, value: object) -> str | None:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)) and 1 <= value <= MAX_THREADS:
        return None
    return f"{name} must be an integer from 1 to {MAX_THREADS} (this machine has {os.cpu_count()} cores), got {value!r}"


def _check_audio(audio: object, what: str) -> np.ndarray:
    """``to_float32`` plus the layout checks: [N] or [N, C], never a scalar, never channels first."""
    audio = to_float32(audio, what=what)
    if audio.ndim == 0:
        raise AudioInputError(f"{what} is a single number ({audio.item()!r}); expected an array of samples, "
                              "[N] (mono) or [N, C]: wrap one sample as np.array([x])")
    if audio.ndim == 2:
        n, c = audio.shape
        if c == 0:
            raise AudioInputError(f"{what} has shape {audio.shape}: no channels; expected [N] (mono) or [N, C] with C >= 1")
        if c > MAX_CHANNELS_FIRST_GUESS and c > n:
            raise AudioInputError(
                f"{what} has shape {audio.shape}, which would be {c} channels of {n} sample{'' if n == 1 else 's'}: this looks like "
                f"channels-first [C, N]; pass [N, C] (samples first), e.g. {what}.T, or a 1-D array for mono"
            )
    return audio


class _Channel:
    """One channel: (resampler in) -> EnhancementStream -> (resampler out). Output length after
    ``flush`` equals input length at the input rate."""

    def __init__(self, backend, options: StreamOptions, input_rate: int):
        self.stream = EnhancementStream(backend, options)
        self.input_rate = input_rate
        self.model_rate = backend.manifest.dsp.sample_rate_hz
        self.reset()

    def reset(self) -> None:
        self.stream.reset()
        self.samples_in = self.samples_out = 0
        self._in = self._out = None
        if self.input_rate != self.model_rate:
            import soxr

            self._in = soxr.ResampleStream(self.input_rate, self.model_rate, 1, dtype="float32", quality="HQ")
            self._out = soxr.ResampleStream(self.model_rate, self.input_rate, 1, dtype="float32", quality="HQ")

    def process(self, x: np.ndarray) -> np.ndarray:
        self.samples_in += x.size
        if self._in is None:
            y = self.stream.process(x)
        else:
            y = self._out.resample_chunk(self.stream.process(self._in.resample_chunk(x)))
        y = y[: max(0, self.samples_in - self.samples_out)]  # never run ahead of the input
        self.samples_out += y.size
        return y

    def flush(self) -> np.ndarray:
        if self._in is None:
            y = self.stream.flush()
        else:
            rest = self.stream.process(self._in.resample_chunk(np.zeros(0, np.float32), last=True))
            y = self._out.resample_chunk(np.concatenate([rest, self.stream.flush()]), last=True)
        owed = self.samples_in - self.samples_out
        y = np.concatenate([y, np.zeros(max(0, owed - y.size), np.float32)])[:owed]
        self.reset()
        return y
