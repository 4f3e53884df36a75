"""DeepFilterNet3's parameters and its ``config.ini``: the one parser of that file.

``Dfn3Params`` holds the architecture and DSP keys of an upstream export, named as in
config.ini (``[df]`` and ``[deepfilternet]``), and refuses values the streaming import cannot
represent. ``read_config_ini`` reads the file's sections for both of its users: the exact import
(``Dfn3Params.from_config_ini``, models/dfn3_import.py) and the migration of a DFN3 config to a
DfNet4 one (models/dfn3_migration.py).
"""

from __future__ import annotations

import configparser
import logging
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.params import DspParams, dataclass_from_dict

logger = logging.getLogger(__name__)

DF_GRU_LINEAR_GROUPS = 8  # upstream builds df_gru's SqueezedGRU with its default linear_groups=8
DF_SKIP_OPTIONS = ("none", "identity", "groupedlinear")


@dataclass(frozen=True)
class Dfn3Params:
    """DFN3's architecture and DSP keys, named as in config.ini; defaults are the official model's."""

    # [df]
    sr: int = 48000
    fft_size: int = 960
    hop_size: int = 480
    nb_erb: int = 32
    nb_df: int = 96
    norm_tau: float = 1.0
    lsnr_min: float = -15.0
    lsnr_max: float = 35.0
    min_nb_erb_freqs: int = 2
    df_order: int = 5
    df_lookahead: int = 2
    # [deepfilternet]
    conv_lookahead: int = 2
    conv_ch: int = 64
    conv_kernel: tuple[int, int] = (1, 3)
    conv_kernel_inp: tuple[int, int] = (3, 3)
    emb_hidden_dim: int = 256
    emb_num_layers: int = 3
    enc_linear_groups: int = 32
    linear_groups: int = 16
    df_hidden_dim: int = 256
    df_num_layers: int = 2
    df_pathway_kernel_size_t: int = 5
    df_gru_skip: str = "groupedlinear"
    mask_pf: bool = False  # runtime post-filter hint; no weights

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_kernel", tuple(self.conv_kernel))
        object.__setattr__(self, "conv_kernel_inp", tuple(self.conv_kernel_inp))
        problems = _check_params(self)
        if problems:
            raise ConfigError("DeepFilterNet3 config cannot be represented: " + "; ".join(problems))
        try:
            self.dsp_params()
        except ConfigError as exc:
            raise ConfigError(f"DeepFilterNet3 [df] section: {exc}") from exc

    @property
    def emb_dim(self) -> int:
        return self.conv_ch * self.nb_erb // 4  # 512: e3 [C, E/4] flattened

    def dsp_params(self) -> DspParams:
        return DspParams(
            sample_rate_hz=self.sr,
            fft_size=self.fft_size,
            hop_size_samples=self.hop_size,
            nb_erb=self.nb_erb,
            nb_df=self.nb_df,
            min_nb_erb_freqs=self.min_nb_erb_freqs,
            norm_tau_s=self.norm_tau,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_kernel"] = list(self.conv_kernel)
        d["conv_kernel_inp"] = list(self.conv_kernel_inp)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Dfn3Params":
        return dataclass_from_dict(cls, data)

    @classmethod
    def from_config_ini(cls, text: str) -> "Dfn3Params":
        """Parse an upstream config.ini ([df] and [deepfilternet] sections)."""
        parser = read_config_ini(text)
        model = parser.get("train", "model", fallback="deepfilternet3").strip()
        if model != "deepfilternet3":
            raise ConfigError(f"config.ini [train] model is {model!r}, expected 'deepfilternet3'")
        return cls(**_read_ini(parser))


def read_config_ini(text: str) -> configparser.ConfigParser:
    """The sections of a DFN3 ``config.ini`` (inline ``#`` / ``;`` comments allowed); refuses
    text that is not INI or lacks ``[df]`` or ``[deepfilternet]``."""
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise ConfigError(f"config.ini is not valid INI: {exc}") from exc
    missing = [f"[{s}]" for s in ("df", "deepfilternet") if not parser.has_section(s)]
    if missing:
        raise ConfigError(
            f"config.ini has no {' or '.join(missing)} section: a DeepFilterNet3 config.ini has [df] and "
            f"[deepfilternet] sections, found {parser.sections()}; is this a DeepFilterNet3 export?"
        )
    return parser


# (section, key, type); every one must be present. Tuples are "a,b" lists of ints.
_INI_KEYS = (
    ("df", "sr", int), ("df", "fft_size", int), ("df", "hop_size", int), ("df", "nb_erb", int),
    ("df", "nb_df", int), ("df", "norm_tau", float), ("df", "lsnr_min", float), ("df", "lsnr_max", float),
    ("df", "min_nb_erb_freqs", int), ("df", "df_order", int), ("df", "df_lookahead", int),
    ("deepfilternet", "conv_lookahead", int), ("deepfilternet", "conv_ch", int),
    ("deepfilternet", "conv_kernel", tuple), ("deepfilternet", "conv_kernel_inp", tuple),
    ("deepfilternet", "emb_hidden_dim", int), ("deepfilternet", "emb_num_layers", int),
    ("deepfilternet", "enc_linear_groups", int), ("deepfilternet", "linear_groups", int),
    ("deepfilternet", "df_hidden_dim", int), ("deepfilternet", "df_num_layers", int),
    ("deepfilternet", "df_pathway_kernel_size_t", int),
)
# Keys upstream DFN3 reads that change the architecture, with the value this implementation
# supports and upstream's default when the key is absent.
_INI_FIXED = {"enc_concat": False, "df_n_iter": 1, "dfop_method": "df", "emb_gru_skip": "none", "emb_gru_skip_enc": "none"}


def _read_ini(parser: configparser.ConfigParser) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for section, key, kind in _INI_KEYS:
        if not parser.has_option(section, key):
            raise ConfigError(f"config.ini [{section}] lacks the key {key!r}")
        raw = parser.get(section, key).strip()
        try:
            if kind is tuple:
                values[key] = tuple(int(v) for v in raw.split(","))
                if len(values[key]) != 2:
                    raise ValueError("need two comma-separated ints")
            else:
                values[key] = kind(float(raw)) if kind is int and "." in raw else kind(raw)
        except ValueError as exc:
            raise ConfigError(f"config.ini [{section}] {key} = {raw!r}: {exc}") from exc
    dn = parser["deepfilternet"]
    values["df_gru_skip"] = dn.get("df_gru_skip", "none").strip().lower()
    values["mask_pf"] = _ini_bool(dn, "mask_pf", False)
    for key, supported in _INI_FIXED.items():
        if key not in dn:
            continue
        try:
            found = _ini_bool(dn, key, supported) if isinstance(supported, bool) else type(supported)(dn[key].strip().lower())
        except ValueError:
            found = None
        if found != supported:
            raise ConfigError(f"config.ini [deepfilternet] {key} = {dn[key]!r} is not supported; only {supported!r}")
    read = {k for s, k, _ in _INI_KEYS if s == "deepfilternet"} | {"df_gru_skip", "mask_pf", *_INI_FIXED}
    ignored = sorted(set(dn) - read)
    if ignored:  # training-only or unused by upstream's DFN3 (e.g. conv_depthwise, convt_kernel)
        logger.debug("config.ini [deepfilternet] keys without effect on DFN3 inference: %s", ignored)
    return values


def _ini_bool(section: configparser.SectionProxy, key: str, default: bool) -> bool:
    try:
        return section.getboolean(key, fallback=default)
    except ValueError as exc:
        raise ConfigError(f"config.ini [{section.name}] {key} = {section[key]!r} is not a boolean") from exc


def _check_params(p: Dfn3Params) -> list[str]:
    problems = []
    if len(p.conv_kernel) != 2 or p.conv_kernel[0] != 1 or p.conv_kernel[1] != 3:
        # The decoder's transposed convs (fstride 2, output_padding 1) only double F with a 3-wide
        # kernel, and have no time state: upstream DFN3 always uses (1, 3).
        problems.append(f"conv_kernel must be 1,3, got {p.conv_kernel}")
    if len(p.conv_kernel_inp) != 2 or min(p.conv_kernel_inp) < 1 or p.conv_kernel_inp[1] % 2 == 0:
        problems.append(f"conv_kernel_inp must be (time >= 1, odd frequency size), got {p.conv_kernel_inp}")
    if p.nb_erb % 4:
        problems.append(f"nb_erb must divide by 4 (two frequency-stride-2 convs), got {p.nb_erb}")
    if p.nb_df % 2:
        problems.append(f"nb_df must be even (one frequency-stride-2 conv), got {p.nb_df}")
    if p.emb_num_layers < 2:
        problems.append(f"emb_num_layers must be >= 2 (erb_dec's GRU has emb_num_layers - 1), got {p.emb_num_layers}")
    if p.df_num_layers < 1:
        problems.append(f"df_num_layers must be >= 1, got {p.df_num_layers}")
    if p.df_pathway_kernel_size_t < 1:
        problems.append(f"df_pathway_kernel_size_t must be >= 1, got {p.df_pathway_kernel_size_t}")
    if p.df_gru_skip not in DF_SKIP_OPTIONS:
        problems.append(f"df_gru_skip must be one of {DF_SKIP_OPTIONS}, got {p.df_gru_skip!r}")
    if p.df_gru_skip == "identity" and p.emb_dim != p.df_hidden_dim:
        problems.append(f"df_gru_skip identity needs conv_ch*nb_erb/4 ({p.emb_dim}) == df_hidden_dim ({p.df_hidden_dim})")
    for key, size, groups in (
        ("enc_linear_groups", p.conv_ch * p.nb_df // 2, p.enc_linear_groups),
        ("enc_linear_groups", p.emb_dim, p.enc_linear_groups),
        ("linear_groups", p.emb_dim, p.linear_groups),
        ("linear_groups", p.emb_hidden_dim, p.linear_groups),
        ("linear_groups", p.df_hidden_dim, p.linear_groups),
        ("linear_groups", p.nb_df * 2 * p.df_order, p.linear_groups),
    ):
        if groups < 1 or size % groups:
            problems.append(f"{key} ({groups}) must divide the layer size {size}")
    if p.df_hidden_dim % DF_GRU_LINEAR_GROUPS or p.emb_dim % DF_GRU_LINEAR_GROUPS:
        problems.append(f"df_hidden_dim and conv_ch*nb_erb/4 must divide by {DF_GRU_LINEAR_GROUPS} (df_gru's groups)")
    if not 0 <= p.df_lookahead < p.df_order:
        problems.append(f"df_lookahead must be in 0..df_order-1, got {p.df_lookahead} (df_order {p.df_order})")
    if p.conv_lookahead < p.df_lookahead:
        problems.append(f"conv_lookahead ({p.conv_lookahead}) must be >= df_lookahead ({p.df_lookahead})")
    if not p.lsnr_max > p.lsnr_min:
        problems.append(f"lsnr_max ({p.lsnr_max}) must exceed lsnr_min ({p.lsnr_min})")
    return problems
