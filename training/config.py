"""Training configuration: small frozen dataclasses read from a TOML file, saved in checkpoints.

One file has four tables, each a dataclass below; unknown keys raise ``ConfigError``:

    [data]   what goes into the mixtures (DataConfig)
    [model]  the student (preset name) and, for distillation, the teacher
    [loss]   the weight of every loss term (0 switches a term off)
    [optim]  optimiser, batch, steps, validation and checkpoint intervals
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dfnet4_sdk.errors import ConfigError

DEFAULT_DATA_ROOT = "../shared/data"


@dataclass(frozen=True)
class DataConfig:
    data_root: str = DEFAULT_DATA_ROOT  # relative paths are resolved from the working directory
    seed: int = 0
    segment_s: float = 1.5
    snr_db: tuple[float, ...] = (-5.0, 0.0, 5.0, 10.0, 15.0, 20.0, 40.0)
    level_dbfs: tuple[float, float] = (-35.0, -15.0)  # mixture RMS level, uniform in this range
    p_reverb: float = 0.3
    p_second_noise: float = 0.2
    p_clean_only: float = 0.05  # mixtures with no noise at all (the model must not damage speech)
    include_not_shippable: bool = False  # noises / RIR whose upstream licence is not stated
    include_asterisk: bool = True  # 8 kHz CC BY-SA prompts (band-limited, see band_limited_hf_weight)
    include_synthetic: bool = True
    # optional corpora of speech/ (data.CORPORA), e.g. ("librispeech", "asterisk_wb", "0ad_voices")
    corpora: tuple[str, ...] = ()
    # relative weight of a speech group when a batch item picks its group (others weigh 1),
    # "group=weight", e.g. ("acted=0.1",); groups: data.SPEECH_GROUPS
    group_weights: tuple[str, ...] = ()
    speech_screen: str = ""  # DNSMOS list of screened files (training/screen.py); "" = no screening
    min_screen_ovrl: float = 0.0  # screened files below this DNSMOS OVRL are not used
    extra_speech_dirs: tuple[str, ...] = ()  # user folders of clean speech (any rate)
    extra_noise_dirs: tuple[str, ...] = ()
    extra_noisy_dirs: tuple[str, ...] = ()  # real noisy recordings: distillation targets only
    p_real_noisy: float = 0.0  # share of batch items drawn from extra_noisy_dirs
    valid_every_nth_file: int = 20  # every n-th file (by stable hash) is held out as validation
    # distill on a CPU: > 0 trains on a pool of this many batches (step % K), mixed and run through
    # the teacher once, kept on disk under teacher_cache_dir and read every later epoch (teacher_cache.py)
    teacher_cache_batches: int = 0
    teacher_cache_dir: str = "runs/teacher_cache"


@dataclass(frozen=True)
class ModelConfig:
    preset: str = "dfnet4-lite"
    teacher: str = "dfn3"  # anything load_model accepts; used by `distill` only
    init_checkpoint: str = ""  # start the student from these weights (not a resume)


@dataclass(frozen=True)
class LossConfig:
    # supervised (need clean speech)
    spectral: float = 1.0  # compressed magnitude + complex MSE in the model's STFT domain
    multires: float = 1.0  # the same on waveform STFTs of several resolutions
    multires_fft_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    gamma: float = 0.3  # magnitude compression exponent
    complex_weight: float = 0.5  # share of the complex term in spectral / multires
    mask: float = 0.1
    lsnr: float = 0.001
    band_limited_hf_weight: float = 0.1  # supervised weight of bins above a speech file's band limit
    # distillation (teacher targets; also valid for real noisy recordings)
    distill_spectral: float = 1.0
    distill_multires: float = 0.5
    distill_mask: float = 0.5
    distill_lsnr: float = 0.001
    distill_df: float = 0.2
    distill_feature: float = 0.05
    # intermediate distillation: relative MSE of each named hidden state against the teacher's,
    # where the shapes match (e.g. a dfnet4-dfn3conv student of DFN3); see objective.py
    distill_hidden: float = 0.0
    distill_hidden_names: tuple[str, ...] = ("emb", "erb_dec_h", "erb_dec_x", "df_dec_h")
    temperature: float = 2.0  # softens mask logits before the mask distillation term
    # adversarial and perceptual (off unless configured)
    gan: float = 0.0
    feature_matching: float = 0.0
    gan_periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    gan_scales: int = 3
    dnsmos_proxy: float = 0.0
    dnsmos_proxy_path: str = ""
    speaker: float = 0.0


@dataclass(frozen=True)
class OptimConfig:
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-3
    lr_min: float = 1e-5
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    disc_lr: float = 2e-4
    log_every: int = 10
    checkpoint_every: int = 50
    valid_every: int = 250  # 0: no validation
    valid_clips: int = 6  # dev_eval/vbd_train pairs scored with DNSMOS + PESQ
    num_threads: int = 1  # torch intra-op threads of the training process
    data_workers: int = 0  # processes preparing batches ahead (and, on CPU, the teacher's targets)
    # CPU data parallel: training processes, each on its own batch_size items, gradients averaged
    # (effective batch processes * batch_size; training/data_parallel.py)
    processes: int = 1
    # fuse the step's elementwise chains (the Mamba scan, the compressed spectral errors) with
    # torch.compile (training/compiled.py); the first step pays the compilation
    compile: bool = False


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        sections = {f.name: f.default_factory for f in fields(cls)}  # type: ignore[misc]
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config tables {unknown}; expected some of {sorted(sections)}")
        return cls(**{name: _section(factory().__class__, data.get(name, {}), name) for name, factory in sections.items()})

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"training config {path} does not exist; see training/configs/ for examples")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path} is not valid TOML: {e}") from e
        return cls.from_dict(data)

    def with_steps(self, steps: int) -> TrainConfig:
        return replace(self, optim=replace(self.optim, steps=steps))


def _section(cls: type, data: Mapping[str, Any], name: str):
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown keys {unknown} in [{name}]; expected a subset of {sorted(known)}")
    values = {}
    for key, value in data.items():
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            value = tuple(value)
        elif isinstance(default, float) and isinstance(value, int):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigError(f"[{name}] {key} must be a {type(default).__name__}, got {value!r}")
        values[key] = value
    return cls(**values)
