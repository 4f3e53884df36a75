"""The fused frame graph: everything of one hop between the FFT and the inverse FFT.

    spectrum of frame t -> features (ERB + unit norm, states) -> enc -> erb_dec / df_dec
    -> libDF stage gating -> ERB mask on frame t-L -> deep filter over the history
    -> enhanced spectrum of frame t-L

One graph call per hop instead of three, and no per-hop numpy work but the FFTs: this is what
makes the runtime faster than the official one. Gating is exact: a stage that libDF would not
run keeps its state (``where``), thresholds are a graph input. It computes exactly what
``dfnet4_sdk.stream`` computes with the three component graphs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from dfnet4_sdk import dsp
from dfnet4_sdk.models.base import COMPONENT_NAMES, EnhancementModel, StateSpec

FRAME_GRAPH = "frame"
# [min_db_thresh, max_db_erb_thresh, max_db_df_thresh] as one graph input.
THRESHOLDS_INPUT = "gating_thresholds_db"


class FrameModule(nn.Module):
    """Wraps a model's three components with the per-hop spectral DSP (see module docstring)."""

    def __init__(self, model: EnhancementModel):
        super().__init__()
        self.model = model
        d = model.dsp
        self.nb_df = d.nb_df
        self.freq_bins = d.freq_bins
        self.df_order = model.df_order
        self.lookahead = model.conv_lookahead_frames
        self.history_len = model.conv_lookahead_frames + model.df_order - model.df_lookahead_frames
        self.df_first = self.history_len - 1 - self.lookahead - (model.df_order - 1 - model.df_lookahead_frames)
        self.register_buffer("erb_fb", torch.from_numpy(dsp.erb_filterbank(d)), persistent=False)  # [F, E]
        self.register_buffer("erb_inv", torch.from_numpy(dsp.erb_inverse_filterbank(d)), persistent=False)  # [E, F]
        self.alpha = float(np.float32(d.norm_alpha))
        initial = dsp.FrontEndState.initial(d)
        self._dsp_states = (
            StateSpec("frame_erb_norm", (1, d.nb_erb), init_values=tuple(initial.erb_norm_state.tolist())),
            StateSpec("frame_unit_norm", (1, d.nb_df), init_values=tuple(initial.unit_norm_state.tolist())),
            StateSpec("frame_spec_history", (1, self.history_len, 2, d.freq_bins)),  # planar, oldest first
        )

    def state_specs(self) -> tuple[StateSpec, ...]:
        return self.model.state_specs() + self._dsp_states

    def initial_state(self) -> dict[str, Tensor]:
        return {s.name: s.initial(1) for s in self.state_specs()}

    def forward(
        self, spec: Tensor, thresholds: Tensor, state: dict[str, Tensor], frame_samples: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """spec [1, F, 2] (frame t, re/im); thresholds [3]; frame_samples [1, 1, 1, hop] for
        models with a waveform path. Returns ({spec_enhanced, spec_noisy [1, F, 2] of frame
        t-L, lsnr [1, 1]}, new state)."""
        a = self.alpha
        # Inside, spectra are planar [1, 2, F] (re row, im row): every slice below is then a
        # contiguous run. Interleaved re/im pairs made each [..., 0] slice F one-float copies
        # in XNNPACK (LiteRT's DfNet4Lite frame graph: 91 us per invoke interleaved, 73 planar).
        x = spec.transpose(1, 2)  # [1, 2, F]
        re, im = x[:, 0], x[:, 1]  # [1, F]
        power = re * re + im * im
        # Features, exactly as dsp.FrontEnd.features_frame.
        erb_db = torch.log10(torch.matmul(power, self.erb_fb) + dsp.ERB_POWER_EPS) * 10.0
        erb_norm = erb_db * (1.0 - a) + state["frame_erb_norm"] * a
        unit_norm = torch.sqrt(power[:, : self.nb_df]) * (1.0 - a) + state["frame_unit_norm"] * a
        feat_erb = ((erb_db - erb_norm) / dsp.ERB_FEATURE_SCALE_DB).reshape(1, 1, 1, -1)
        feat_spec = (x[:, :, : self.nb_df] * torch.rsqrt(unit_norm).unsqueeze(1)).reshape(1, 2, 1, -1)

        # The three components, states passed by name.
        values = {"feat_erb": feat_erb, "feat_spec": feat_spec, "frame_samples": frame_samples}
        new_state: dict[str, Tensor] = {}
        for name in COMPONENT_NAMES:
            comp = self.model.components[name]
            outputs, comp_state = comp.step(
                {k: values[k] for k in comp.input_names}, {s.name: state[s.name] for s in comp.state_specs()}
            )
            values.update(outputs)
            new_state.update(comp_state)

        # libDF stage gating (stream.apply_stages): a skipped stage keeps its state.
        lsnr = values["lsnr"].reshape(1, 1)
        noise_only = lsnr < thresholds[0]
        apply_erb = (lsnr >= thresholds[0]) & (lsnr <= thresholds[1])
        apply_df = apply_erb & (lsnr <= thresholds[2])
        for s in self.model.erb_dec.state_specs():
            new_state[s.name] = torch.where(apply_erb.reshape(1, *([1] * (len(s.shape) - 1))), new_state[s.name], state[s.name])
        for s in self.model.df_dec.state_specs():
            new_state[s.name] = torch.where(apply_df.reshape(1, *([1] * (len(s.shape) - 1))), new_state[s.name], state[s.name])

        history = torch.cat([state["frame_spec_history"][:, 1:], x.unsqueeze(1)], dim=1)  # [1, K, 2, F]
        noisy = history[:, self.history_len - 1 - self.lookahead]  # frame t-L, [1, 2, F]
        gains = torch.matmul(values["erb_mask"].reshape(1, -1), self.erb_inv)  # [1, F]
        # Without the ERB stage: zeros for noise only, ones (no change) above max_db_erb_thresh.
        gains = torch.where(apply_erb, gains, (~noise_only).to(gains.dtype))
        masked = noisy * gains.unsqueeze(1)

        window = history[:, self.df_first : self.df_first + self.df_order, :, : self.nb_df]  # [1, O, 2, Fd]
        coefs = values["df_coefs"].reshape(1, self.nb_df, self.df_order, 2).permute(0, 2, 3, 1)  # [1, O, 2, Fd]
        xr, xi, cr, ci = window[:, :, 0], window[:, :, 1], coefs[:, :, 0], coefs[:, :, 1]  # [1, O, Fd]
        filtered = torch.stack([(xr * cr - xi * ci).sum(1), (xr * ci + xi * cr).sum(1)], dim=1)  # [1, 2, Fd]
        low = torch.where(apply_df.unsqueeze(-1), filtered, masked[:, :, : self.nb_df])
        enhanced = torch.cat([low, masked[:, :, self.nb_df :]], dim=2)

        new_state.update(frame_erb_norm=erb_norm, frame_unit_norm=unit_norm, frame_spec_history=history)
        return {"spec_enhanced": enhanced.transpose(1, 2), "spec_noisy": noisy.transpose(1, 2), "lsnr": lsnr}, new_state
