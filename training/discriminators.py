"""Waveform discriminators for the adversarial loss: multi-period (HiFi-GAN's MPD) and
multi-scale (MelGAN's MSD), least-squares GAN objectives and feature matching.

Sized for CPU training (channels 16..128 instead of HiFi-GAN's 32..1024); weight norm is left
out to keep the modules plain. Shapes: B batch, N samples; every discriminator returns
(logits [B, ...], feature maps list) so feature matching can compare real and fake maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEAK = 0.1
MPD_CHANNELS = (16, 32, 64, 128)
MSD_CHANNELS = (16, 64, 128, 128)


class PeriodDiscriminator(nn.Module):
    """Folds the waveform [B, N] into [B, 1, N/p, p] and convolves along the N/p axis only."""

    def __init__(self, period: int):
        super().__init__()
        self.period = period
        chans = (1,) + MPD_CHANNELS
        self.convs = nn.ModuleList(
            nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3, 1), padding=(2, 0)) for i in range(len(MPD_CHANNELS))
        )
        self.out = nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, n = x.shape
        x = F.pad(x, (0, (-n) % self.period), mode="reflect").reshape(b, 1, -1, self.period)
        return _conv_stack(self.convs, self.out, x)


def _conv_stack(convs: nn.ModuleList, out: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU conv stack then the output conv: (flattened logits, every layer's feature map)."""
    fmaps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LEAK)
        fmaps.append(x)
    x = out(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class ScaleDiscriminator(nn.Module):
    """Strided grouped 1-D convs over the waveform at one scale."""

    def __init__(self):
        super().__init__()
        chans = (1,) + MSD_CHANNELS
        self.convs = nn.ModuleList()
        for i in range(len(MSD_CHANNELS)):
            groups = 1 if i == 0 else 4
            self.convs.append(nn.Conv1d(chans[i], chans[i + 1], 15 if i == 0 else 21, 1 if i == 0 else 4,
                                        padding=7 if i == 0 else 10, groups=groups))
        self.out = nn.Conv1d(chans[-1], 1, 3, padding=1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = x.unsqueeze(1)
        return _conv_stack(self.convs, self.out, x)


class Discriminators(nn.Module):
    """All period discriminators plus ``scales`` scale discriminators (x1, /2, /4 ... by average pooling)."""

    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), scales: int = 3):
        super().__init__()
        self.mpd = nn.ModuleList(PeriodDiscriminator(p) for p in periods)
        self.msd = nn.ModuleList(ScaleDiscriminator() for _ in range(scales))

    def forward(self, x: Tensor) -> list[tuple[Tensor, list[Tensor]]]:
        """x [B, N] (RMS-normalised per item, so the level does not decide real vs fake)."""
        x = x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-5)
        outs = [d(x) for d in self.mpd]
        for i, d in enumerate(self.msd):
            outs.append(d(x if i == 0 else F.avg_pool1d(x.unsqueeze(1), 2**i, 2**i).squeeze(1)))
        return outs

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """LSGAN: (D(real) - 1)^2 + D(fake)^2, averaged over discriminators."""
        total = real.new_zeros(())
        for (r, _), (f, _) in zip(self(real), self(fake)):
            total = total + (r - 1).pow(2).mean() + f.pow(2).mean()
        return total / (len(self.mpd) + len(self.msd))

    def generator_losses(self, fake: Tensor, real: Tensor | None, has_clean: Tensor) -> tuple[Tensor, Tensor | None]:
        """(adversarial (D(fake) - 1)^2, feature-matching L1 to the real maps or None). Only
        items with clean speech take part (real noisy recordings have no real counterpart)."""
        mask = has_clean.bool()
        fake = fake[mask]
        outs_f = self(fake)
        adv = sum((f - 1).pow(2).mean() for f, _ in outs_f) / len(outs_f)
        if real is None:
            return adv, None
        with torch.no_grad():
            outs_r = self(real[mask])
        fm = fake.new_zeros(())
        count = 0
        for (_, maps_f), (_, maps_r) in zip(outs_f, outs_r):
            for mf, mr in zip(maps_f, maps_r):
                fm = fm + (mf - mr).abs().mean()
                count += 1
        return adv, fm / count
