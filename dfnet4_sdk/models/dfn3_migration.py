"""Migrate a DeepFilterNet3 ``config.ini`` to ``ModelParams4``.

What carries over: the DSP front-end ([df] sr, fft_size, hop_size, nb_erb, nb_df,
min_nb_erb_freqs, norm_tau), the DF geometry (df_order, df_lookahead, conv_lookahead), the
local-SNR range, and the widths / depths / groups of [deepfilternet]. What is new in DfNet4
(backbone, Mamba sizes, hybrid encoder, multi-resolution DF, adaptive order) comes from the
base preset. Every key that is dropped, new, or changed is reported as a warning (returned
and logged); nothing is silently ignored.
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models.dfn3_config import read_config_ini
from dfnet4_sdk.models.dfnet4_params import PRESETS, ModelParams4, derive_resolutions
from dfnet4_sdk.params import DspParams

log = logging.getLogger(__name__)

# [df] key -> DspParams field
_DSP_KEYS = {
    "sr": "sample_rate_hz",
    "fft_size": "fft_size",
    "hop_size": "hop_size_samples",
    "nb_erb": "nb_erb",
    "nb_df": "nb_df",
    "min_nb_erb_freqs": "min_nb_erb_freqs",
    "norm_tau": "norm_tau_s",
}
# [df] / [deepfilternet] key -> ModelParams4 field
_MODEL_KEYS = {
    "df_order": "df_order",
    "df_lookahead": "df_lookahead_frames",
    "lsnr_min": "lsnr_min_db",
    "lsnr_max": "lsnr_max_db",
    "conv_lookahead": "conv_lookahead_frames",
    "conv_ch": "conv_ch",
    "emb_hidden_dim": "emb_hidden_dim",
    "df_hidden_dim": "df_hidden_dim",
    "df_num_layers": "df_num_layers",
    "df_pathway_kernel_size_t": "df_pathway_kernel_t",
    "enc_linear_groups": "enc_linear_groups",
    "linear_groups": "linear_groups",
}
# Keys DfNet4 does not use, with the reason given to the user.
_DROPPED = {
    "conv_depthwise": "DfNet4 convs are always depthwise-separable",
    "convt_depthwise": "DfNet4 convs are always depthwise-separable",
    "conv_kernel": "DfNet4 uses (1, 3) kernels after the input convs",
    "convt_kernel": "DfNet4 upsamples by repetition followed by a (1, 3) conv",
    "conv_dec_mode": "DfNet4 upsamples by repetition followed by a (1, 3) conv",
    "emb_gru_skip_enc": "no backbone skip in enc/erb_dec",
    "emb_gru_skip": "no backbone skip in enc/erb_dec",
    "df_gru_skip": "df_dec always has a grouped-linear skip",
    "enc_concat": "the encoder adds its ERB and DF embeddings",
    "df_n_iter": "one DF iteration",
    "mask_pf": "the post-filter is a runtime option (StreamOptions.post_filter_beta)",
    "pf_beta": "the post-filter is a runtime option (StreamOptions.post_filter_beta)",
    "lsnr_dropout": "training option, not part of the model",
    "gru_type": "see backbone",
    "gru_groups": "see backbone",
    "group_shuffle": "see backbone",
    "dfop_method": "the runtime applies DF",
    "pad_mode": "features are shifted by conv_lookahead_frames",
}


def migrate_dfn3_config(path_or_text: str | Path, base: str = "dfnet4") -> tuple[ModelParams4, list[str]]:
    """Returns (params, warnings). ``base`` names the preset that supplies DfNet4-only settings."""
    if base not in PRESETS:
        raise ConfigError(f"unknown base preset {base!r}; choose one of {sorted(PRESETS)}")
    text = Path(path_or_text).read_text() if _is_path(path_or_text) else str(path_or_text)
    ini = read_config_ini(text)
    warnings: list[str] = []
    params = PRESETS[base]
    dsp = params.dsp.to_dict()
    updates = {}
    dsp_types = {f.name: f.type for f in fields(DspParams)}
    for section in ("df", "deepfilternet"):
        for key, raw in ini.items(section):
            if key in _DSP_KEYS and section == "df":
                name = _DSP_KEYS[key]
                dsp[name] = float(raw) if dsp_types[name] in (float, "float") else int(raw)
            elif key in _MODEL_KEYS:
                name = _MODEL_KEYS[key]
                updates[name] = float(raw) if name.startswith("lsnr") else int(raw)
            elif key == "emb_num_layers":  # DFN3: one layer in enc, the rest in erb_dec
                updates["enc_num_layers"] = 1
                updates["erb_dec_num_layers"] = max(1, int(raw) - 1)
            elif key == "conv_kernel_inp":
                kt, kf = (int(v) for v in raw.split(","))
                updates["conv_kernel_inp_t"] = kt
                if kf != 3:
                    warnings.append(
                        f"[{section}] conv_kernel_inp={raw}: DfNet4 input convs use 3 frequency taps, not {kf}"
                    )
            elif key in _DROPPED:
                warnings.append(f"[{section}] {key}={raw} is not used: {_DROPPED[key]}")
            else:
                warnings.append(f"[{section}] {key}={raw} is unknown to the migration and ignored")
    new = (
        "backbone",
        "mamba_d_state",
        "mamba_d_conv",
        "mamba_expand",
        "hybrid_encoder",
        "phase_branch",
        "waveform_branch",
        "multi_res_df",
        "adaptive_order",
    )
    warnings.append(
        f"new in DfNet4, taken from preset {base!r}: " + ", ".join(f"{k}={getattr(params, k)}" for k in new)
    )
    try:
        dsp_params = DspParams.from_dict(dsp)
        la = updates.get("df_lookahead_frames", params.df_lookahead_frames)
        order = updates.get("df_order", params.df_order)
        if params.adaptive_order and not la < params.min_df_order < order:
            updates["min_df_order"] = la + 1
            warnings.append(f"min_df_order set to {la + 1} (df_lookahead + 1) to keep the current frame a tap")
        if params.multi_res_df and params.df_resolutions:
            updates["df_resolutions"] = derive_resolutions(dsp_params.nb_df, order, la)
        migrated = replace(params, dsp=dsp_params, **updates)
    except ConfigError as e:
        raise ConfigError(f"the migrated DFN3 config is not a valid DfNet4 config: {e}") from e
    for w in warnings:
        log.warning("DFN3 config migration: %s", w)
    return migrated, warnings


def _is_path(value: str | Path) -> bool:
    return isinstance(value, Path) or ("\n" not in value and Path(value).is_file())
