"""Distillation helpers: run a model in its training form keeping the intermediates the losses
need, the teacher's targets, and the projection from student to teacher embeddings.

``run_model`` is ``EnhancementModel.forward`` (the training form, aligned exactly like
streaming) that also returns the encoder embedding ``emb``; a test checks both agree.
The teacher (DFN3 by default, official weights) runs without gradients on the same features;
its outputs are targets for every item, including real noisy recordings with no clean speech.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from dfnet4_sdk.models.base import OUTPUT_TIME_AXIS, EnhancementModel
from dfnet4_sdk.training.losses import istft

# Hidden states the decoders return besides their graph outputs (intermediate distillation,
# objective.py), kept when present, with their time axis.
HIDDEN_TIME_AXIS = {"erb_dec_h": 1, "erb_dec_x": 2, "df_dec_h": 1}


def run_model(model: EnhancementModel, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Training form with intermediates: {enhanced [B,1,T,F_all,2], erb_mask [B,1,T,E],
    lsnr [B,T,1], df_coefs [B,T,F,2*O], emb [B,T,D], wave [B,N]} aligned to spectrum frame t."""
    inputs = {name: batch[name] for name in model.frame_input_names}
    out = model.forward_aligned(batch["spec"], inputs, dict(OUTPUT_TIME_AXIS, emb=1, **HIDDEN_TIME_AXIS))
    out["wave"] = istft(out["enhanced"], model.dsp)
    return out


def lsnr_range(model: EnhancementModel) -> tuple[float, float]:
    """The model's local-SNR output range in dB (DFN3 and DfNet4 name it differently)."""
    p = getattr(model, "params", None)
    if hasattr(p, "lsnr_min_db"):
        return (p.lsnr_min_db, p.lsnr_max_db)
    if hasattr(p, "lsnr_min"):
        return (p.lsnr_min, p.lsnr_max)
    return (-15.0, 35.0)  # DFN3's defaults


def check_compatible(student: EnhancementModel, teacher: EnhancementModel) -> list[str]:
    """Problems that make distillation impossible (different front-end or alignment)."""
    problems = []
    if student.dsp != teacher.dsp:
        problems.append(f"front-ends differ: student {student.dsp}, teacher {teacher.dsp}")
    if student.conv_lookahead_frames != teacher.conv_lookahead_frames:
        problems.append(
            f"conv look-ahead differs ({student.conv_lookahead_frames} vs {teacher.conv_lookahead_frames}): "
            "outputs would not align frame by frame"
        )
    return problems


@torch.no_grad()
def teacher_targets(teacher: EnhancementModel, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    teacher.eval()
    return run_model(teacher, batch)


class FeatureProjector(nn.Module):
    """Linear map of the student's embedding [B, T, Ds] to the teacher's width Dt (trained with
    the student; saved in the training checkpoint, never in the exported model)."""

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        self.proj = nn.Linear(student_dim, teacher_dim)

    def forward(self, emb: Tensor) -> Tensor:
        return self.proj(emb)


def embedding_dim(model: EnhancementModel) -> int:
    """Width D of ``emb``, found by running one frame of zeros."""
    dsp = model.dsp
    batch = {
        "spec": torch.zeros(1, 1, 1, dsp.freq_bins, 2),
        "feat_erb": torch.zeros(1, 1, 1, dsp.nb_erb),
        "feat_spec": torch.zeros(1, 2, 1, dsp.nb_df),
    }
    with torch.no_grad():
        return run_model(model, batch)["emb"].shape[-1]
