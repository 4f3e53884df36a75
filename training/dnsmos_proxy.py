"""A differentiable DNSMOS proxy: a small network that predicts DNSMOS P.835 OVRL from the
model's own output spectrum, fitted to the real DNSMOS scores (``speechmos`` ONNX models via
``dfnet4_sdk.evaluation.Dnsmos``) and validated on held-out clips before it may be used.

    clips = make_fit_clips(data_cfg, teacher, n_mixtures=150)   # noisy, teacher, clean, blends
    proxy, report = fit_proxy(clips)                            # report["pearson_test"]
    proxy.save("training/checkpoints/dnsmos_proxy.pt", report)
    DnsmosProxy.load(path)         # refuses a file without a passing held-out correlation

Input: libDF spectra [B, 1, T, F_all, 2] at the model rate -> log10 ERB band power
[B, T, E] -> per-frame MLP -> GRU -> mean and std over time -> OVRL in [1, 5].
The split is by mixture (all versions of one mixture are on the same side), so the held-out
correlation measures generalisation to unseen speech/noise pairs, not to unseen blends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dfnet4_sdk import dsp
from dfnet4_sdk.errors import ConfigError, ModelImportError
from dfnet4_sdk.models import spectral
from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.training import losses as L
from dfnet4_sdk.training.config import DataConfig
from dfnet4_sdk.training.data import MixtureDataset, build_lists, spec_tensor

log = logging.getLogger(__name__)

PROXY_FORMAT = "dfnet4-sdk-dnsmos-proxy"
MIN_PEARSON = 0.7  # a proxy whose held-out correlation is below this is refused
LOG_POWER_FLOOR = 1e-10
HIDDEN = 48
BLENDS = (0.5,)  # noisy/teacher blends added to each mixture: alpha*noisy + (1-alpha)*teacher


class DnsmosProxy(nn.Module):
    def __init__(self, params: DspParams, hidden: int = HIDDEN):
        super().__init__()
        self.params = params
        self.register_buffer("widths", spectral.erb_widths_tensor(params), persistent=False)
        self.frame = nn.Sequential(nn.Linear(params.nb_erb, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, spec: Tensor) -> Tensor:
        """spec [B, 1, T, F_all, 2] -> predicted OVRL [B]."""
        x = torch.log10(L.erb_power(spec, self.widths)[:, 0] + LOG_POWER_FLOOR) / 5.0 + 1.0  # [B, T, E], ~[-1, 1]
        h, _ = self.gru(self.frame(x))  # [B, T, H]
        pooled = torch.cat([h.mean(1), h.std(1)], dim=-1)
        return 1.0 + 4.0 * torch.sigmoid(self.head(pooled)[:, 0])

    def save(self, path: str | Path, report: dict) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": PROXY_FORMAT, "dsp": self.params.to_dict(), "hidden": self.gru.hidden_size,
                    "state_dict": self.state_dict(), "report": report}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DnsmosProxy:
        if not path or not Path(path).is_file():
            raise ConfigError(f"DNSMOS proxy {path!r} not found; fit one: python -m dfnet4_sdk.training.cli fit-proxy")
        payload = torch.load(path, map_location="cpu", weights_only=False)
        if payload.get("format") != PROXY_FORMAT:
            raise ModelImportError(f"{path} is not a DNSMOS proxy checkpoint")
        r = payload.get("report", {}).get("pearson_test", float("nan"))
        if not r >= MIN_PEARSON:  # also catches NaN: never train against an unvalidated proxy
            raise ModelImportError(f"{path}: held-out Pearson r = {r} < {MIN_PEARSON}; refit the proxy")
        proxy = cls(DspParams.from_dict(payload["dsp"]), payload["hidden"])
        proxy.load_state_dict(payload["state_dict"])
        proxy.report = payload["report"]
        return proxy


@dataclass
class FitClip:
    spec: Tensor  # [1, T, F_all, 2]
    ovrl: float
    mixture: int  # index of the mixture this version came from (the split key)
    version: str


def make_fit_clips(data_cfg: DataConfig, teacher: EnhancementModel, n_mixtures: int, seconds: float = 4.0,
                   seed: int = 777) -> list[FitClip]:
    """Noisy mixtures at the config's SNRs and their teacher-enhanced, clean and blended
    versions, each scored by the real DNSMOS."""
    from dfnet4_sdk.training.validation import dnsmos_single_thread, enhance

    cfg = DataConfig(**{**data_cfg.__dict__, "segment_s": seconds, "seed": seed, "p_clean_only": 0.0})
    params = teacher.dsp
    ds = MixtureDataset(cfg, params, build_lists(cfg), "train")
    scorer = dnsmos_single_thread()
    rate = params.sample_rate_hz
    clips = []
    for i in range(n_mixtures):
        ex = ds.item(i)
        enhanced = enhance(teacher, ex.noisy, rate)
        versions = {"noisy": ex.noisy, "teacher": enhanced, "clean": ex.clean}
        for a in BLENDS:
            versions[f"blend{a}"] = a * ex.noisy + (1 - a) * enhanced
        for name, audio in versions.items():
            if not np.any(audio):
                continue
            ovrl = scorer(audio, rate)["ovrl"]
            clips.append(FitClip(spec_tensor(dsp.stft(audio.astype(np.float32), params)), ovrl, i, name))
        if (i + 1) % 25 == 0:
            log.info("proxy data: %d / %d mixtures scored", i + 1, n_mixtures)
    return clips


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def fit_proxy(clips: list[FitClip], params: DspParams, test_fraction: float = 0.2, epochs: int = 150,
              seed: int = 0) -> tuple[DnsmosProxy, dict]:
    """Fit on (1 - test_fraction) of the mixtures, report correlation on the rest."""
    torch.manual_seed(seed)
    mixtures = sorted({c.mixture for c in clips})
    rng = np.random.default_rng(seed)
    test_mix = set(rng.choice(mixtures, max(1, int(len(mixtures) * test_fraction)), replace=False).tolist())
    train = [c for c in clips if c.mixture not in test_mix]
    test = [c for c in clips if c.mixture in test_mix]
    stack = lambda cs: (torch.stack([c.spec for c in cs]), torch.tensor([c.ovrl for c in cs]))
    xtr, ytr = stack(train)
    xte, yte = stack(test)
    proxy = DnsmosProxy(params)
    opt = torch.optim.Adam(proxy.parameters(), lr=2e-3)
    batch = 32
    for epoch in range(epochs):
        order = torch.randperm(len(train))
        for j in range(0, len(train), batch):
            idx = order[j : j + batch]
            loss = (proxy(xtr[idx]) - ytr[idx]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if (epoch + 1) % 25 == 0:
            with torch.no_grad():
                log.info("proxy epoch %d: train mse %.4f, test r %.3f", epoch + 1, loss.item(),
                         pearson(proxy(xte).numpy(), yte.numpy()))
    proxy.eval()
    with torch.no_grad():
        ptr, pte = proxy(xtr).numpy(), proxy(xte).numpy()
    report = {
        "target": "DNSMOS P.835 OVRL (speechmos sig_bak_ovr.onnx, dfnet4_sdk.evaluation.Dnsmos)",
        "clips_train": len(train), "clips_test": len(test),
        "mixtures_train": len(mixtures) - len(test_mix), "mixtures_test": len(test_mix),
        "pearson_train": pearson(ptr, ytr.numpy()), "pearson_test": pearson(pte, yte.numpy()),
        "rmse_test": float(np.sqrt(np.mean((pte - yte.numpy()) ** 2))),
        "ovrl_range": [float(min(c.ovrl for c in clips)), float(max(c.ovrl for c in clips))],
        "versions": sorted({c.version for c in clips}),
    }
    log.info("DNSMOS proxy: %s", report)
    return proxy, report
