"""The probe set of ``dfsdk conformance --client``: real and synthetic clips that exercise every
rule a port of the per-hop recipe can get wrong (docs/CONFORMANCE.md, "Checking a port").

Every probe is made at run time, deterministically, at the bundle's sample rate and hop, from
real audio: the real probes are the demo clip ``examples/noisy_speech_48k.flac`` and the clips of
``noisy_real/`` in the project's data folder when present (resampled); the synthetic probes are cut
from one speech source (``--audio``, else the demo clip, else the data folder's DNS5 clip).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from dfnet4_sdk.errors import AudioFileError, ConfigError
from dfnet4_sdk.shared_data import DEMO_CLIP, NOISY_CLIP, shared_data_dir
from dfnet4_sdk.stream import SILENT_HOP_MEAN_SQUARE

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")
SILENCE_S = 1.0  # digital silence before the speech (leading) or inside it (inner)
INNER_SILENCE_OFFSET_SAMPLES = 137  # the inner silence starts off the hop grid: its edge hops hold both
EXCERPT_S = 3.0  # the length of most synthetic probes
PARTIAL_HOP_WHOLE_HOPS = 20  # partial-hop probes: this many whole hops, then the partial one
CLIP_OVERDRIVE = 8.0  # clipped speech: peak driven to 8x full scale, then hard-clipped to +-1
SQUARE_HZ, SQUARE_BURST_S, SQUARE_PERIOD_S = 250.0, 0.1, 0.5  # full-scale square bursts every 0.5 s
# near-threshold: runs of 8 hops alternating just below and just above the silence threshold
# (mean square 0.8x and 1.25x of 1e-7, -1 and +1 dB): one side is skipped, the other runs.
NEAR_THRESHOLD_RATIOS, NEAR_THRESHOLD_RUN_HOPS = (0.8, 1.25), 8
LONG_S = 120.0
SEED = 20261127


@dataclass(frozen=True)
class Probe:
    name: str
    description: str
    make: Callable[[], np.ndarray]  # mono float32 at the bundle's rate
    slow: bool = False


def speech_source(audio: Path | None = None) -> Path:
    """The clip the synthetic probes are cut from: ``audio``, else the demo clip, else the DNS5 clip."""
    for path in (audio, DEMO_CLIP, shared_data_dir() / NOISY_CLIP):
        if path is not None and Path(path).is_file():
            return Path(path)
    raise AudioFileError(
        f"no speech to build the probes from: neither the demo clip {DEMO_CLIP} (a source checkout) nor "
        f"{shared_data_dir() / NOISY_CLIP} (the project's audio) exists; pass --audio with a noisy speech file"
    )


def real_clips(audio: Path | None = None) -> list[Path]:
    """The real probes' clips: ``audio`` when given, the demo clip, every clip of noisy_real/."""
    noisy_real = shared_data_dir() / "noisy_real"
    found = sorted(p for p in noisy_real.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES) if noisy_real.is_dir() else []
    clips = [p for p in (audio, DEMO_CLIP) if p is not None and Path(p).is_file()] + found
    return list(dict.fromkeys(Path(p).resolve() for p in clips))


@lru_cache(maxsize=8)
def load_mono(path: Path, sample_rate: int) -> np.ndarray:
    from dfnet4_sdk.audio_io import read_mono

    return read_mono(path, sample_rate)[0]


def loudest_end(speech: np.ndarray, n: int, hop: int) -> np.ndarray:
    """The ``n`` samples of ``speech`` (looped when shorter) whose last hop holds the most energy:
    a probe whose final samples matter (a port that drops them loses the most)."""
    x = np.resize(speech, max(n, len(speech))).astype(np.float64)
    energy = np.concatenate([[0.0], np.cumsum(x * x)])
    ends = np.arange(n, len(x) + 1)
    tail = energy[ends] - energy[np.maximum(ends - hop, 0)]
    end = int(ends[np.argmax(tail)])
    return x[end - n : end].astype(np.float32)


def _scaled_hops(speech: np.ndarray, hop: int, ratios: tuple[float, ...], run: int, threshold: float) -> np.ndarray:
    """Each hop of ``speech`` scaled so its mean square is ratio x the silence threshold, the ratio
    cycling through ``ratios`` every ``run`` hops (a little seeded noise keeps no hop at zero)."""
    rng = np.random.default_rng(SEED)
    hops = speech[: len(speech) // hop * hop].reshape(-1, hop).astype(np.float64)
    hops = hops + 1e-4 * rng.standard_normal(hops.shape)
    target = threshold * np.array([ratios[(i // run) % len(ratios)] for i in range(len(hops))])
    hops *= np.sqrt(target / np.mean(hops * hops, axis=1))[:, None]
    return hops.reshape(-1).astype(np.float32)


def _square_bursts(speech: np.ndarray, sample_rate: int) -> np.ndarray:
    x = speech.copy()
    t = np.arange(int(SQUARE_BURST_S * sample_rate)) / sample_rate
    burst = np.where(np.sin(2 * np.pi * SQUARE_HZ * t) >= 0, 1.0, -1.0).astype(np.float32)
    for start in range(int(0.25 * sample_rate), len(x) - len(burst), int(SQUARE_PERIOD_S * sample_rate)):
        x[start : start + len(burst)] = burst
    return x


def probe_set(sample_rate: int, hop: int, audio: Path | None = None,
              silence_threshold: float = SILENT_HOP_MEAN_SQUARE) -> list[Probe]:
    """Every probe for a bundle at ``sample_rate`` with ``hop_size_samples`` = ``hop``; the
    near-threshold probe sits around ``silence_threshold`` (the manifest's
    ``runtime.silent_hop_mean_square``, which the runtime honours)."""
    sr = sample_rate

    def speech() -> np.ndarray:
        return load_mono(speech_source(audio), sr)

    def excerpt(seconds: float = EXCERPT_S, samples: int | None = None) -> np.ndarray:
        return loudest_end(speech(), int(seconds * sr) if samples is None else samples, hop)

    def zeros(seconds: float, extra: int = 0) -> np.ndarray:
        return np.zeros(int(seconds * sr) + extra, np.float32)

    def inner_silence() -> np.ndarray:
        x, cut = excerpt(2 * EXCERPT_S), int(EXCERPT_S * sr) + INNER_SILENCE_OFFSET_SAMPLES
        return np.concatenate([x[:cut], zeros(SILENCE_S), x[cut:]])

    def clipped() -> np.ndarray:
        x = excerpt(EXCERPT_S)
        return np.clip(x * (CLIP_OVERDRIVE / np.max(np.abs(x))), -1.0, 1.0).astype(np.float32)

    k = PARTIAL_HOP_WHOLE_HOPS
    probes = []
    for path in real_clips(audio):
        name = f"real-{path.stem}"
        name += "" if name not in {p.name for p in probes} else f"-{len(probes) + 1}"  # two clips, one stem
        probes.append(Probe(name, f"real recording {path}, whole, at {sr} Hz",
                            lambda path=path: load_mono(path, sr)))
    probes += [
        Probe("silence-leading", f"{SILENCE_S:g} s of digital silence, then {EXCERPT_S:g} s of speech",
              lambda: np.concatenate([zeros(SILENCE_S), excerpt(EXCERPT_S)])),
        Probe("silence-inner", f"speech, {SILENCE_S:g} s of digital silence starting off the hop grid, speech",
              inner_silence),
        Probe("silence-only", "0.5 s of digital silence and nothing else", lambda: zeros(0.5)),
        Probe("near-threshold", f"speech with each hop's mean square at {NEAR_THRESHOLD_RATIOS[0]}x / "
              f"{NEAR_THRESHOLD_RATIOS[1]}x the silence threshold {silence_threshold:g}, in runs of "
              f"{NEAR_THRESHOLD_RUN_HOPS} hops", lambda: _scaled_hops(excerpt(EXCERPT_S), hop, NEAR_THRESHOLD_RATIOS,
                                                                       NEAR_THRESHOLD_RUN_HOPS, silence_threshold)),
        Probe("clipped-speech", f"speech driven to {CLIP_OVERDRIVE:g}x full scale and hard-clipped to +-1", clipped),
        Probe("square-bursts", f"speech with {SQUARE_BURST_S:g} s full-scale {SQUARE_HZ:g} Hz square bursts every "
              f"{SQUARE_PERIOD_S:g} s", lambda: _square_bursts(excerpt(EXCERPT_S), sr)),
        Probe("one-sample", "a single sample (0.25)", lambda: np.array([0.25], np.float32)),
        Probe("partial-hop-plus-1", f"{k} hops + 1 sample of speech (hop {hop})", lambda: excerpt(samples=k * hop + 1)),
        Probe("partial-hop-minus-1", f"{k} hops + {hop - 1} samples of speech (hop {hop})",
              lambda: excerpt(samples=k * hop + hop - 1)),
        Probe("long", f"{LONG_S:g} s of speech (the source looped)",
              lambda: np.resize(speech(), int(LONG_S * sr)).astype(np.float32), slow=True),
    ]
    return probes


def select_probes(probes: list[Probe], selection: str | None) -> list[Probe]:
    """``selection``: names or shell patterns separated by commas (``partial-hop-*,one-sample``);
    None or empty: every probe. A pattern that matches nothing is an error naming the probes."""
    if not selection:
        return probes
    patterns = [p.strip() for p in selection.split(",") if p.strip()]
    unknown = [p for p in patterns if not any(fnmatch.fnmatchcase(probe.name, p) for probe in probes)]
    if unknown:
        raise ConfigError(
            f"--probes {', '.join(unknown)} matches no probe; expected names or patterns separated by commas from: "
            f"{', '.join(p.name for p in probes)} (`--probes list` describes them)"
        )
    return [probe for probe in probes if any(fnmatch.fnmatchcase(probe.name, p) for p in patterns)]
