"""Quantization-aware fine-tuning that matches the ONNX int8 scheme (exporters/quantize.py).

What the int8 export quantizes, QAT simulates: every 2-D weight of at least
``MIN_QUANT_WEIGHTS`` elements (GRU and Linear weights: the Gemm / MatMul weights of the
graphs) is rounded to symmetric int8 with one scale per ``block_size`` consecutive inputs of
each output channel, the export's block (``BLOCK_SIZE``). Convolutions, grouped
linears, norms and every state stay float, as in the export.

The rounding is applied with a straight-through estimator by weight swapping, so it works for
any module (``nn.GRU``'s fused weights included) without changing parameter names:

    after optimiser step k:  master += w - q_k   (the update the optimiser made to q_k)
                             w = q_{k+1} = Q(master)
    step k+1's forward and backward run on Q(master); its gradient updates master.

Validation therefore scores the quantized model, ``best.pt`` holds weights on the int8 grid,
and the exporter's symmetric max-abs quantization of those weights reproduces them exactly:
the scales the export writes are the ones training converged to.

    trainer = Trainer(cfg, "runs/qat", callbacks=[QATCallback(export_dir="runs/qat/int8_onnx")])
    trainer.fit()

Activation quantization is not simulated: the shipped ONNX scheme quantizes each Gemm input per
block at run time (MatMulNBits accuracy level 4), which is all that separates a QAT model's
int8 bundle from its float model (DFN3 after 200 QAT steps: 54 dB); static per-tensor
activation scales (QDQ) are not a shipped scheme (docs/QUANTIZATION.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from dfnet4_sdk.exporters.quantize import (
    BLOCK_SIZE_DEFAULT as BLOCK_SIZE,  # the export's MatMulNBits block
)
from dfnet4_sdk.exporters.quantize import (
    MIN_QUANT_WEIGHTS,  # the export's size threshold
)
from dfnet4_sdk.training.trainer import Callback
from torch import nn

log = logging.getLogger(__name__)


def quantized_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the int8 export quantizes, by name: 2-D, at least MIN_QUANT_WEIGHTS."""
    return {n: p for n, p in model.named_parameters() if p.ndim == 2 and p.numel() >= MIN_QUANT_WEIGHTS}


def fake_quant_int8(w: torch.Tensor, block_size: int = BLOCK_SIZE) -> torch.Tensor:
    """Symmetric int8 rounding of a [out, in] weight, one scale per output channel and block
    of ``block_size`` inputs (0: the whole row): q = round(w / s) * s, s = max|block| / 127."""
    out_features, in_features = w.shape
    block = in_features if block_size <= 0 else block_size
    pad = (-in_features) % block
    blocks = nn.functional.pad(w, (0, pad)).reshape(out_features, -1, block)
    scale = blocks.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127.0
    q = torch.clamp(torch.round(blocks / scale), -127, 127) * scale
    return q.reshape(out_features, -1)[:, :in_features]


class QATCallback(Callback):
    """Straight-through int8 weight quantization during training (see the module docstring);
    at the end the weights stay on the int8 grid, the student is saved as ``qat.pt`` in the run
    directory and, with ``export_dir``, exported as a validated ONNX int8 bundle."""

    def __init__(self, block_size: int = BLOCK_SIZE, export_dir: str | Path | None = None,
                 calibration: list | None = None, fixture_audio=None):
        self.block_size = block_size
        self.export_dir = None if export_dir is None else Path(export_dir)
        self.calibration = calibration
        self.fixture_audio = fixture_audio
        self.master: dict[str, torch.Tensor] = {}
        self.quantized: dict[str, torch.Tensor] = {}
        self.bundle = None

    # master weights live here; the model holds their quantized values
    @torch.no_grad()
    def _quantize_into(self, params: dict[str, nn.Parameter]) -> None:
        for name, p in params.items():
            q = fake_quant_int8(self.master[name], self.block_size)
            p.copy_(q)
            self.quantized[name] = q.clone()

    @torch.no_grad()
    def on_train_start(self, trainer) -> None:
        params = quantized_weights(trainer.model)
        if not self.master:  # fresh run (a resumed one restored master in load_state_dict)
            self.master = {n: p.detach().clone() for n, p in params.items()}
        else:
            self.master = {n: m.to(params[n].device) for n, m in self.master.items()}
        self._quantize_into(params)
        log.info("QAT: int8 block-%d fake quantization of %d weights (%d values)", self.block_size, len(params),
                 sum(p.numel() for p in params.values()))

    @torch.no_grad()
    def on_step(self, trainer, step: int, terms: dict[str, float]) -> None:
        params = quantized_weights(trainer.model)
        for name, p in params.items():
            self.master[name] += p - self.quantized[name]
        self._quantize_into(params)

    def on_train_end(self, trainer) -> None:
        from dfnet4_sdk.models import save_checkpoint

        path = trainer.out / "qat.pt"
        save_checkpoint(trainer.model.eval(), path, extra={"step": trainer.step, "qat": f"int8 block {self.block_size}"})
        log.info("QAT: saved %s (weights on the int8 grid)", path)
        if self.export_dir is not None:
            self.bundle = export_qat_bundle(trainer.model, self.export_dir, self.calibration, self.fixture_audio)

    def state_dict(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "master": {k: v.cpu() for k, v in self.master.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.block_size = state["block_size"]
            self.master = dict(state["master"])


def export_qat_bundle(model, out_dir: str | Path, calibration=None, fixture_audio=None):
    """The ONNX int8 bundle of a QAT-trained model (its weights are on the int8 grid, so the
    export's quantization reproduces them); validated like every export."""
    from dataclasses import replace

    from dfnet4_sdk.exporters.base import converter_for, export_bundle

    from dfnet4_sdk.bundle import Bundle, write_manifest

    torch.set_num_threads(1)
    bundle = export_bundle(model.eval().cpu(), converter_for("onnx"), out_dir, precision="int8",
                           fixture_audio=fixture_audio, calibration=calibration, overwrite=True)
    manifest = replace(bundle.manifest, quantization={**bundle.manifest.quantization,
                                                      "training": f"QAT: int8 weights (block {BLOCK_SIZE}) with a straight-through estimator"})
    write_manifest(bundle.root, manifest)
    return Bundle.load(bundle.root)


def qat_finetune(checkpoint: str, out: str | Path, steps: int, config: str | None = None, export: bool = True,
                 device: str = "cpu", mode: str = "train", calibration=None, fixture_audio=None,
                 overrides: dict[str, Any] | None = None):
    """Fine-tune ``checkpoint`` (anything ``load_model`` accepts) with QATCallback for ``steps``
    steps and (``export``) write the ONNX int8 bundle to ``out/int8_onnx``. ``config``: a
    training TOML (default: the trainer's defaults); ``overrides``: {"optim": {...}, ...}."""
    from dataclasses import replace

    from dfnet4_sdk.training.config import TrainConfig
    from dfnet4_sdk.training.trainer import Trainer

    cfg = TrainConfig.load(config) if config else TrainConfig()
    sections = {"data": cfg.data, "model": replace(cfg.model, init_checkpoint=str(checkpoint)),
                "loss": cfg.loss, "optim": replace(cfg.optim, steps=steps)}
    for table, values in (overrides or {}).items():
        sections[table] = replace(sections[table], **values)
    cfg = replace(cfg, **sections)
    out = Path(out)
    callback = QATCallback(export_dir=out / "int8_onnx" if export else None, calibration=calibration,
                           fixture_audio=fixture_audio)
    result = Trainer(cfg, out, mode=mode, device=device, callbacks=[callback]).fit(resume=True)
    return result, callback.bundle
