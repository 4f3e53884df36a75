"""Validation on dev_eval/vbd_train (held out: its clean halves are excluded from training):
DNSMOS P.835 (SIG/BAK/OVRL) and wide-band PESQ of the student's output, with the noisy
input and the teacher scored once as reference.

Enhancement uses the model's training form over the whole clip, which equals streaming
(``EnhancementModel.forward``); the STFT delay (fft - hop samples) is removed.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from dfnet4_sdk.audio_io import resample
from dfnet4_sdk.evaluation import Dnsmos, pesq_wb, stoi
from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.training.data import features, load_mono
from dfnet4_sdk.training.distill import run_model

log = logging.getLogger(__name__)

DEV_FOLDER = "dev_eval/vbd_train"
DEV_RATE_HZ = 16000


@functools.lru_cache(maxsize=1)
def dnsmos_single_thread() -> Dnsmos:
    return Dnsmos(num_threads=1)


@torch.no_grad()
def enhance(model: EnhancementModel, audio: np.ndarray, rate: int) -> np.ndarray:
    """Whole-signal enhancement at any rate [N] -> [N] (training form, delay removed)."""
    model_rate = model.dsp.sample_rate_hz
    x = resample(audio.astype(np.float32), rate, model_rate)
    delay = model.dsp.stft_delay_samples
    hop = model.dsp.hop_size_samples
    padded = np.pad(x, (0, delay + (-(len(x) + delay)) % hop))
    device = next(model.parameters()).device
    batch = {k: v[None].to(device) for k, v in features(padded, model.dsp).items()}
    y = run_model(model, batch)["wave"][0].cpu().numpy()[delay : delay + len(x)]
    return resample(y, model_rate, rate)[: len(audio)]


def score(audio: np.ndarray, clean: np.ndarray | None, rate: int) -> dict[str, float]:
    d = dnsmos_single_thread()(audio, rate)
    out = {"sig": d["sig"], "bak": d["bak"], "ovrl": d["ovrl"]}
    if clean is not None:
        out["pesq"] = pesq_wb(clean, audio, rate)
        out["stoi"] = stoi(clean, audio, rate)
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


class DevSet:
    """The first ``clips`` noisy/clean pairs of dev_eval/vbd_train, loaded once."""

    def __init__(self, data_root: Path, clips: int):
        folder = data_root / DEV_FOLDER
        noisy = sorted(folder.glob("*_noisy.flac"))[:clips]
        if not noisy:
            log.warning("no validation clips under %s: validation is skipped", folder)
        self.pairs = [(load_mono(p), load_mono(p.with_name(p.name.replace("_noisy", "_clean")))) for p in noisy]

    def score(self, model: EnhancementModel) -> dict[str, float]:
        if not self.pairs:
            return {"ovrl": float("nan")}
        return _mean([score(enhance(model, n, DEV_RATE_HZ), c, DEV_RATE_HZ) for n, c in self.pairs])

    def reference(self, teacher: EnhancementModel | None) -> dict[str, dict[str, float]]:
        if not self.pairs:
            return {}
        out = {"noisy": _mean([score(n, c, DEV_RATE_HZ) for n, c in self.pairs])}
        if teacher is not None:
            out["teacher"] = self.score(teacher)
        return out
