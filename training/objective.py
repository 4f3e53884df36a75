"""The training objective: every weighted loss term of one step, by name.

    objective = Objective(cfg.loss, student, teacher)      # teacher None for `train`
    out = run_model(student, batch)
    terms = objective.generator_terms(out, batch, teacher_out)   # {name: weighted scalar}
    loss = sum(terms.values())

Supervised terms use items with clean speech only (``has_clean``) and weight bins above a
band-limited file's limit by ``band_limited_hf_weight``; distillation terms use every item.
A weight of 0 switches a term off (its module is not even built).

Intermediate distillation (``distill_hidden``): for each name in ``distill_hidden_names``
(the encoder embedding ``emb`` and the decoder hidden states ``erb_dec_h``, ``erb_dec_x``,
``df_dec_h`` that ``run_model`` keeps) whose student and teacher tensors have the same shape,
the MSE relative to the teacher's mean square, so every state weighs alike whatever its scale.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dfnet4_sdk.models import spectral
from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.training import losses as L
from dfnet4_sdk.training.config import LossConfig
from dfnet4_sdk.training.distill import FeatureProjector, embedding_dim, lsnr_range

log = logging.getLogger(__name__)


class Objective(nn.Module):
    """Holds the trainable helpers of the loss (feature projector, discriminators) and the
    frozen ones (DNSMOS proxy, speaker embedding)."""

    def __init__(self, cfg: LossConfig, student: EnhancementModel, teacher: EnhancementModel | None = None):
        super().__init__()
        self.cfg = cfg
        self.dsp = student.dsp
        # The autograd Function behind the compressed spectral errors (None: losses.py's own);
        # [optim] compile gives the compiled form (training/compiled.py: use_fused_kernels).
        self.compressed_errors = None
        self.target_compressor = None  # the same for the targets' compression (None: L.compress_target)
        self.L = L  # the losses module (the throughput tool's `old` setting gives another revision's)
        self._warned_no_hidden = False
        self.lsnr_range = lsnr_range(student)
        self.register_buffer("widths", spectral.erb_widths_tensor(student.dsp), persistent=False)
        self.register_buffer("freqs_hz", self.L.stft_bins_hz(student.dsp), persistent=False)
        self.projector = None
        if teacher is not None and cfg.distill_feature > 0:
            self.projector = FeatureProjector(embedding_dim(student), embedding_dim(teacher))
        self.discriminator = None
        if cfg.gan > 0 or cfg.feature_matching > 0:
            from dfnet4_sdk.training.discriminators import Discriminators

            self.discriminator = Discriminators(cfg.gan_periods, cfg.gan_scales)
        self.proxy = None
        if cfg.dnsmos_proxy > 0:
            from dfnet4_sdk.training.dnsmos_proxy import DnsmosProxy

            self.proxy = DnsmosProxy.load(cfg.dnsmos_proxy_path).eval().requires_grad_(False)
        self.speaker = None
        if cfg.speaker > 0:
            from dfnet4_sdk.training.speaker import SpectralSpeakerEmbedding

            self.speaker = SpectralSpeakerEmbedding(student.dsp)

    def generator_parameters(self):
        return [] if self.projector is None else list(self.projector.parameters())

    @torch.no_grad()
    def targets(self, batch: Mapping[str, Tensor], teacher_out: Mapping[str, Tensor] | None = None) -> dict[str, Any]:
        """What the terms compare the student with, by term name: the compressed target spectra
        (model resolution and every multires resolution), the ideal ERB mask and the local-SNR
        target. A function of the batch and the teacher's outputs only, so a data worker makes it
        ahead (pipeline.BatchPipeline) and the step keeps only the student's side; the terms are
        the same numbers whichever process made it. Empty with the losses of a commit before
        ``compress_target`` (throughput's ``old``): the terms then transform the raw targets."""
        c, t = self.cfg, {}
        if not hasattr(self.L, "compress_target"):
            return t
        compress = self.target_compressor or self.L.compress_target
        compressed = lambda specs: tuple(compress(s, c.gamma) for s in specs)
        if bool(batch["has_clean"].any()):
            if c.spectral > 0:
                t["spectral"] = compress(batch["clean_spec"], c.gamma)
            if c.multires > 0:
                t["multires"] = compressed(self.L.multires_spectra(self.L.istft(batch["clean_spec"], self.dsp), c.multires_fft_sizes))
            if c.mask > 0:
                t["mask"] = self.L.ideal_erb_mask(batch["clean_spec"], batch["spec"], self.widths)
            if c.lsnr > 0:
                t["lsnr"] = self.L.local_snr_target(batch["clean_spec"], batch["spec"], self.lsnr_range)
        if teacher_out is not None:
            if c.distill_spectral > 0:
                t["d_spectral"] = compress(teacher_out["enhanced"], c.gamma)
            if c.distill_multires > 0:
                t["d_multires"] = compressed(self.L.multires_spectra(teacher_out["wave"], c.multires_fft_sizes))
        return t

    def generator_terms(
        self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor], teacher_out: Mapping[str, Tensor] | None = None,
        targets: Mapping[str, Any] | None = None,
    ) -> dict[str, Tensor]:
        """{name: weighted term}; ``targets``: ``self.targets(batch, teacher_out)`` when made ahead."""
        c = self.cfg
        terms: dict[str, Tensor] = {}
        tg = self.targets(batch, teacher_out) if targets is None else targets
        has_clean = batch["has_clean"].float()
        both_multires = c.multires > 0 and c.distill_multires > 0 and teacher_out is not None and has_clean.sum() > 0
        student_mr = self._student_multires(out) if both_multires else out["wave"]  # transformed once for both
        paired = self._paired_terms(out, batch, tg, student_mr, has_clean) if teacher_out is not None else {}
        if has_clean.sum() > 0:
            w = self.L.band_weight(batch["band_limit_hz"], self.freqs_hz, c.band_limited_hf_weight, has_clean)
            if "spectral" in paired:
                terms["spectral"] = paired["spectral"]
            elif c.spectral > 0:
                terms["spectral"] = c.spectral * self._errors(self.L.spectral_loss)(
                    out["enhanced"], tg.get("spectral", batch["clean_spec"]), c.gamma, c.complex_weight, w
                )
            if "multires" in paired:
                terms["multires"] = paired["multires"]
            elif c.multires > 0:
                clean_mr = tg["multires"] if "multires" in tg else self.L.istft(batch["clean_spec"], self.dsp)
                terms["multires"] = c.multires * self._errors(self.L.multires_loss)(
                    student_mr, clean_mr, self.dsp.sample_rate_hz, c.multires_fft_sizes, c.gamma,
                    c.complex_weight, batch["band_limit_hz"], c.band_limited_hf_weight, has_clean,
                )
            if c.mask > 0:
                ideal = tg["mask"] if "mask" in tg else self.L.ideal_erb_mask(batch["clean_spec"], batch["spec"], self.widths)
                terms["mask"] = c.mask * self.L.mask_loss(out["erb_mask"], ideal, has_clean)
            if c.lsnr > 0:
                target = tg["lsnr"] if "lsnr" in tg else self.L.local_snr_target(batch["clean_spec"], batch["spec"], self.lsnr_range)
                terms["lsnr"] = c.lsnr * self.L.lsnr_loss(out["lsnr"], target, has_clean)
            if self.speaker is not None:
                terms["speaker"] = c.speaker * self.speaker.loss(out["enhanced"], batch["clean_spec"], has_clean)
        if teacher_out is not None:
            terms.update(self._distill_terms(out, teacher_out, student_mr, tg, paired))
        if self.discriminator is not None:
            real = self.L.istft(batch["clean_spec"], self.dsp) if has_clean.sum() > 0 else None
            adv, fm = self.discriminator.generator_losses(out["wave"], real, has_clean)
            if c.gan > 0:
                terms["gan"] = c.gan * adv
            if c.feature_matching > 0 and fm is not None:
                terms["feature_matching"] = c.feature_matching * fm
        if self.proxy is not None:
            terms["dnsmos_proxy"] = c.dnsmos_proxy * (5.0 - self.proxy(out["enhanced"])).mean()
        return terms

    def _student_multires(self, out: Mapping[str, Tensor]) -> Tensor | tuple[Tensor, ...]:
        """The student's waveform at every multires resolution, for both multires terms (supervised
        and distillation) of a step: the STFTs were 15-20% of a step when each term made its own.
        The throughput tool's ``old`` setting swaps in the losses of a commit without
        ``multires_spectra``; those get the waveform and transform it per term, as the old code did."""
        if not hasattr(self.L, "multires_spectra"):
            return out["wave"]
        return self.L.multires_spectra(out["wave"], self.cfg.multires_fft_sizes)

    def _errors(self, loss):
        """``loss`` computing its compressed errors with this objective's Function."""
        return loss if self.compressed_errors is None else functools.partial(loss, errors=self.compressed_errors)

    def _paired_terms(self, out, batch, tg, student_mr, has_clean) -> dict[str, Tensor]:
        """The supervised and distillation spectral terms (model resolution; multires) computed
        together where both are on and both targets are made: the student's spectra are
        compressed once for the clean and the teacher's target. {} with older losses."""
        c, paired = self.cfg, {}
        if not hasattr(self.L, "spectral_losses") or has_clean.sum() == 0:
            return paired
        if c.spectral > 0 and c.distill_spectral > 0 and "spectral" in tg and "d_spectral" in tg:
            w = self.L.band_weight(batch["band_limit_hz"], self.freqs_hz, c.band_limited_hf_weight, has_clean)
            sup, dis = self._errors(self.L.spectral_losses)(out["enhanced"], (tg["spectral"], tg["d_spectral"]), c.gamma, c.complex_weight, (w, None))
            paired["spectral"], paired["d_spectral"] = c.spectral * sup, c.distill_spectral * dis
        if c.multires > 0 and c.distill_multires > 0 and "multires" in tg and "d_multires" in tg:
            weighting = (batch["band_limit_hz"], c.band_limited_hf_weight, has_clean)
            sup, dis = self._errors(self.L.multires_losses)(student_mr, (tg["multires"], tg["d_multires"]), self.dsp.sample_rate_hz,
                                         c.multires_fft_sizes, c.gamma, c.complex_weight, (weighting, None))
            paired["multires"], paired["d_multires"] = c.multires * sup, c.distill_multires * dis
        return paired

    def _distill_terms(
        self, out: Mapping[str, Tensor], t: Mapping[str, Tensor], student_mr: Tensor | tuple[Tensor, ...] | None = None,
        tg: Mapping[str, Any] | None = None, paired: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The distillation terms; ``student_mr`` is the student's waveform or its multires STFTs,
        ``tg`` the precomputed ``targets`` (a term without one transforms the teacher's output),
        ``paired`` the terms ``_paired_terms`` already computed."""
        c, tg = self.cfg, tg or {}
        terms = {k: v for k, v in (paired or {}).items() if k.startswith("d_")}
        if c.distill_spectral > 0 and "d_spectral" not in terms:
            terms["d_spectral"] = c.distill_spectral * self._errors(self.L.spectral_loss)(
                out["enhanced"], tg.get("d_spectral", t["enhanced"]), c.gamma, c.complex_weight
            )
        if c.distill_multires > 0 and "d_multires" not in terms:
            terms["d_multires"] = c.distill_multires * self._errors(self.L.multires_loss)(
                out["wave"] if student_mr is None else student_mr, tg.get("d_multires", t["wave"]), self.dsp.sample_rate_hz,
                c.multires_fft_sizes, c.gamma, c.complex_weight,
            )
        if c.distill_mask > 0:
            terms["d_mask"] = c.distill_mask * self.L.mask_distill_loss(out["erb_mask"], t["erb_mask"], c.temperature)
        if c.distill_lsnr > 0:
            terms["d_lsnr"] = c.distill_lsnr * (out["lsnr"] - t["lsnr"]).pow(2).mean()
        if c.distill_df > 0 and out["df_coefs"].shape == t["df_coefs"].shape:
            terms["d_df"] = c.distill_df * (out["df_coefs"] - t["df_coefs"]).pow(2).mean()
        if self.projector is not None:
            terms["d_feature"] = c.distill_feature * self.L.feature_distill_loss(self.projector(out["emb"]), t["emb"])
        if c.distill_hidden > 0:
            hidden = hidden_distill_terms(out, t, c.distill_hidden_names, c.distill_hidden)
            if not hidden and not self._warned_no_hidden:
                self._warned_no_hidden = True
                log.warning(
                    "distill_hidden > 0 but no hidden state of %s has the teacher's shape: the term is off "
                    "(use a student at the teacher's widths, e.g. the dfnet4-dfn3conv preset)", c.distill_hidden_names
                )
            terms.update(hidden)
        return terms

    def discriminator_loss(self, out: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> Tensor | None:
        """The discriminators' own loss (real = clean speech, fake = the detached output)."""
        has_clean = batch["has_clean"]
        if self.discriminator is None or not bool(has_clean.any()):
            return None
        real = self.L.istft(batch["clean_spec"], self.dsp)[has_clean]
        return self.discriminator.discriminator_loss(real, out["wave"].detach()[has_clean])


def hidden_distill_terms(
    out: Mapping[str, Tensor], teacher_out: Mapping[str, Tensor], names: tuple[str, ...], weight: float
) -> dict[str, Tensor]:
    """{"d_h_<name>": weight * mean((s - t)^2) / mean(t^2)} for each name whose student and
    teacher tensors exist with equal shapes; 0 exactly when the student's state equals the teacher's."""
    terms = {}
    for name in names:
        s, t = out.get(name), teacher_out.get(name)
        if s is None or t is None or s.shape != t.shape:
            continue
        terms[f"d_h_{name}"] = weight * (s - t).pow(2).mean() / (t.pow(2).mean() + 1e-8)
    return terms
