"""The DfNet4 DF decoder (``df_dec``): backbone, multi-resolution coefficient heads with a
learnable blend, and the adaptive filter order, all collapsed into ONE ``df_coefs`` tensor
[B, T, F, 2*O] of the maximal order O, layout (tap, re/im), tap 0 the oldest frame.

Why one tensor is exact: the deep filter is linear in its coefficients, so blending the
outputs of several filters equals filtering once with the blended coefficients.

Tap alignment. With look-ahead Ld, tap k of the O-tap filter reads frame t-(O-1-Ld)+k, so the
current frame t is tap O-1-Ld and the look-ahead frames are the last Ld taps. A filter of
order o < O (o > Ld) covers frames t-(o-1-Ld) .. t+Ld: the NEWEST o taps. It is written into
the O-tap layout with zeros on the oldest O-o taps, so every order includes the current frame
and its look-ahead.

Resolutions. Resolution r filters bins 0..bins_r-1 with order_r taps. Bin f is blended only
over the resolutions that cover it (softmax of learnable logits restricted to those), so no
bin ever passes unfiltered noisy input and the weights of every bin sum to 1. Bins above the
smaller resolutions come from the full-band resolution alone.

Adaptive order. A small head predicts, per frame, a distribution over orders
min_df_order..O: Gumbel-softmax samples in training, a hard one-hot (comparison with the
maximum, no data-dependent control flow) in eval. The tap mask sum_o w_o * [k >= O - o] keeps
the newest o taps and multiplies the coefficients.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfnet4_sdk.models.base import StateSpec, StreamingComponent
from dfnet4_sdk.models.dfnet4_blocks import ConvBlock, TensorDict, make_backbone, run_backbone
from dfnet4_sdk.models.layers import GroupedLinear
from dfnet4_sdk.models.dfnet4_params import ModelParams4


def embed_taps(coefs: Tensor, df_order: int, nb_df: int) -> Tensor:
    """[B, T, bins, 2*o] -> [B, T, nb_df, 2*O]: zeros on the oldest O-o taps and above ``bins``."""
    o2, bins = coefs.shape[-1], coefs.shape[-2]
    return F.pad(coefs, (2 * df_order - o2, 0, 0, nb_df - bins))


def order_tap_masks(orders: tuple[int, ...], df_order: int) -> Tensor:
    """[len(orders), 2*O]: row i keeps the newest ``orders[i]`` taps (re and im)."""
    taps = torch.arange(df_order)
    keep = torch.stack([(taps >= df_order - o) for o in orders]).float()  # [N, O]
    return keep.repeat_interleave(2, dim=1)


class DfCoefHead(nn.Module):
    """Backbone features [B, T, H] -> df_coefs [B, T, F, 2*O] (see module docstring)."""

    def __init__(self, p: ModelParams4, hidden: int):
        super().__init__()
        self.df_order, self.nb_df, self.tau = p.df_order, p.dsp.nb_df, p.gumbel_tau
        self.resolutions = p.resolutions
        self.heads = nn.ModuleList(GroupedLinear(hidden, 2 * b * o, p.linear_groups) for b, o in self.resolutions)
        if len(self.resolutions) > 1:
            self.blend_logits = nn.Parameter(torch.zeros(len(self.resolutions), self.nb_df))  # [R, F]
            cover = torch.stack([torch.arange(self.nb_df) < b for b, _ in self.resolutions])
            # additive mask: 0 where resolution r covers bin f, -1e9 (weight 0 after softmax) elsewhere
            self.register_buffer("blend_mask", (~cover).float() * -1e9, persistent=False)
        else:
            self.blend_logits = None
        self.orders = p.adaptive_orders
        if self.orders:
            self.order_net = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, len(self.orders)))
            self.register_buffer("tap_masks", order_tap_masks(self.orders, p.df_order), persistent=False)

    def blend_weights(self) -> Tensor:
        """[R, F]: per-bin softmax over the resolutions that cover the bin (0 elsewhere)."""
        return torch.softmax(self.blend_logits + self.blend_mask, dim=0)

    def order_weights(self, h: Tensor) -> Tensor:
        """[B, T, N] weights over ``self.orders``: Gumbel-softmax (train) or hard one-hot (eval)."""
        logits = self.order_net(h)
        if self.training:
            return F.gumbel_softmax(logits, tau=self.tau, hard=False, dim=-1)
        hard = (logits >= logits.amax(dim=-1, keepdim=True)).to(logits.dtype)
        return hard / hard.sum(dim=-1, keepdim=True)  # exact ties (never seen) share the weight

    def forward(self, h: Tensor, convp: Tensor) -> Tensor:
        """h [B, T, H]; convp [B, T, F, 2*O] the conv-pathway term -> [B, T, F, 2*O]."""
        b, t = h.shape[0], h.shape[1]
        weights = self.blend_weights() if self.blend_logits is not None else None
        coefs = convp
        for r, (head, (bins, order)) in enumerate(zip(self.heads, self.resolutions)):
            c = torch.tanh(head(h)).reshape(b, t, bins, 2 * order)
            c = embed_taps(c, self.df_order, self.nb_df)
            coefs = coefs + (c if weights is None else c * weights[r].unsqueeze(-1))
        if self.orders:
            taps = torch.matmul(self.order_weights(h), self.tap_masks)  # [B, T, 2*O]
            coefs = coefs * taps.unsqueeze(2)
        return coefs


class DfDecoder4(StreamingComponent):
    """df_dec(emb, c0) -> df_coefs [B, T, F, 2*O], plus the hidden ``df_dec_h`` [B, T, H]
    (backbone + skip, the input of the coefficient heads) for intermediate distillation.
    With ``dfn3_layout`` the conv pathway is DFN3's (grouped conv, biased pointwise, ReLU)."""

    input_names = ("emb", "c0")
    output_names = ("df_coefs",)

    def __init__(self, p: ModelParams4):
        super().__init__()
        D, H, O = p.emb_dim, p.df_hidden_dim, p.df_order
        self.df_order, self.nb_df = O, p.dsp.nb_df
        self.backbone = make_backbone(p, "df_dec", D, H, None, p.df_num_layers, p.df_backbone_groups)
        self.skip = GroupedLinear(D, H, p.linear_groups)
        self.convp = ConvBlock(
            "df_dec_convp", p.conv_ch, 2 * O, p.dsp.nb_df, (p.df_pathway_kernel_t, 1),
            act="relu" if p.dfn3_layout else "none", dfn3_layout=p.dfn3_layout,
        )  # fmt: skip
        self.head = DfCoefHead(p, H)

    def state_specs(self) -> tuple[StateSpec, ...]:
        return self.convp.state_specs() + self.backbone.state_specs()

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        emb, c0 = inputs["emb"], inputs["c0"]
        new: TensorDict = {}
        h = run_backbone(self.backbone, emb, state, new, step) + self.skip(emb)  # [B, T, H]
        convp = self.convp(c0, state, new).permute(0, 2, 3, 1)  # [B, 2*O, T, F] -> [B, T, F, 2*O]
        return {"df_coefs": self.head(h, convp), "df_dec_h": h}, new
