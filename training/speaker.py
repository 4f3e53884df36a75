"""Optional speaker-consistency loss from a fixed spectral statistic.

No pretrained speaker-embedding model is available offline in this project (no hub
downloads), so the "embedding" here is a fixed, parameter-free statistic: the mean and the
standard deviation over speech-active frames of the log ERB band powers, mean-removed and
unit-normalised. It captures the long-term spectral envelope (timbre, formant region, tilt)
and is not a speaker-recognition embedding; the loss is 1 - cosine(enhanced, clean).
A real speaker model (e.g. an ECAPA-TDNN checkpoint a user supplies) can replace it by
providing the same ``loss(enhanced_spec, clean_spec, item_weight)`` method.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dfnet4_sdk.models import spectral
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.training import losses as L

ACTIVE_BELOW_MAX_DB = 40.0  # frames within 40 dB of the clip's loudest clean frame count as speech


class SpectralSpeakerEmbedding:
    def __init__(self, params: DspParams):
        self.widths = spectral.erb_widths_tensor(params)

    def embed(self, spec: Tensor, active: Tensor) -> Tensor:
        """spec [B, 1, T, F_all, 2], active [B, T] bool -> [B, 2E] unit vectors."""
        logp = 10 * torch.log10(L.erb_power(spec, self.widths)[:, 0] + 1e-10)  # [B, T, E]
        w = active.float().unsqueeze(-1)
        n = w.sum(1).clamp_min(1.0)
        mean = (logp * w).sum(1) / n
        std = (((logp - mean.unsqueeze(1)) ** 2 * w).sum(1) / n).clamp_min(1e-6).sqrt()
        emb = torch.cat([mean - mean.mean(-1, keepdim=True), std], dim=-1)
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-6)

    def loss(self, enhanced: Tensor, clean: Tensor, item_weight: Tensor) -> Tensor:
        frame_db = 10 * torch.log10(clean.pow(2).sum(dim=(-1, -2))[:, 0] + 1e-12)  # [B, T]
        active = frame_db > frame_db.max(dim=1, keepdim=True).values - ACTIVE_BELOW_MAX_DB
        cos = (self.embed(enhanced, active) * self.embed(clean, active)).sum(-1)
        return ((1 - cos) * item_weight).sum() / item_weight.sum().clamp_min(1.0)
