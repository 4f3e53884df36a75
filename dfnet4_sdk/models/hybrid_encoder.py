"""The DfNet4 encoder (``enc``): magnitude/ERB path, DF-spectrum path, and optionally a phase
path and a waveform path fused by causal within-frame cross-domain attention, followed by
the backbone and the local-SNR head.

Dimension letters: B batch, T frames, C conv_ch, E nb_erb, F nb_df, D = C*E/4 embedding,
K domains (1 + phase + waveform), S hop samples.

Causality: every conv looks back only (explicit buffers); the fusion attends across the K
domain tokens of the *same* frame, never across frames; the backbone is causal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dfnet4_sdk.models.base import StateSpec, StreamingComponent
from dfnet4_sdk.models.dfnet4_blocks import ConvBlock, TensorDict, make_backbone, run_backbone
from dfnet4_sdk.models.layers import GroupedLinear
from dfnet4_sdk.models.dfnet4_params import ModelParams4


class PhasePath(nn.Module):
    """Unit phasors of feat_spec (phase only, magnitude removed) -> convs -> [B, T, D].
    The first conv spans frames t-1 and t, so it sees the phase advance per bin
    (instantaneous frequency). State ``enc_phase_conv0``."""

    def __init__(self, nb_df: int, ch: int, out_dim: int, groups: int):
        super().__init__()
        self.conv0 = ConvBlock("enc_phase_conv0", 2, ch, nb_df, (2, 3))
        self.conv1 = ConvBlock(None, ch, ch, nb_df, (1, 3), fstride=2)
        self.conv2 = ConvBlock(None, ch, ch, self.conv1.freq_out, (1, 3), fstride=2)
        self.fc = GroupedLinear(ch * self.conv2.freq_out, out_dim, groups)

    def forward(self, feat_spec: Tensor, state: Mapping[str, Tensor], new_state: TensorDict) -> Tensor:
        phasor = feat_spec * torch.rsqrt(feat_spec.pow(2).sum(1, keepdim=True) + 1e-12)  # [B, 2, T, F]
        x = self.conv2(self.conv1(self.conv0(phasor, state, new_state), state, new_state), state, new_state)
        return torch.relu(self.fc(x.permute(0, 2, 3, 1).flatten(2)))


class WaveformPath(nn.Module):
    """The current hop of samples [B, 1, T, S], level-normalised per hop (the level is in the
    ERB path) -> two strided 1-D convs within the hop -> [B, T, D]. Stateless."""

    def __init__(self, hop: int, ch: int, out_dim: int, groups: int):
        super().__init__()
        self.conv1 = nn.Conv1d(1, ch, 8, stride=4, padding=2)
        self.conv2 = nn.Conv1d(ch, ch, 8, stride=4, padding=2)
        length = ((hop - 4) // 4 + 1 - 4) // 4 + 1  # conv output length (L + 2*2 - 8) // 4 + 1, twice
        n_in = ch * length
        self.fc = GroupedLinear(n_in, out_dim, math.gcd(groups, math.gcd(n_in, out_dim)))

    def forward(self, samples: Tensor) -> Tensor:
        b, t = samples.shape[0], samples.shape[2]
        x = samples.reshape(-1, 1, samples.shape[3])  # [B*T, 1, S]
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-8)
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))  # [B*T, ch, S/16]
        return torch.relu(self.fc(x.reshape(b, t, -1)))


class DomainFusion(nn.Module):
    """Cross-domain attention inside one frame: the K domain embeddings of frame t attend to
    each other ([B, T, K, K] weights), then a grouped linear merges them to [B, T, D]."""

    def __init__(self, num_domains: int, dim: int, att_dim: int, groups: int):
        super().__init__()
        self.num_domains, self.att_dim = num_domains, att_dim
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * att_dim, bias=False)
        self.out = nn.Linear(att_dim, dim, bias=False)
        self.merge = GroupedLinear(num_domains * dim, dim, groups)

    def forward(self, tokens: list[Tensor]) -> Tensor:
        x = torch.stack(tokens, dim=2)  # [B, T, K, D]
        qkv = self.qkv(self.norm(x))
        a = self.att_dim
        q, k, v = qkv[..., :a], qkv[..., a : 2 * a], qkv[..., 2 * a :]
        w = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * a**-0.5, dim=-1)  # [B, T, K, K]
        x = x + self.out(torch.matmul(w, v))
        return torch.relu(self.merge(x.flatten(2)))


class Encoder4(StreamingComponent):
    """enc(feat_erb, feat_spec[, frame_samples]) -> e0, e1, e2, e3, emb, c0, lsnr."""

    output_names = ("e0", "e1", "e2", "e3", "emb", "c0", "lsnr")

    def __init__(self, p: ModelParams4):
        super().__init__()
        C, E, F, kt, D = p.conv_ch, p.dsp.nb_erb, p.dsp.nb_df, p.conv_kernel_inp_t, p.emb_dim
        self.input_names = ("feat_erb", "feat_spec") + (("frame_samples",) if p.frame_samples_needed else ())
        lay = p.dfn3_layout
        self.erb_conv0 = ConvBlock("enc_erb_conv0", 1, C, E, (kt, 3), dfn3_layout=lay)
        self.erb_conv1 = ConvBlock(None, C, C, E, (1, 3), fstride=2, dfn3_layout=lay)
        self.erb_conv2 = ConvBlock(None, C, C, E // 2, (1, 3), fstride=2, dfn3_layout=lay)
        self.erb_conv3 = ConvBlock(None, C, C, E // 4, (1, 3), dfn3_layout=lay)
        self.df_conv0 = ConvBlock("enc_df_conv0", 2, C, F, (kt, 3), dfn3_layout=lay)
        self.df_conv1 = ConvBlock(None, C, C, F, (1, 3), fstride=2, dfn3_layout=lay)
        self.df_fc_emb = GroupedLinear(C * self.df_conv1.freq_out, D, p.enc_linear_groups)
        hybrid = p.hybrid_encoder
        self.phase = PhasePath(F, p.branch_ch, D, p.enc_linear_groups) if hybrid and p.phase_branch else None
        self.wave = (
            WaveformPath(p.dsp.hop_size_samples, p.branch_ch, D, p.enc_linear_groups)
            if p.frame_samples_needed
            else None
        )
        n_domains = 1 + (self.phase is not None) + (self.wave is not None)
        self.fusion = DomainFusion(n_domains, D, p.fusion_dim, p.enc_linear_groups) if n_domains > 1 else None
        self.backbone = make_backbone(p, "enc", D, p.emb_hidden_dim, D, p.enc_num_layers)
        self.lsnr_fc = nn.Linear(D, 1)
        self.lsnr_scale, self.lsnr_offset = p.lsnr_max_db - p.lsnr_min_db, p.lsnr_min_db

    def _convs(self) -> list[ConvBlock]:
        convs = [self.erb_conv0, self.df_conv0]
        return convs + ([self.phase.conv0] if self.phase is not None else [])

    def state_specs(self) -> tuple[StateSpec, ...]:
        return tuple(s for c in self._convs() for s in c.state_specs()) + self.backbone.state_specs()

    def _run(self, inputs: Mapping[str, Tensor], state: Mapping[str, Tensor], step: bool):
        new: TensorDict = {}
        e0 = self.erb_conv0(inputs["feat_erb"], state, new)  # [B, C, T, E]
        e1 = self.erb_conv1(e0, state, new)  # [B, C, T, E/2]
        e2 = self.erb_conv2(e1, state, new)  # [B, C, T, E/4]
        e3 = self.erb_conv3(e2, state, new)  # [B, C, T, E/4]
        c0 = self.df_conv0(inputs["feat_spec"], state, new)  # [B, C, T, F]
        c1 = self.df_conv1(c0, state, new)  # [B, C, T, F/2]
        emb = e3.permute(0, 2, 3, 1).flatten(2)  # [B, T, D], band-major then channel
        emb = emb + torch.relu(self.df_fc_emb(c1.permute(0, 2, 3, 1).flatten(2)))
        if self.fusion is not None:
            tokens = [emb]
            if self.phase is not None:
                tokens.append(self.phase(inputs["feat_spec"], state, new))
            if self.wave is not None:
                tokens.append(self.wave(inputs["frame_samples"]))
            emb = self.fusion(tokens)
        emb = run_backbone(self.backbone, emb, state, new, step)  # [B, T, D]
        lsnr = torch.sigmoid(self.lsnr_fc(emb)) * self.lsnr_scale + self.lsnr_offset  # [B, T, 1]
        out = {"e0": e0, "e1": e1, "e2": e2, "e3": e3, "emb": emb, "c0": c0, "lsnr": lsnr}
        return out, new
