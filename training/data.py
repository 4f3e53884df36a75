"""On-the-fly training mixtures: speech x noise at sampled SNRs, reverb, level, resampling.

    lists = build_lists(cfg.data)                       # licence-filtered files (manifest.csv)
    ds = MixtureDataset(cfg.data, dsp_params, lists, split="train")
    batch = ds.batch(step, batch_size)                  # same step -> same batch, always

Every item is drawn from its own generator ``default_rng([seed, split, index])``, so batch
``step`` is a pure function of (seed, step): a resumed run sees exactly the batches the
interrupted one would have seen, with no data-loader state to save.

Licence rules (shared/data/README.md), applied by ``build_lists``:
- never: EARS and freesound 33711 (CC BY-NC), anything under dev_eval/ or noisy_real/ (held out
  for evaluation), and speech/vbd_train_p287_* (the clean halves of dev_eval/vbd_train);
- by default not: noises / RIRs whose upstream licence is not stated (``include_not_shippable``);
- yes: VCTK, LibriSpeech, CMU ARCTIC, the CC BY / CC0 / PD noises, the DeepFilterNet RIR, the
  synthetic speech (training only; never shipped) and the 8 kHz Asterisk prompts (CC BY-SA,
  training only; ``include_asterisk``);
- when named in ``corpora``: the corpora of ``CORPORA`` (LibriSpeech 16 kHz, Asterisk wideband
  prompts 16 kHz, LJ Speech 22 kHz, Thorsten 22/44 kHz, VCTK s5 48 kHz, 0 A.D. acted voices);
  files that ``speech_screen`` scored below ``min_screen_ovrl`` DNSMOS OVRL are dropped.

Each batch item first picks a speech group (``SPEECH_GROUPS``; all weigh 1 unless
``group_weights`` says otherwise), then a file of that group uniformly.

Band-limited speech (16 kHz or 8 kHz files, resampled to 48 kHz) has nothing above its band
limit. The mixture keeps noise up there, so the target there is silence; each item carries its
``band_limit_hz`` and the supervised losses weight bins above it by ``band_limited_hf_weight``
(the teacher's targets are valid over the whole band and are not down-weighted).

Shapes: B batch, N samples, T = N / hop frames, F bins, E ERB bands, D deep-filtered bins.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile as sf
import torch

from dfnet4_sdk import dsp
from dfnet4_sdk.audio_io import resample
from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.training.config import DataConfig

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
NEVER_TRAIN = ("freesound_33711", "dev_eval/", "noisy_real/", "speech/vbd_train_p287_")
NC_MARKERS = ("BY-NC", "NC ", "non-commercial")
NOT_SHIPPABLE_MARKER = "not stated upstream"
EARLY_REVERB_S = 0.05  # the target keeps the direct path and the first 50 ms of the RIR
SPLITS = {"train": 0, "valid": 1}
# Optional corpora (``[data] corpora``): name -> (folder under data_root, speech group). Without
# its name a folder is not used at all, so older configs keep their exact data.
CORPORA = {
    "librispeech": ("speech/librispeech/", "librispeech"),  # 16 kHz read speech, 190 speakers
    "asterisk_wb": ("speech/asterisk_wb/", "ivr_wideband"),  # 16 kHz studio prompts, 3 voices
    "ljspeech": ("speech/ljspeech/", "real"),  # 22.05 kHz
    "thorsten": ("speech/thorsten/", "real"),  # 44.1 / 22.05 kHz
    "vctk_seflow": ("speech/vctk_seflow/", "real"),  # 48 kHz
    "0ad_voices": ("speech/0ad_voices/", "acted"),  # acted, short: give it a low group weight
}
SPEECH_GROUPS = ("real", "synthetic", "narrowband", "librispeech", "ivr_wideband", "acted", "user")


@dataclass(frozen=True)
class AudioEntry:
    path: Path
    sample_rate: int
    seconds: float
    licence: str
    group: str  # speech: real / synthetic / narrowband / user; noise, rir, noisy

    @property
    def band_limit_hz(self) -> float:
        return self.sample_rate / 2


@dataclass(frozen=True)
class DataLists:
    speech: tuple[AudioEntry, ...]
    noise: tuple[AudioEntry, ...]
    rir: tuple[AudioEntry, ...]
    noisy: tuple[AudioEntry, ...] = ()

    def summary(self) -> dict[str, dict[str, float]]:
        """{list/group: {files, minutes}} for logs and the model card."""
        out: dict[str, dict[str, float]] = {}
        for name in ("speech", "noise", "rir", "noisy"):
            for e in getattr(self, name):
                row = out.setdefault(f"{name}/{e.group}", {"files": 0, "minutes": 0.0})
                row["files"] += 1
                row["minutes"] = round(row["minutes"] + e.seconds / 60, 2)
        return out

    def split(self, split: str, every_nth: int) -> DataLists:
        """Hold out every n-th speech file (stable hash of its name) as the validation split."""
        keep = (lambda e: _held_out(e, every_nth)) if split == "valid" else (lambda e: not _held_out(e, every_nth))
        speech = tuple(e for e in self.speech if keep(e))
        return DataLists(speech, self.noise, self.rir, self.noisy)


def _held_out(entry: AudioEntry, every_nth: int) -> bool:
    return every_nth > 0 and int(hashlib.sha1(entry.path.name.encode()).hexdigest(), 16) % every_nth == 0


def _speech_group(path: str, corpora: tuple[str, ...]) -> str | None:
    """The speech group of a manifest path, None for a corpus that ``corpora`` does not name."""
    for name, (folder, group) in CORPORA.items():
        if path.startswith(folder):
            return group if name in corpora else None
    if "/synthetic/" in path:
        return "synthetic"
    if "/asterisk/" in path:
        return "narrowband"
    return "real"


def _check_data_config(cfg: DataConfig) -> dict[str, float]:
    """Every problem of the corpus / group settings at once; returns {group: weight}."""
    problems = [f"unknown corpus {c!r}" for c in cfg.corpora if c not in CORPORA]
    weights = {}
    for item in cfg.group_weights:
        name, _, value = item.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if name not in SPEECH_GROUPS or weight < 0:
            problems.append(f"group weight {item!r}")
        weights[name] = weight
    if problems:
        raise ConfigError(
            f"[data] has {'; '.join(problems)}: corpora must be some of {sorted(CORPORA)}, group_weights "
            f"'group=weight' with weight >= 0 and group one of {list(SPEECH_GROUPS)}"
        )
    return weights


def _screened_out(cfg: DataConfig) -> set[str]:
    """Manifest paths that the DNSMOS screen list scores below ``min_screen_ovrl``."""
    if not cfg.speech_screen:
        return set()
    from dfnet4_sdk.training.screen import load_screen

    return {p for p, s in load_screen(cfg.speech_screen).items() if s["ovrl"] < cfg.min_screen_ovrl}


def build_lists(cfg: DataConfig) -> DataLists:
    """Licence-filtered file lists from ``<data_root>/manifest.csv`` plus the user folders."""
    root = Path(cfg.data_root)
    manifest = root / "manifest.csv"
    speech, noise, rir = [], [], []
    _check_data_config(cfg)
    dropped = _screened_out(cfg)
    if manifest.is_file():
        with manifest.open(newline="") as f:
            for row in csv.DictReader(f):
                path, licence, kind = row["path"], row["licence"], row["kind"]
                if any(m in path for m in NEVER_TRAIN) or any(m in licence for m in NC_MARKERS):
                    continue
                if NOT_SHIPPABLE_MARKER in licence and not cfg.include_not_shippable:
                    continue
                group = _speech_group(path, cfg.corpora) if kind == "speech" else kind
                if group is None or path in dropped:
                    continue
                if (group == "narrowband" and not cfg.include_asterisk) or (
                    group == "synthetic" and not cfg.include_synthetic
                ):
                    continue
                entry = AudioEntry(root / path, int(row["sample_rate"]), float(row["seconds"]), licence, group)
                {"speech": speech, "noise": noise, "rir": rir}.get(kind, []).append(entry)
    elif not (cfg.extra_speech_dirs or cfg.extra_noisy_dirs):
        raise ConfigError(f"no training data: {manifest} does not exist and no extra_speech_dirs are set")
    speech += _scan(cfg.extra_speech_dirs, "user")
    noise += _scan(cfg.extra_noise_dirs, "user")
    noisy = _scan(cfg.extra_noisy_dirs, "noisy")
    if not speech and not noisy:
        raise ConfigError(f"no speech found under {root} or extra_speech_dirs; check [data] data_root")
    if speech and not noise:
        raise ConfigError(f"no noise files found under {root} or extra_noise_dirs")
    return DataLists(tuple(speech), tuple(noise), tuple(rir), tuple(noisy))


def _scan(folders: tuple[str, ...], group: str) -> list[AudioEntry]:
    entries = []
    for folder in folders:
        if not Path(folder).is_dir():
            raise ConfigError(f"data folder {folder} does not exist")
        for p in sorted(Path(folder).rglob("*")):
            if p.suffix.lower() in AUDIO_SUFFIXES:
                info = sf.info(str(p))
                entries.append(AudioEntry(p, info.samplerate, info.duration, "user-provided", group))
    return entries


@functools.lru_cache(maxsize=4096)  # every speech file of shared/data fits (about 0.5 GB)
def load_mono(path: Path) -> np.ndarray:
    """A file's samples as mono float32 at its own rate (channels averaged), cached."""
    audio, _ = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1)


def read_segment(entry: AudioEntry, seconds: float, rate: int, rng: np.random.Generator, loop: bool) -> np.ndarray:
    """A random ``seconds`` long piece of ``entry`` at ``rate`` Hz [N]. Shorter files are looped
    (noise) or placed at a random offset in zeros (speech)."""
    audio = load_mono(entry.path)
    want = int(np.ceil(seconds * entry.sample_rate)) + 1
    if len(audio) >= want:
        start = int(rng.integers(0, len(audio) - want + 1))
        piece = audio[start : start + want]
    elif loop:
        reps = -(-want // len(audio)) + 1
        start = int(rng.integers(0, len(audio)))
        piece = np.tile(audio, reps)[start : start + want]
    else:
        piece = np.zeros(want, dtype=np.float32)
        offset = int(rng.integers(0, want - len(audio) + 1))
        piece[offset : offset + len(audio)] = audio
    out = resample(piece, entry.sample_rate, rate)
    n = int(round(seconds * rate))
    return np.pad(out, (0, max(0, n - len(out))))[:n].astype(np.float32)


def power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``noise`` so that 10*log10(P(speech) / P(noise)) == snr_db; returns (mixture, noise)."""
    gain = np.sqrt(power(speech) / max(power(noise), 1e-12) / 10 ** (snr_db / 10))
    noise = (noise * gain).astype(np.float32)
    return speech + noise, noise


def _reverb(speech: np.ndarray, rir: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(reverberant speech, target with direct path + early reflections), both [N]."""
    rir = rir / (np.sqrt(np.sum(rir**2)) + 1e-12)
    peak = int(np.argmax(np.abs(rir)))
    early = rir[: peak + int(EARLY_REVERB_S * rate)]
    n = len(speech)
    wet = scipy.signal.fftconvolve(speech, rir)[peak : peak + n]
    target = scipy.signal.fftconvolve(speech, early)[peak : peak + n]
    return wet.astype(np.float32), target.astype(np.float32)


@dataclass
class Example:
    """One training item at the model rate. ``clean`` is None for real noisy recordings."""

    noisy: np.ndarray  # [N]
    clean: np.ndarray | None  # [N] target (dry or early-reverb speech)
    speech: np.ndarray | None  # [N] the speech as it is inside the mixture
    noise: np.ndarray  # [N] the noise inside the mixture
    snr_db: float
    band_limit_hz: float


class MixtureDataset:
    """Deterministic mixtures: ``item(i)`` and ``batch(step, b)`` depend only on (seed, split, i)."""

    def __init__(self, cfg: DataConfig, params: DspParams, lists: DataLists, split: str = "train"):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        self.cfg, self.params, self.split = cfg, params, split
        self.lists = lists.split(split, cfg.valid_every_nth_file)
        if not self.lists.speech and not self.lists.noisy:
            raise ConfigError(f"the {split} split has no speech; lower valid_every_nth_file or add data")
        groups: dict[str, list[AudioEntry]] = {}
        for e in self.lists.speech:
            groups.setdefault(e.group, []).append(e)
        weights = _check_data_config(cfg)
        names = [g for g in sorted(groups) if weights.get(g, 1.0) > 0]
        if groups and not names:
            raise ConfigError(f"[data] group_weights {cfg.group_weights} give every speech group ({sorted(groups)}) weight 0")
        self.group_names = tuple(names)
        self._groups = [groups[g] for g in names]
        w = np.array([weights.get(g, 1.0) for g in names])
        # all equal: one integer draw, exactly as before group weights existed (same batches)
        self._group_cdf = None if len(set(w)) <= 1 else np.cumsum(w) / w.sum()
        self.rate = params.sample_rate_hz
        self.samples = int(round(cfg.segment_s * self.rate / params.hop_size_samples)) * params.hop_size_samples

    def item(self, index: int) -> Example:
        cfg, rate, seconds = self.cfg, self.rate, self.samples / self.rate
        rng = np.random.default_rng([cfg.seed, SPLITS[self.split], index])
        if self.lists.noisy and (not self._groups or rng.random() < cfg.p_real_noisy):
            entry = self.lists.noisy[int(rng.integers(len(self.lists.noisy)))]
            noisy = read_segment(entry, seconds, rate, rng, loop=True)
            return Example(self._level(rng, noisy)[0], None, None, noisy * 0, float("nan"), rate / 2)
        group = self._groups[self.pick_group(rng)]
        entry = group[int(rng.integers(len(group)))]
        speech = read_segment(entry, seconds, rate, rng, loop=False)
        clean = speech
        if self.lists.rir and rng.random() < cfg.p_reverb:
            rir_entry = self.lists.rir[int(rng.integers(len(self.lists.rir)))]
            speech, clean = _reverb(speech, resample(load_mono(rir_entry.path), rir_entry.sample_rate, rate), rate)
        noise = self._noise(rng, seconds)
        if rng.random() < cfg.p_clean_only or power(speech) == 0.0:
            snr_db, noise = float("inf"), noise * 0
            noisy = speech.copy()
        else:
            snr_db = float(rng.choice(cfg.snr_db))
            noisy, noise = mix_at_snr(speech, noise, snr_db)
        noisy, gain = self._level(rng, noisy)
        return Example(noisy, clean * gain, speech * gain, noise * gain, snr_db, min(entry.band_limit_hz, rate / 2))

    def pick_group(self, rng: np.random.Generator) -> int:
        """Index into ``group_names`` of the speech group of the next item (by group weight)."""
        if self._group_cdf is None:
            return int(rng.integers(len(self._groups)))
        return min(int(np.searchsorted(self._group_cdf, rng.random(), side="right")), len(self._groups) - 1)

    def _noise(self, rng: np.random.Generator, seconds: float) -> np.ndarray:
        pick = lambda: self.lists.noise[int(rng.integers(len(self.lists.noise)))]
        noise = read_segment(pick(), seconds, self.rate, rng, loop=True)
        if rng.random() < self.cfg.p_second_noise:
            other = read_segment(pick(), seconds, self.rate, rng, loop=True)
            noise = noise + other * np.sqrt(power(noise) / max(power(other), 1e-12)) * rng.uniform(0.3, 1.0)
        return noise

    def _level(self, rng: np.random.Generator, noisy: np.ndarray) -> tuple[np.ndarray, float]:
        lo, hi = self.cfg.level_dbfs
        target = 10 ** (rng.uniform(lo, hi) / 20)
        gain = target / max(np.sqrt(power(noisy)), 1e-8)
        gain = min(gain, 0.99 / max(float(np.max(np.abs(noisy))), 1e-8))  # never clip
        return (noisy * gain).astype(np.float32), float(gain)

    def batch(self, step: int, batch_size: int) -> dict[str, torch.Tensor]:
        """Batch ``step``: items step*B .. step*B+B-1, collated with the model's front-end."""
        return collate([self.item(step * batch_size + i) for i in range(batch_size)], self.params)


def spec_tensor(spec: np.ndarray) -> torch.Tensor:
    """[T, F] complex -> [1, T, F, 2] float32 (re/im last)."""
    return torch.from_numpy(np.stack([spec.real, spec.imag], axis=-1).astype(np.float32))[None]


def features(audio: np.ndarray, params: DspParams) -> dict[str, torch.Tensor]:
    """The model inputs of one signal: spec [1, T, F, 2], feat_erb [1, T, E], feat_spec [2, T, D]."""
    fe = dsp.front_end(params)
    spec = fe.analysis(audio, dsp.FrontEndState.initial(params))
    erb, unit = fe.features(spec, dsp.FrontEndState.initial(params))
    return {
        "spec": spec_tensor(spec),
        "feat_erb": torch.from_numpy(erb)[None],
        "feat_spec": torch.from_numpy(np.stack([unit.real, unit.imag]).astype(np.float32)),
    }


def collate(examples: list[Example], params: DspParams) -> dict[str, torch.Tensor]:
    """Stack examples: spec/clean_spec [B, 1, T, F, 2], feat_erb [B, 1, T, E], feat_spec
    [B, 2, T, D], noisy/clean [B, N], has_clean [B] bool, band_limit_hz [B], snr_db [B]."""
    feats = [features(e.noisy, params) for e in examples]
    out = {k: torch.stack([f[k] for f in feats]) for k in feats[0]}
    zeros = np.zeros_like(examples[0].noisy)
    clean = [e.clean if e.clean is not None else zeros for e in examples]
    out["clean_spec"] = torch.stack([spec_tensor(dsp.stft(c, params)) for c in clean])
    out["noisy"] = torch.from_numpy(np.stack([e.noisy for e in examples]))
    out["clean"] = torch.from_numpy(np.stack(clean).astype(np.float32))
    out["has_clean"] = torch.tensor([e.clean is not None for e in examples])
    out["band_limit_hz"] = torch.tensor([e.band_limit_hz for e in examples], dtype=torch.float32)
    out["snr_db"] = torch.tensor([e.snr_db for e in examples], dtype=torch.float32)
    return out
