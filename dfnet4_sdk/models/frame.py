"""The fused frame graph: everything of one hop between the FFT and the inverse FFT.

    spectrum of frame t -> features (ERB + unit norm, states) -> enc -> erb_dec / df_dec
    -> libDF stage gating -> ERB mask on frame t-L -> deep filter over the history
    -> enhanced spectrum of frame t-L

One graph call per hop instead of three, and no per-hop numpy work but the FFTs: this is what
makes the runtime faster than the official one. Gating is exact: a stage that libDF would not
run keeps its state (its blocks select it: ``base.STAGE_RUNS``), thresholds are a graph input. It computes exactly what
``dfnet4_sdk.stream`` computes with the three component graphs: the stages are the torch twins
(``models/spectral``) of the numpy ones the stream calls (``dfnet4_sdk.stages``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from dfnet4_sdk import dsp
from dfnet4_sdk.models import spectral
from dfnet4_sdk.models.base import STAGE_RUNS, EnhancementModel, StateSpec

FRAME_GRAPH = "frame"
# [min_db_thresh, max_db_erb_thresh, max_db_df_thresh] as one graph input.
THRESHOLDS_INPUT = "gating_thresholds_db"


class FrameModule(nn.Module):
    """Wraps a model's three components with the per-hop spectral DSP (see module docstring)."""

    def __init__(self, model: EnhancementModel):
        super().__init__()
        self.model = model
        d = model.dsp
        self.nb_df, self.nb_erb = d.nb_df, d.nb_erb
        self.freq_bins = d.freq_bins
        self.df_order = model.df_order
        # The history holds frames t-K+1 .. t, oldest first; its first O frames are the DF window of
        # frame t-L (t-L-(O-1-Ld) .. t-L+Ld), with frame t-L at ``past`` (see ``stages``).
        self.history_len = model.conv_lookahead_frames + model.df_order - model.df_lookahead_frames
        self.past = model.df_order - 1 - model.df_lookahead_frames
        # How a gated stage selects its conv buffers (``layers.shift_buffer``): by one row gather
        # (onnxruntime), or by ``where`` (False: LiteRT, whose XNNPACK runs no gather; the TFLite
        # converter sets it). The same values either way.
        self.row_gather = True
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
        return {s.name: s.initial_tensor(1) for s in self.state_specs()}

    def _step(self, name: str, values: dict, state: dict[str, Tensor], runs: Tensor | None = None):
        """One component's step on ``values`` (by its input names): (values with its outputs, its new states)."""
        comp = self.model.components[name]
        comp_state = {s.name: state[s.name] for s in comp.state_specs()}
        if runs is not None:
            comp_state[STAGE_RUNS] = runs.to(torch.long) if self.row_gather else runs
        outputs, new = comp.step({k: values[k] for k in comp.input_names}, comp_state)
        return {**values, **outputs}, new

    def forward(
        self, spec: Tensor, thresholds: Tensor, state: dict[str, Tensor], frame_samples: Tensor | None = None
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """spec [B, F, 2] (frame t, re/im; B streams, 1 for the per-stream frame graph, any
        number for ``frame_streams``); thresholds [3], or [B, 3] per stream; frame_samples [B, 1, 1, hop] for models
        with a waveform path. Returns ({spec_enhanced, spec_noisy [B, F, 2] of frame t-L, lsnr
        [B, 1]}, new state); every state has the stream axis first."""
        # Shapes are written with -1 for the stream axis, never read from a tensor: in an export
        # each read shape is a Shape -> Gather -> Unsqueeze -> Concat chain per reshape.
        # Inside, spectra are planar rows (re row, im row): every slice below is then a contiguous
        # run. Interleaved re/im pairs made each [..., 0] slice F one-float copies in XNNPACK
        # (LiteRT's DfNet4Lite frame graph: 91 us per invoke interleaved, 73 planar).
        x = spec.transpose(1, 2)  # [B, 2, F]
        feat_erb, feat_re, feat_im, erb_norm, unit_norm = spectral.features(
            x[:, 0], x[:, 1], state["frame_erb_norm"], state["frame_unit_norm"], self.erb_fb, self.alpha, self.nb_df
        )
        values = {
            "feat_erb": feat_erb.reshape(-1, 1, 1, self.nb_erb),
            "feat_spec": torch.stack([feat_re, feat_im], dim=1).reshape(-1, 2, 1, self.nb_df),
            "frame_samples": frame_samples,
        }
        # enc, then libDF's stage gating (spectral.gating) from its local SNR, then the two gated
        # stages, each stepped with the streams it runs for (``STAGE_RUNS``): a stream whose stage
        # does not run keeps that stage's states (selected inside its blocks, where it is cheapest).
        values, new_state = self._step("enc", values, state)
        lsnr = values["lsnr"].reshape(-1)  # [B] (T = 1)
        gates = spectral.gating(lsnr, thresholds if thresholds.dim() == 1 else thresholds.transpose(0, 1))
        for name, runs in (("erb_dec", gates.apply_erb_mask), ("df_dec", gates.apply_df)):
            values, new = self._step(name, values, state, runs)
            new_state.update(new)

        history = torch.cat([state["frame_spec_history"][:, 1:], x.unsqueeze(1)], dim=1)  # [B, K, 2, F]
        # The two parts of the DF window (history frames 0 .. O-1) that the stages read: frame
        # t-L (at ``past``) whole, and the window's first D bins; the rest is never copied.
        noisy = history[:, self.past]  # [B, 2, F]
        low = history[:, : self.df_order, :, : self.nb_df]  # [B, O, 2, D]
        re, im = spectral.mask_and_filter_parts(
            noisy[:, 0:1], noisy[:, 1:2], low[:, :, 0], low[:, :, 1],
            values["erb_mask"].reshape(-1, 1, self.nb_erb),
            values["df_coefs"].reshape(-1, 1, self.nb_df, 2 * self.df_order), self.erb_inv, self.df_order,
            spectral.Gates(*(g.reshape(-1, 1) for g in gates)),
        )  # [B, T = 1, F] each
        enhanced = torch.cat([re, im], dim=1).transpose(1, 2)  # [B, F, 2]: one transpose, as the input's

        new_state.update(frame_erb_norm=erb_norm, frame_unit_norm=unit_norm, frame_spec_history=history)
        return {"spec_enhanced": enhanced, "spec_noisy": noisy.transpose(1, 2), "lsnr": lsnr.reshape(-1, 1)}, new_state
