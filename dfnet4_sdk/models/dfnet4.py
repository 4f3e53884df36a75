"""DfNet4 and DfNet4Lite: the DeepFilterNet4 family, causal and streamable by construction.

Same contract as DFN3 (``base.EnhancementModel``): three components exchanging tensors by
name, every buffer and recurrent state explicit,

    enc(feat_erb, feat_spec[, frame_samples]) -> e0, e1, e2, e3, emb, c0, lsnr   (hybrid_encoder.py)
    erb_dec(emb, e3, e2, e1, e0)             -> erb_mask                       (this module)
    df_dec(emb, c0)                          -> df_coefs                       (multires_df.py)

DfNet4Lite is the same code with the ``dfnet4-lite`` parameters; ``family`` says which.
Dimension letters: B batch, T frames, C conv_ch, E nb_erb, D = C*E/4 embedding width.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models.base import EnhancementModel, StateSpec, StreamingComponent
from dfnet4_sdk.models.dfnet4_blocks import (
    ConvBlock,
    TensorDict,
    make_backbone,
    run_backbone,
    upsample_freq2,
)
from dfnet4_sdk.models.dfnet3 import ConvTransposeNormAct
from dfnet4_sdk.models.hybrid_encoder import Encoder4
from dfnet4_sdk.models.dfnet4_params import PRESETS, ModelParams4
from dfnet4_sdk.models.multires_df import DfDecoder4

__all__ = ["PRESETS", "DfNet4", "DfNet4Lite", "ErbDecoder4", "ModelParams4"]


class ErbDecoder4(StreamingComponent):
    """erb_dec(emb, e3, e2, e1, e0) -> erb_mask [B, 1, T, E]: backbone, then DFN3's U-Net
    decoder (1x1 skip convs, (1, 3) convs, x2 frequency upsampling by repetition; with
    ``dfn3_layout`` DFN3's exact blocks: depthwise skips and transposed-conv upsampling).

    Besides ``erb_mask`` it returns the hidden ``erb_dec_h`` [B, T, D] (backbone output) and
    ``erb_dec_x`` [B, C, T, E] (input of the output conv) for intermediate distillation; graphs
    export only ``output_names``."""

    input_names = ("emb", "e3", "e2", "e1", "e0")
    output_names = ("erb_mask",)

    def __init__(self, p: ModelParams4):
        super().__init__()
        C, E = p.conv_ch, p.dsp.nb_erb
        self.conv_ch, self.bands4 = C, E // 4
        self.backbone = make_backbone(p, "erb_dec", p.emb_dim, p.emb_hidden_dim, p.emb_dim, p.erb_dec_num_layers)
        dfn3 = p.dfn3_layout

        def skip(freq: int) -> ConvBlock:
            return ConvBlock(None, C, C, freq, (1, 1), separable=dfn3, dfn3_layout=dfn3)

        def up(freq: int) -> nn.Module:  # x2 in frequency, then a (1, 3) conv
            return ConvTransposeNormAct(C, C, (1, 3), fstride=2) if dfn3 else ConvBlock(None, C, C, freq, (1, 3))

        self.conv3p, self.convt3 = skip(E // 4), ConvBlock(None, C, C, E // 4, (1, 3), dfn3_layout=dfn3)
        self.conv2p, self.convt2 = skip(E // 4), up(E // 2)
        self.conv1p, self.convt1 = skip(E // 2), up(E)
        self.conv0p = skip(E)
        self.conv0_out = ConvBlock(None, C, 1, E, (1, 3), act="sigmoid", dfn3_layout=dfn3)

    def _up(self, block: nn.Module, x: Tensor, state: Mapping[str, Tensor], new: TensorDict) -> Tensor:
        if isinstance(block, ConvTransposeNormAct):
            return block(x)
        return block(upsample_freq2(x), state, new)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return self.backbone.state_specs()

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        emb = inputs["emb"]
        new: TensorDict = {}
        b, t = emb.shape[0], emb.shape[1]
        h = run_backbone(self.backbone, emb, state, new, step)  # [B, T, D]
        x = h.reshape(b, t, self.bands4, self.conv_ch).permute(0, 3, 1, 2)  # [B, C, T, E/4]
        x = self.convt3(self.conv3p(inputs["e3"], state, new) + x, state, new)  # [B, C, T, E/4]
        x = self._up(self.convt2, self.conv2p(inputs["e2"], state, new) + x, state, new)  # E/2
        x = self._up(self.convt1, self.conv1p(inputs["e1"], state, new) + x, state, new)  # E
        m = self.conv0_out(self.conv0p(inputs["e0"], state, new) + x, state, new)  # [B, 1, T, E]
        return {"erb_mask": m, "erb_dec_h": h, "erb_dec_x": x}, new


class DfNet4(EnhancementModel):
    """The DfNet4 family. ``DfNet4(params)``, ``DfNet4.from_preset(name)``, or ``DfNet4Lite()``."""

    family = "dfnet4"

    def __init__(self, params: ModelParams4 | None = None):
        p = PRESETS["dfnet4"] if params is None else params
        if not isinstance(p, ModelParams4):
            raise ConfigError(f"DfNet4 needs a ModelParams4, got {type(p).__name__}; see DfNet4.from_preset")
        super().__init__(p.dsp, p.df_order, p.df_lookahead_frames, p.conv_lookahead_frames)
        self.params = p
        self.family = p.variant  # "dfnet4" or "dfnet4-lite": one class, the family says which
        self.enc = Encoder4(p)
        self.erb_dec = ErbDecoder4(p)
        self.df_dec = DfDecoder4(p)

    @classmethod
    def from_preset(cls, name: str) -> DfNet4:
        if name not in PRESETS:
            raise ConfigError(f"unknown DfNet4 preset {name!r}; choose one of {sorted(PRESETS)}")
        return _build(PRESETS[name])

    def config_dict(self) -> dict:
        return {"family": self.family, "params": self.params.to_dict()}

    @classmethod
    def from_config(cls, config: Mapping) -> DfNet4:
        if "params" not in config:
            raise ConfigError(
                f"a DfNet4 config has a 'params' entry (ModelParams4.to_dict()); got keys {sorted(config)}"
            )
        params = ModelParams4.from_dict(config["params"])
        family = config.get("family", params.variant)
        if family != params.variant:
            raise ConfigError(f"config family {family!r} does not match params.variant {params.variant!r}")
        return _build(params)


class DfNet4Lite(DfNet4):
    """DfNet4 with the ``dfnet4-lite`` parameters (about half the parameters of DfNet4)."""

    family = "dfnet4-lite"

    def __init__(self, params: ModelParams4 | None = None):
        p = PRESETS["dfnet4-lite"] if params is None else params
        if p.variant != "dfnet4-lite":
            raise ConfigError(f"DfNet4Lite needs params with variant='dfnet4-lite', got {p.variant!r}; use DfNet4")
        super().__init__(p)


def _build(params: ModelParams4) -> DfNet4:
    return DfNet4Lite(params) if params.variant == "dfnet4-lite" else DfNet4(params)
