"""Front-end (DSP) parameters shared by every model of the family.

The defaults are libDF's / DeepFilterNet3's: 48 kHz, 20 ms window, 10 ms hop.
Derived values carry their arithmetic in a comment, as whisper's audio.py does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, TypeVar

from dfnet4_sdk.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class DspParams:
    """Everything the STFT front-end and the feature normalisation need."""

    sample_rate_hz: int = 48000
    fft_size: int = 960  # 20 ms at 48 kHz
    hop_size_samples: int = 480  # 10 ms at 48 kHz
    nb_erb: int = 32
    nb_df: int = 96  # bins 0..95 (0..4.8 kHz at 48 kHz) are deep-filtered
    min_nb_erb_freqs: int = 2  # DFN3's config.ini; libdf.DF() defaults to 1
    norm_tau_s: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if self.fft_size % 2:
            problems.append(f"fft_size must be even, got {self.fft_size}")
        if self.fft_size != 2 * self.hop_size_samples:
            # libDF's Vorbis window has period 2*hop; other ratios break perfect reconstruction.
            problems.append(
                f"fft_size must be 2 * hop_size_samples, got {self.fft_size} and {self.hop_size_samples}"
            )
        if not 0 < self.nb_df <= self.freq_bins:
            problems.append(f"nb_df must be in 1..{self.freq_bins}, got {self.nb_df}")
        if self.nb_erb * self.min_nb_erb_freqs > self.freq_bins:
            problems.append(f"nb_erb={self.nb_erb} bands of {self.min_nb_erb_freqs} bins exceed {self.freq_bins} bins")
        if problems:
            raise ConfigError("invalid DspParams: " + "; ".join(problems))

    @property
    def freq_bins(self) -> int:
        return self.fft_size // 2 + 1  # 481 at fft 960

    @property
    def norm_alpha(self) -> float:
        """Exponential-mean decay; libDF computes exp(-hop / (sr * tau)) and rounds to 3 decimals
        (0.99005 -> 0.99 at the defaults)."""
        alpha = math.exp(-self.hop_size_samples / (self.sample_rate_hz * self.norm_tau_s))
        return _libdf_round_alpha(alpha)

    @property
    def stft_delay_samples(self) -> int:
        return self.fft_size - self.hop_size_samples  # 480: analysis + synthesis overlap-add

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DspParams":
        return dataclass_from_dict(cls, data)


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """``cls(**data)`` for a parameter dataclass, refusing unknown keys (a typo in a config
    file must not silently fall back to a default)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; expected a subset of {sorted(known)}")
    return cls(**dict(data))


def _libdf_round_alpha(alpha: float) -> float:
    # libDF (lib.rs, get_norm_alpha): round to the first precision where the value differs
    # from 1, i.e. 0.99005 -> 0.99 (3 decimals) but 0.9995 stays distinguishable.
    a = 1.0
    precision = 3
    while a >= 1.0:
        a = round(alpha, precision)
        precision += 1
    return a
