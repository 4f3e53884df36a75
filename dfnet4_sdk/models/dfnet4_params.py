"""``ModelParams4``: everything that defines a DfNet4 / DfNet4Lite, its presets, TOML/JSON
files, a commented template, and migration from a DeepFilterNet3 ``config.ini``.

A parameter set is a frozen dataclass validated on construction; files hold the same keys
(unknown keys are rejected) with the DSP front-end in a ``[dsp]`` table.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.params import DspParams, dataclass_from_dict

VARIANTS = ("dfnet4", "dfnet4-lite")  # model families (see dfnet4_sdk.models registry)
BACKBONES = ("mamba", "gru")
# The three parts that each have a backbone -> the field that sets its number of layers.
LAYER_FIELDS = {"enc": "enc_num_layers", "erb_dec": "erb_dec_num_layers", "df_dec": "df_num_layers"}
COMPONENTS = tuple(LAYER_FIELDS)


def _doc(text: str, **kw) -> Any:
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class ModelParams4:
    """Architecture of one DfNet4-family model. Widths: C conv_ch, E nb_erb, F nb_df."""

    variant: str = _doc("model family: 'dfnet4' or 'dfnet4-lite' (same code, different widths)", default="dfnet4")
    dsp: DspParams = field(
        default_factory=DspParams, metadata={"doc": "STFT front-end (sample rate, FFT, hop, ERB bands, DF bins)"}
    )
    df_order: int = _doc("taps O of the deep filter applied downstream (the maximal order)", default=5)
    df_lookahead_frames: int = _doc("future frames among the O taps", default=2)
    conv_lookahead_frames: int = _doc(
        "frames the features lead the filtered spectrum (>= df_lookahead_frames)", default=2
    )
    lsnr_min_db: float = _doc("lower end of the local-SNR output", default=-15.0)
    lsnr_max_db: float = _doc("upper end of the local-SNR output", default=35.0)
    conv_ch: int = _doc("channels C of every encoder/decoder conv; the embedding is C*E/4 wide", default=32)
    conv_kernel_inp_t: int = _doc("time kernel of the two input convs (kernel_t - 1 past frames)", default=3)
    enc_linear_groups: int = _doc("groups of the encoder's grouped linears", default=16)
    linear_groups: int = _doc("groups of the backbones' squeeze/expand and the DF heads", default=16)
    backbone: str = _doc("sequence model of enc / erb_dec / df_dec: 'mamba' or 'gru'", default="mamba")
    enc_backbone: str = _doc("enc's sequence model when it differs from backbone ('': backbone)", default="")
    erb_dec_backbone: str = _doc("erb_dec's sequence model when it differs from backbone ('': backbone)", default="")
    df_dec_backbone: str = _doc("df_dec's sequence model when it differs from backbone ('': backbone)", default="")
    emb_hidden_dim: int = _doc("hidden width of the enc and erb_dec backbones", default=192)
    enc_num_layers: int = _doc("backbone layers in enc", default=1)
    erb_dec_num_layers: int = _doc("backbone layers in erb_dec", default=1)
    df_hidden_dim: int = _doc("hidden width of the df_dec backbone", default=192)
    df_num_layers: int = _doc("backbone layers in df_dec", default=2)
    df_pathway_kernel_t: int = _doc("time kernel of df_dec's conv pathway on c0", default=5)
    mamba_d_state: int = _doc("Mamba SSM state size N", default=16)
    mamba_d_conv: int = _doc("Mamba causal conv width (>= 2)", default=4)
    mamba_expand: int = _doc("Mamba inner width = expand * hidden", default=2)
    hybrid_encoder: bool = _doc(
        "fuse extra domains into the embedding (needs phase and/or waveform branch)", default=True
    )
    phase_branch: bool = _doc("hybrid: phase path on the unit phasors of feat_spec", default=True)
    waveform_branch: bool = _doc(
        "hybrid: waveform path on the current hop of samples (frame_samples input)", default=True
    )
    branch_ch: int = _doc("channels of the phase and waveform paths", default=16)
    fusion_dim: int = _doc("attention width of the within-frame cross-domain fusion", default=64)
    multi_res_df: bool = _doc("blend several (bins, order) DF resolutions inside df_dec", default=True)
    df_resolutions: tuple[tuple[int, int], ...] = _doc(
        "[[bins, order], ...] with one full-band entry; empty: derived from nb_df, df_order, lookahead", default=()
    )
    adaptive_order: bool = _doc(
        "predict the filter order per frame (Gumbel-softmax training, hard at inference)", default=True
    )
    min_df_order: int = _doc("smallest order the adaptive predictor may choose (> df_lookahead_frames)", default=3)
    gumbel_tau: float = _doc("Gumbel-softmax temperature of the order predictor in training", default=1.0)
    dfn3_layout: bool = _doc(
        "conv blocks laid out as DFN3's (grouped conv + biased pointwise, transposed-conv upsampling "
        "in erb_dec, ReLU on the DF pathway), so DFN3's weights copy over (dfn3_init.py)",
        default=False,
    )
    df_linear_groups: int = _doc("groups of df_dec's backbone squeeze; 0: linear_groups (DFN3: 8)", default=0)

    def __post_init__(self) -> None:
        if isinstance(self.dsp, Mapping):
            object.__setattr__(self, "dsp", DspParams.from_dict(self.dsp))
        object.__setattr__(self, "df_resolutions", tuple(tuple(int(v) for v in r) for r in self.df_resolutions))
        problems = self._problems()
        if problems:
            raise ConfigError("invalid ModelParams4: " + "; ".join(problems))

    # -- derived facts -------------------------------------------------------------------------
    @property
    def emb_dim(self) -> int:
        return self.conv_ch * self.dsp.nb_erb // 4  # e3 flattened: C channels x E/4 bands

    @property
    def resolutions(self) -> tuple[tuple[int, int], ...]:
        """The (bins, order) pairs df_dec produces; one entry when multi_res_df is off."""
        if not self.multi_res_df:
            return ((self.dsp.nb_df, self.df_order),)
        return self.df_resolutions or derive_resolutions(self.dsp.nb_df, self.df_order, self.df_lookahead_frames)

    def backbone_of(self, component: str) -> str:
        """The sequence model of ``component`` ('enc', 'erb_dec' or 'df_dec')."""
        return getattr(self, f"{component}_backbone") or self.backbone

    @property
    def df_backbone_groups(self) -> int:
        return self.df_linear_groups or self.linear_groups

    @property
    def adaptive_orders(self) -> tuple[int, ...]:
        return tuple(range(self.min_df_order, self.df_order + 1)) if self.adaptive_order else ()

    @property
    def frame_samples_needed(self) -> bool:
        return self.hybrid_encoder and self.waveform_branch

    def _problems(self) -> list[str]:
        p, d = [], self.dsp
        if self.variant not in VARIANTS:
            p.append(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.backbone not in BACKBONES:
            p.append(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        for component in COMPONENTS:
            choice = getattr(self, f"{component}_backbone")
            if choice and choice not in BACKBONES:
                p.append(f"{component}_backbone must be '' (backbone) or one of {BACKBONES}, got {choice!r}")
        if d.nb_erb % 4:
            p.append(f"nb_erb must divide by 4 (two frequency-stride-2 stages), got {d.nb_erb}")
        if not 0 <= self.df_lookahead_frames < self.df_order:
            p.append(
                f"df_lookahead_frames must be in 0..df_order-1={self.df_order - 1}, got {self.df_lookahead_frames}"
            )
        if self.conv_lookahead_frames < self.df_lookahead_frames:
            p.append(
                f"conv_lookahead_frames ({self.conv_lookahead_frames}) must be >= "
                f"df_lookahead_frames ({self.df_lookahead_frames})"
            )
        for name in (
            "conv_ch",
            "conv_kernel_inp_t",
            "emb_hidden_dim",
            "df_hidden_dim",
            "df_pathway_kernel_t",
            "enc_num_layers",
            "erb_dec_num_layers",
            "df_num_layers",
            "mamba_d_state",
            "mamba_expand",
            "branch_ch",
            "fusion_dim",
        ):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.mamba_d_conv < 2:
            p.append(f"mamba_d_conv must be >= 2, got {self.mamba_d_conv}")
        if self.lsnr_max_db <= self.lsnr_min_db:
            p.append(f"lsnr_max_db ({self.lsnr_max_db}) must exceed lsnr_min_db ({self.lsnr_min_db})")
        if self.hybrid_encoder and not (self.phase_branch or self.waveform_branch):
            p.append("hybrid_encoder needs phase_branch or waveform_branch; enable one or set hybrid_encoder=false")
        if not self.hybrid_encoder and (self.phase_branch or self.waveform_branch):
            p.append("phase_branch / waveform_branch need hybrid_encoder=true; set them false or enable hybrid_encoder")
        if self.df_resolutions and not self.multi_res_df:
            p.append("df_resolutions is set but multi_res_df is false; clear df_resolutions or enable multi_res_df")
        if self.df_linear_groups < 0:
            p.append(f"df_linear_groups must be >= 0 (0: linear_groups), got {self.df_linear_groups}")
        if self.gumbel_tau <= 0:
            p.append(f"gumbel_tau must be > 0, got {self.gumbel_tau}")
        if self.adaptive_order and not self.df_lookahead_frames < self.min_df_order < self.df_order:
            p.append(
                f"min_df_order must be in df_lookahead_frames+1..df_order-1 = "
                f"{self.df_lookahead_frames + 1}..{self.df_order - 1} (the current frame stays a tap), "
                f"got {self.min_df_order}"
            )
        p += self._resolution_problems() + self._group_problems()
        return p

    def _resolution_problems(self) -> list[str]:
        if not self.multi_res_df or not self.df_resolutions:
            return []
        p, nb_df, la = [], self.dsp.nb_df, self.df_lookahead_frames
        for bins, order in self.df_resolutions:
            if not 1 <= bins <= nb_df or not la < order <= self.df_order:
                p.append(
                    f"resolution ({bins}, {order}) needs bins in 1..{nb_df} and order in {la + 1}..{self.df_order}"
                )
        if not any(bins == nb_df for bins, _ in self.df_resolutions):
            p.append(f"df_resolutions needs one full-band entry ({nb_df}, order) so every bin is filtered")
        if len(set(self.df_resolutions)) != len(self.df_resolutions):
            p.append(f"df_resolutions has duplicates: {self.df_resolutions}")
        return p

    def _group_problems(self) -> list[str]:
        """Every grouped linear needs in and out sizes divisible by its groups."""
        d, C = self.dsp, self.conv_ch
        g_enc, g = self.enc_linear_groups, self.linear_groups
        sizes = [
            ("encoder df-path linear", C * math.ceil(d.nb_df / 2), self.emb_dim, g_enc),
            ("backbone squeeze", self.emb_dim, self.emb_hidden_dim, g),
            ("df backbone squeeze", self.emb_dim, self.df_hidden_dim, self.df_backbone_groups),
        ]
        sizes += [(f"DF head ({b}, {o})", self.df_hidden_dim, 2 * b * o, g) for b, o in self.resolutions]
        if self.hybrid_encoder and self.phase_branch:
            sizes.append(
                ("phase-path linear", self.branch_ch * math.ceil(math.ceil(d.nb_df / 2) / 2), self.emb_dim, g_enc)
            )
        return [
            f"{what}: sizes {i} -> {o} must divide by groups {gr}; change conv_ch / widths / groups"
            for what, i, o, gr in sizes
            if i % gr or o % gr
        ]

    # -- dict / files --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict (lists, not tuples)."""
        out = asdict(self)
        out["df_resolutions"] = [list(r) for r in self.df_resolutions]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelParams4:
        return dataclass_from_dict(cls, data)

    def save(self, path: str | Path) -> Path:
        """Write TOML (``.toml``) or JSON (``.json``)."""
        path = Path(path)
        if path.suffix == ".toml":
            path.write_text(to_toml(self.to_dict()))
        elif path.suffix == ".json":
            path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        else:
            raise ConfigError(f"{path}: ModelParams4 files end in .toml or .json, got {path.suffix!r}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> ModelParams4:
        path = Path(path)
        try:
            if path.suffix == ".toml":
                data = _toml_loads(path.read_text())
            elif path.suffix == ".json":
                data = json.loads(path.read_text())
            else:
                raise ConfigError(f"{path}: ModelParams4 files end in .toml or .json, got {path.suffix!r}")
        except (ValueError, json.JSONDecodeError) as e:  # TOMLDecodeError is a ValueError
            raise ConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def generate_config_template(cls, preset: str = "dfnet4") -> str:
        """A commented TOML file with every key at the values of ``preset``."""
        base = PRESETS[preset].to_dict()
        lines = [f"# DfNet4 model parameters (preset {preset!r}). Load with ModelParams4.load(path).", ""]
        for f in fields(cls):
            if f.name == "dsp":
                continue
            lines += [f"# {f.metadata['doc']}", f"{f.name} = {_toml_value(base[f.name])}"]
        lines += ["", "[dsp]  # STFT front-end, libDF conventions (see dfnet4_sdk.params.DspParams)"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in base["dsp"].items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dfn3_config(cls, path_or_text: str | Path, base: str = "dfnet4") -> tuple[ModelParams4, list[str]]:
        from dfnet4_sdk.models.dfn3_migration import migrate_dfn3_config

        return migrate_dfn3_config(path_or_text, base)


def derive_resolutions(nb_df: int, df_order: int, df_lookahead_frames: int) -> tuple[tuple[int, int], ...]:
    """Default multi-resolution set: full band at full order, then half the bins with one tap
    less, then a quarter with two less; never fewer taps than lookahead + 1 (the current frame)."""
    res = []
    for level in range(3):
        bins, order = max(1, nb_df >> level), max(df_lookahead_frames + 1, df_order - level)
        if (bins, order) not in res:
            res.append((bins, order))
    return tuple(res)


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as e:
            raise ConfigError("reading TOML on Python 3.10 needs tomli (pip install tomli); or use .json") from e
    return tomllib.loads(text)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for flat scalars/lists plus one level of tables."""
    scalars = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, Mapping)]
    tables = [
        f"\n[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
        for k, v in data.items()
        if isinstance(v, Mapping)
    ]
    return "\n".join(scalars) + "\n" + "\n".join(tables) + "\n"


_DSP_16K = DspParams(sample_rate_hz=16000, fft_size=320, hop_size_samples=160, nb_erb=24, nb_df=64)
_DFNET4 = ModelParams4()
_LITE = ModelParams4(
    variant="dfnet4-lite",
    conv_ch=16,
    emb_hidden_dim=128,
    df_hidden_dim=128,
    mamba_d_state=8,
    waveform_branch=False,
    multi_res_df=False,
    adaptive_order=False,
)
# DFN3's conv stacks, widths and groupings (64 channels, 256-wide backbones, D = 512), so
# dfn3_init.init_from_dfn3 copies DFN3's weights: with the GRU backbone every tensor (it starts
# equal to DFN3), with Mamba every tensor but the Mamba layers (one per component).
_DFN3_CONV = ModelParams4(
    conv_ch=64,
    enc_linear_groups=32,
    df_linear_groups=8,
    emb_hidden_dim=256,
    df_hidden_dim=256,
    df_num_layers=1,
    mamba_d_state=8,
    hybrid_encoder=False,
    phase_branch=False,
    waveform_branch=False,
    multi_res_df=False,
    adaptive_order=False,
    dfn3_layout=True,
)
PRESETS: dict[str, ModelParams4] = {
    "dfnet4": _DFNET4,
    "dfnet4-lite": _LITE,
    # Zero look-ahead: 10 ms algorithmic latency (STFT overlap only) instead of 30 ms.
    "dfnet4-ll": replace(_DFNET4, df_lookahead_frames=0, conv_lookahead_frames=0, min_df_order=2),
    # 16 kHz: 20 ms window, 10 ms hop, 24 ERB bands, DF up to 3.2 kHz (64 bins of 50 Hz).
    "dfnet4-16k": replace(_DFNET4, dsp=_DSP_16K),
    "dfnet4-dfn3conv": _DFN3_CONV,
    "dfnet4-dfn3conv-gru": replace(_DFN3_CONV, backbone="gru", erb_dec_num_layers=2, df_num_layers=2),
    # DFN3's GRUs in enc and df_dec, one Mamba layer in erb_dec: the Mamba student's gap to DFN3
    # sits in enc's and df_dec's sequence models, not in erb_dec's (component splices,
    # docs/learning_curves/README.md), and erb_dec's Mamba costs less than DFN3's two GRU layers.
    "dfnet4-dfn3conv-mix": replace(_DFN3_CONV, enc_backbone="gru", df_dec_backbone="gru", df_num_layers=2),
}
