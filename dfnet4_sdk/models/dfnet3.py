"""DeepFilterNet3 (Schröter et al., Interspeech 2023) on the SDK's streaming blocks.

This is an *inference import* of the official ONNX export (``DeepFilterNet3_onnx.tar.gz``) and a
distillation teacher, not a training recipe: the export folded every BatchNorm into the conv
before it, so each conv block here is grouped conv (+ 1x1 pointwise) with a bias and an
activation, exactly the arithmetic of the ONNX graphs. Weights come from
``dfnet4_sdk.models.dfn3_import.load_dfn3``.

Dimension letters (see ``base``): B batch, T frames, E nb_erb, F nb_df, O df_order, C conv_ch.
Derived sizes: the ERB path halves frequency twice (E/4 = 8 bands at E = 32), so the embedding
is D = C * E / 4 = 512 wide; the DF path's second conv halves F (96 -> 48) before a grouped
linear maps C * F / 2 = 3072 to D.

    enc(feat_erb [B,1,T,E], feat_spec [B,2,T,F])
        -> e0 [B,C,T,E], e1 [B,C,T,E/2], e2 [B,C,T,E/4], e3 [B,C,T,E/4],
           emb [B,T,D], c0 [B,C,T,F], lsnr [B,T,1]
    erb_dec(emb, e3, e2, e1, e0) -> erb_mask [B,1,T,E]
    df_dec(emb, c0) -> df_coefs [B,T,F,2*O]   (last axis: tap-major, re/im minor)

Components are causal and never shift time (see ``base``); the feature look-ahead of
``conv_lookahead`` frames is applied by ``EnhancementModel.forward`` or by the streaming runtime.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models.base import STAGE_RUNS, EnhancementModel, StateSpec, StreamingComponent, TensorDict
from dfnet4_sdk.models.dfn3_config import DF_GRU_LINEAR_GROUPS, Dfn3Params
from dfnet4_sdk.models.layers import GRU, CausalConv2d, GroupedLinear

FAMILY = "dfn3"


# ---------------------------------------------------------------------------------------------
# Blocks (generic; candidates for layers.py)


class ConvNormAct(nn.Module):
    """Upstream Conv2dNormAct with its BatchNorm folded: a causal conv with groups
    gcd(in, out) when separable, then a 1x1 pointwise conv when grouped and the kernel is
    larger than 1x1; the folded BN bias sits on the last conv; then the activation.
    Time buffer (if kernel_t > 1): [B, C_in, kernel_t - 1, F_in]."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], fstride: int = 1,
                 separable: bool = True, activation: nn.Module | None = None):
        super().__init__()
        groups = math.gcd(in_ch, out_ch) if separable else 1
        has_pointwise = groups > 1 and max(kernel_size) > 1
        self.conv = CausalConv2d(in_ch, out_ch, kernel_size, fstride=fstride, groups=groups, bias=not has_pointwise)
        self.pointwise = nn.Conv2d(out_ch, out_ch, 1) if has_pointwise else None
        self.act = activation if activation is not None else nn.ReLU()

    @property
    def kernel_t(self) -> int:
        return self.conv.kernel_t

    def forward(self, x: Tensor, buffer: Tensor | None = None, runs: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        y, buffer = self.conv(x, buffer, runs)
        if self.pointwise is not None:
            y = self.pointwise(y)
        return self.act(y), buffer

    step = forward  # exact at T == 1


class ConvTransposeNormAct(nn.Module):
    """Upstream ConvTranspose2dNormAct with BN folded, frequency-only kernel (1, 3): a grouped
    transposed conv that multiplies F by ``fstride``, a 1x1 pointwise conv with bias, ReLU."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: tuple[int, int], fstride: int):
        super().__init__()
        kernel_t, kernel_f = kernel_size
        assert kernel_t == 1, "transposed convs here have no time state"
        groups = math.gcd(in_ch, out_ch)
        fpad = kernel_f // 2
        self.convt = nn.ConvTranspose2d(in_ch, out_ch, kernel_size, stride=(1, fstride), padding=(0, fpad),
                                        output_padding=(0, fpad), groups=groups, bias=groups == 1)
        self.pointwise = nn.Conv2d(out_ch, out_ch, 1) if groups > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        y = self._depthwise_up2(x) if self._is_depthwise_up2() else self.convt(x)
        if self.pointwise is not None:
            y = self.pointwise(y)
        return F.relu(y)


    def _is_depthwise_up2(self) -> bool:
        c = self.convt
        return (isinstance(c, nn.ConvTranspose2d) and c.groups == c.in_channels == c.out_channels and c.bias is None
                and c.kernel_size == (1, 3) and c.stride == (1, 2) and c.padding == (0, 1) and c.output_padding == (0, 1)
                and c.dilation == (1, 1))

    def _depthwise_up2(self, x: Tensor) -> Tensor:
        """``self.convt`` in the depthwise (1, 3) stride-2 case, as products: output bin 2m is
        w1 * x[m], bin 2m + 1 is w2 * x[m] + w0 * x[m + 1] (x beyond the last bin is 0), the same
        values (two-term sums). onnxruntime runs a depthwise ConvTranspose per channel: DFN3's
        two took 8.7% of its batched frame graph at 128 streams."""
        w = self.convt.weight[:, 0, 0]  # [C, 3]
        w0, w1, w2 = (w[:, k].reshape(-1, 1, 1) for k in range(3))
        nxt = F.pad(x[..., 1:], (0, 1))
        return torch.stack([x * w1, x * w2 + nxt * w0], dim=-1).flatten(-2)  # [B, C, T, 2F]


class SqueezedGRU(nn.Module):
    """Upstream SqueezedGRU_S: grouped linear in (+ReLU), GRU, optional grouped linear out (+ReLU).
    State [B, num_layers, hidden]."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int, groups: int, output_size: int | None = None):
        super().__init__()
        self.linear_in = GroupedLinear(input_size, hidden_size, groups)
        self.gru = GRU(hidden_size, hidden_size, num_layers)
        self.linear_out = GroupedLinear(hidden_size, output_size, groups) if output_size is not None else None

    def state_shape(self) -> tuple[int, int, int]:
        return (1, self.gru.num_layers, self.gru.hidden_size)

    def _out(self, y: Tensor) -> Tensor:
        return y if self.linear_out is None else F.relu(self.linear_out(y))

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, T, I], h [B, L, H] -> (y [B, T, O], h)."""
        y, h = self.gru(F.relu(self.linear_in(x)), h)
        return self._out(y), h

    def step(self, x: Tensor, h: Tensor, runs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, 1, I], h [B, L, H] -> (y [B, 1, O], h); streams not in ``runs`` keep h."""
        y, h = self.gru.step(F.relu(self.linear_in(x[:, 0])), h, runs)
        return self._out(y).unsqueeze(1), h


# ---------------------------------------------------------------------------------------------
# Components


class Dfn3Encoder(StreamingComponent):
    """ERB path (4 convs) + DF path (2 convs), embedding GRU and local-SNR head.
    States: enc_erb_conv0 [B,1,kt-1,E], enc_df_conv0 [B,2,kt-1,F] (kt = conv_kernel_inp[0]),
    enc_emb_gru [B,1,emb_hidden_dim]."""

    input_names = ("feat_erb", "feat_spec")
    output_names = ("e0", "e1", "e2", "e3", "emb", "c0", "lsnr")

    def __init__(self, p: Dfn3Params):
        super().__init__()
        self.p = p
        ch = p.conv_ch
        self.erb_conv0 = ConvNormAct(1, ch, p.conv_kernel_inp)
        self.erb_conv1 = ConvNormAct(ch, ch, p.conv_kernel, fstride=2)
        self.erb_conv2 = ConvNormAct(ch, ch, p.conv_kernel, fstride=2)
        self.erb_conv3 = ConvNormAct(ch, ch, p.conv_kernel, fstride=1)
        self.df_conv0 = ConvNormAct(2, ch, p.conv_kernel_inp)
        self.df_conv1 = ConvNormAct(ch, ch, p.conv_kernel, fstride=2)
        self.df_fc_emb = GroupedLinear(ch * p.nb_df // 2, p.emb_dim, p.enc_linear_groups)
        self.emb_gru = SqueezedGRU(p.emb_dim, p.emb_hidden_dim, 1, p.linear_groups, output_size=p.emb_dim)
        self.lsnr_fc = nn.Linear(p.emb_dim, 1)

    def state_specs(self) -> tuple[StateSpec, ...]:
        specs = []
        if self.erb_conv0.kernel_t > 1:
            specs.append(StateSpec("enc_erb_conv0", self.erb_conv0.conv.buffer_shape(self.p.nb_erb)))
            specs.append(StateSpec("enc_df_conv0", self.df_conv0.conv.buffer_shape(self.p.nb_df)))
        specs.append(StateSpec("enc_emb_gru", self.emb_gru.state_shape()))
        return tuple(specs)

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        new_state: TensorDict = {}
        e0, new_state["enc_erb_conv0"] = self.erb_conv0(inputs["feat_erb"], state.get("enc_erb_conv0"))
        e1, _ = self.erb_conv1(e0)
        e2, _ = self.erb_conv2(e1)
        e3, _ = self.erb_conv3(e2)
        c0, new_state["enc_df_conv0"] = self.df_conv0(inputs["feat_spec"], state.get("enc_df_conv0"))
        c1, _ = self.df_conv1(c0)  # [B, C, T, F/2]
        cemb = F.relu(self.df_fc_emb(c1.permute(0, 2, 3, 1).flatten(2)))  # [B, T, D]
        emb = e3.permute(0, 2, 3, 1).flatten(2) + cemb  # [B, T, D]
        gru = self.emb_gru.step if step else self.emb_gru.forward
        emb, new_state["enc_emb_gru"] = gru(emb, state["enc_emb_gru"])
        lsnr = torch.sigmoid(self.lsnr_fc(emb)) * (self.p.lsnr_max - self.p.lsnr_min) + self.p.lsnr_min
        new_state = {s.name: new_state[s.name] for s in self.state_specs()}
        return {"e0": e0, "e1": e1, "e2": e2, "e3": e3, "emb": emb, "c0": c0, "lsnr": lsnr}, new_state


class Dfn3ErbDecoder(StreamingComponent):
    """GRU over the embedding, then a U-Net decoder with encoder skips (1x1 pathway convs) up to
    the ERB mask. Only the GRU has state: erb_dec_emb_gru [B, emb_num_layers-1, emb_hidden_dim]."""

    input_names = ("emb", "e3", "e2", "e1", "e0")
    output_names = ("erb_mask",)

    def __init__(self, p: Dfn3Params):
        super().__init__()
        self.p = p
        ch = p.conv_ch
        self.emb_gru = SqueezedGRU(p.emb_dim, p.emb_hidden_dim, p.emb_num_layers - 1, p.linear_groups, output_size=p.emb_dim)
        self.conv3p = ConvNormAct(ch, ch, (1, 1))
        self.convt3 = ConvNormAct(ch, ch, p.conv_kernel)
        self.conv2p = ConvNormAct(ch, ch, (1, 1))
        self.convt2 = ConvTransposeNormAct(ch, ch, p.conv_kernel, fstride=2)
        self.conv1p = ConvNormAct(ch, ch, (1, 1))
        self.convt1 = ConvTransposeNormAct(ch, ch, p.conv_kernel, fstride=2)
        self.conv0p = ConvNormAct(ch, ch, (1, 1))
        self.conv0_out = ConvNormAct(ch, 1, p.conv_kernel, activation=nn.Sigmoid())

    def state_specs(self) -> tuple[StateSpec, ...]:
        return (StateSpec("erb_dec_emb_gru", self.emb_gru.state_shape()),)

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        if step:
            hidden, h = self.emb_gru.step(inputs["emb"], state["erb_dec_emb_gru"], state.get(STAGE_RUNS))  # [B, T, D]
        else:
            hidden, h = self.emb_gru(inputs["emb"], state["erb_dec_emb_gru"])
        b, t = hidden.shape[0], hidden.shape[1]
        emb = hidden.reshape(b, t, self.p.nb_erb // 4, self.p.conv_ch).permute(0, 3, 1, 2)  # [B, C, T, E/4]
        x = self.convt3(self.conv3p(inputs["e3"])[0] + emb)[0]  # [B, C, T, E/4]
        x = self.convt2(self.conv2p(inputs["e2"])[0] + x)  # [B, C, T, E/2]
        x = self.convt1(self.conv1p(inputs["e1"])[0] + x)  # [B, C, T, E]
        m = self.conv0_out(self.conv0p(inputs["e0"])[0] + x)[0]  # [B, 1, T, E]
        # erb_dec_h / erb_dec_x: hidden states for intermediate distillation (not graph outputs)
        return {"erb_mask": m, "erb_dec_h": hidden, "erb_dec_x": x}, {"erb_dec_emb_gru": h}


class Dfn3DfDecoder(StreamingComponent):
    """DF coefficients: GRU over the embedding (+ grouped-linear skip) -> tanh grouped linear,
    plus a causal (kt x 1) pathway conv over c0. States: df_dec_convp [B,C,kt-1,F]
    (kt = df_pathway_kernel_size_t), df_dec_gru [B, df_num_layers, df_hidden_dim].

    ``df_fc_a`` is upstream's DF mixing weight ("alpha"); DFN3's runtime ignores it, so it is not
    a graph output; ``df_alpha`` computes it for checks."""

    input_names = ("emb", "c0")
    output_names = ("df_coefs",)

    def __init__(self, p: Dfn3Params):
        super().__init__()
        self.p = p
        self.out_ch = 2 * p.df_order  # (tap, re/im)
        self.df_convp = ConvNormAct(p.conv_ch, self.out_ch, (p.df_pathway_kernel_size_t, 1))
        self.df_gru = SqueezedGRU(p.emb_dim, p.df_hidden_dim, p.df_num_layers, DF_GRU_LINEAR_GROUPS)
        self.df_skip = GroupedLinear(p.emb_dim, p.df_hidden_dim, p.linear_groups) if p.df_gru_skip == "groupedlinear" else None
        self.df_out = GroupedLinear(p.df_hidden_dim, p.nb_df * self.out_ch, p.linear_groups)
        self.df_fc_a = nn.Linear(p.df_hidden_dim, 1)

    def state_specs(self) -> tuple[StateSpec, ...]:
        specs = []
        if self.df_convp.kernel_t > 1:
            specs.append(StateSpec("df_dec_convp", self.df_convp.conv.buffer_shape(self.p.nb_df)))
        specs.append(StateSpec("df_dec_gru", self.df_gru.state_shape()))
        return tuple(specs)

    def _hidden(self, emb: Tensor, h: Tensor, step: bool, runs: Tensor | None = None) -> tuple[Tensor, Tensor]:
        c, h = self.df_gru.step(emb, h, runs) if step else self.df_gru(emb, h)  # [B, T, H]
        if self.df_skip is not None:
            c = c + self.df_skip(emb)
        elif self.p.df_gru_skip == "identity":
            c = c + emb
        return c, h

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        emb = inputs["emb"]
        runs = state.get(STAGE_RUNS) if step else None
        c, h = self._hidden(emb, state["df_dec_gru"], step, runs)
        path, buf = self.df_convp(inputs["c0"], state.get("df_dec_convp"), runs)  # [B, 2*O, T, F]
        b, t = emb.shape[0], emb.shape[1]
        coefs = torch.tanh(self.df_out(c)).reshape(b, t, self.p.nb_df, self.out_ch) + path.permute(0, 2, 3, 1)
        new_state = {"df_dec_gru": h}
        if buf is not None:
            new_state["df_dec_convp"] = buf
        return {"df_coefs": coefs, "df_dec_h": c}, new_state  # df_dec_h: for intermediate distillation

    def df_alpha(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor] | None = None) -> Tensor:
        """Upstream's DF alpha [B, T, 1] (sequence form); unused by DFN3 inference."""
        h = state["df_dec_gru"] if state is not None else None
        c, _ = self._hidden(inputs["emb"], h, step=False)
        return torch.sigmoid(self.df_fc_a(c))


# ---------------------------------------------------------------------------------------------
# Model


class DfNet3(EnhancementModel):
    """DeepFilterNet3 as three streaming components (BN folded: inference import / teacher)."""

    family = FAMILY

    def __init__(self, params: Dfn3Params | None = None):
        params = params if params is not None else Dfn3Params()
        super().__init__(params.dsp_params(), params.df_order, params.df_lookahead, params.conv_lookahead)
        self.params = params
        self.enc = Dfn3Encoder(params)
        self.erb_dec = Dfn3ErbDecoder(params)
        self.df_dec = Dfn3DfDecoder(params)

    def config_dict(self) -> dict:
        return {"family": FAMILY, **self.params.to_dict()}

    @classmethod
    def from_config(cls, config: Mapping) -> "DfNet3":
        config = dict(config)
        family = config.pop("family", FAMILY)
        if family != FAMILY:
            raise ConfigError(f"config family is {family!r}, expected {FAMILY!r}")
        return cls(Dfn3Params.from_dict(config))
