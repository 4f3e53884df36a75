"""Long-stream stability: does a model's output settle, or does its state drift for minutes?

The same clip is streamed many times in a row through one ``Runtime`` (one stream, states carried
over). Every model with a bounded memory produces the same output for the same input once the
context before it is the same, so consecutive repeats of the clip (after the first, whose context
was silence) must agree; a model whose state decays slowly (a norm, a recurrent or SSM state that
remembers minutes) agrees only gradually. The issue's bar: a shipped model settles within 30 s,
i.e. every pair of consecutive repeats after 30 s of stream agrees to >= 40 dB.

    from dfnet4_sdk.stability import repeated_clip_agreement
    report = repeated_clip_agreement(Runtime("dfnet4-lite-v1"), clip, repeats=12)
    report.settled_after_s    # seconds of stream after which every consecutive pair agrees (or None)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.metrics import snr_db

SETTLED_SNR_DB = 40.0  # consecutive repeats agreeing this closely count as the same output


@dataclass(frozen=True)
class StabilityReport:
    clip_seconds: float
    pair_snr_db: tuple[float, ...]  # pair k: repeat k+1 vs repeat k (k = 0: the second repeat vs the first)
    threshold_db: float = SETTLED_SNR_DB

    @property
    def settled_after_s(self) -> float | None:
        """Start (in seconds of stream) of the first repeat from which every later consecutive pair
        agrees to ``threshold_db``; None when the last pair still does not."""
        first = len(self.pair_snr_db)
        for k in range(len(self.pair_snr_db) - 1, -1, -1):
            if self.pair_snr_db[k] < self.threshold_db:
                break
            first = k
        if first == len(self.pair_snr_db):
            return None
        return (first + 1) * self.clip_seconds  # pair `first` compares repeat first+1 with repeat first

    def as_dict(self) -> dict:
        return {"clip_seconds": self.clip_seconds, "repeats": len(self.pair_snr_db) + 1,
                "pair_snr_db": [round(v, 1) for v in self.pair_snr_db], "threshold_db": self.threshold_db,
                "settled_after_s": self.settled_after_s}


def repeated_clip_agreement(runtime, clip: np.ndarray, repeats: int = 6, chunk_samples: int | None = None) -> StabilityReport:
    """Stream ``clip`` (mono, at the model's rate; cut to whole hops) ``repeats`` times through one
    stream of ``runtime`` in chunks (default: one hop) and compare consecutive repeats' outputs."""
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 1 or clip.size == 0:
        raise ConfigError(f"clip must be non-empty mono audio [N], got shape {clip.shape}")
    if not isinstance(repeats, int) or repeats < 2:
        raise ConfigError(f"repeats must be an integer >= 2 (two repeats make one comparison), got {repeats!r}")
    if runtime.input_sample_rate != runtime.sample_rate:
        raise ConfigError(f"stream the clip at the model's rate ({runtime.sample_rate} Hz), not "
                          f"{runtime.input_sample_rate} Hz: resampling would shift every repeat differently")
    # A whole number of hops per repeat, so that every repeat meets the same STFT frame grid.
    hop = runtime.hop_size_samples
    clip = clip[: clip.size - clip.size % hop]
    if clip.size == 0:
        raise ConfigError(f"clip is shorter than one hop ({hop} samples)")
    step = chunk_samples or hop
    # One repeat more than compared: the output of a repeat's last samples depends on the look-ahead
    # after it, so every compared repeat must be followed by the clip's start, never by the zeros
    # that flush() pads with (that tail alone made the last pair of a settled model look drifting).
    signal = np.tile(clip, repeats + 1)
    runtime.reset()
    out = [runtime.process(signal[i : i + step]) for i in range(0, signal.size, step)]
    out.append(runtime.flush())
    y = np.concatenate(out).reshape(repeats + 1, clip.size)[:repeats]  # delay-compensated: y[n] belongs to x[n]
    pairs = tuple(float(snr_db(y[k], y[k + 1])) for k in range(repeats - 1))
    return StabilityReport(clip.size / runtime.sample_rate, pairs)
