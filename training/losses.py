"""Loss terms: compressed spectral (model STFT and multi-resolution), ERB mask, local SNR, and
the distillation terms against a teacher's outputs.

Shapes: B batch, T frames, F_all STFT bins, E ERB bands, F deep-filtered bins, O taps,
N samples. Spectra are real tensors [B, 1, T, F_all, 2] (re/im last), as the models use.

Spectra of the libDF front-end are scaled by 1/960 (its analysis normalisation), so compressed
magnitudes are small; ``SPECTRAL_SCALE`` brings each term to order 1 so config weights read
as plain ratios (DFN3's own config uses factors 1000 / 500 for the same reason).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from dfnet4_sdk import dsp
from dfnet4_sdk.params import DspParams

SPECTRAL_SCALE = 1000.0  # DFN3 SpectralLoss factor_magnitude / factor_complex
MULTIRES_SCALE = 20.0  # torch.stft spectra are not scaled by 1/960; 20 puts multires level with spectral
MASK_EXPONENT = 0.6  # DFN3 MaskLoss compares mask**0.6 with the ideal mask**0.6
EPS = 1e-12


def istft(spec: Tensor, params: DspParams) -> Tensor:
    """Torch twin of ``dsp.istft`` (libDF synthesis): [B, 1, T, F_all, 2] -> [B, T*hop].
    Output sample n is input sample n - (fft - hop), as for the numpy form."""
    hop, fft = params.hop_size_samples, params.fft_size
    window = torch.from_numpy(dsp.vorbis_window(fft)).to(spec.device)
    frames = torch.fft.irfft(torch.view_as_complex(spec[:, 0].contiguous()), n=fft, dim=-1, norm="forward")
    frames = frames * window  # [B, T, fft]
    b, t, _ = frames.shape
    first, second = frames[..., :hop].reshape(b, -1), frames[..., hop:].reshape(b, -1)
    return first + F.pad(second, (hop, 0))[:, : t * hop]


def _compress(re: Tensor, im: Tensor, gamma: float) -> tuple[Tensor, Tensor, Tensor]:
    """(re, im) -> (|x|^gamma, re and im of x / |x| * |x|^gamma), |x| clamped to >= sqrt(EPS).

    Written on the re / im planes: a reduction over the size-2 last axis and products broadcast
    from [..., 1] were most of the training step's time on CPU (the spectra are the largest
    tensors of a step). |x|^(gamma - 1) = |x|^gamma * rsqrt(|x|^2): one pow per element, not two."""
    mag2 = torch.addcmul(re * re, im, im).clamp_min(EPS)
    mag_c = mag2.pow(0.5 * gamma)
    scale = mag_c * torch.rsqrt(mag2)
    return mag_c, re * scale, im * scale


class Compressed(NamedTuple):
    """A fixed target spectrum compressed as ``_compress`` does: |x|^g and the re / im planes of
    x / |x| * |x|^g, each [...] (the spectrum's shape without its re/im axis)."""

    mag: Tensor
    re: Tensor
    im: Tensor


@torch.no_grad()
def compress_target(ref: Tensor, gamma: float) -> Compressed:
    """The compressed form of a fixed target [..., 2] for ``spectral_loss`` / ``multires_loss``
    (exactly what they compute from the raw spectrum): made once per batch, in a data worker
    when there is one (objective.Objective.targets), not in the training step."""
    return Compressed(*_compress(ref[..., 0], ref[..., 1], gamma))


def _compressed_error(est: Tensor, ref: Tensor | Compressed, gamma: float, complex_weight: float,
                      errors=None) -> Tensor:
    """Per-bin (1 - c) * (|e|^g - |r|^g)^2 + c * |e_c - r_c|^2 of spectra [..., 2] -> [...];
    ``ref`` the raw target spectrum or its ``compress_target``; ``errors`` as in ``spectral_losses``."""
    errors = errors or _CompressedErrors
    if isinstance(ref, Compressed):
        return errors.apply(est, gamma, complex_weight, *ref)[0]
    if ref.requires_grad and torch.is_grad_enabled():  # gradients to both sides: plain autograd
        mag_e, re_e, im_e = _compress(est[..., 0], est[..., 1], gamma)
        mag_r, re_r, im_r = _compress(ref[..., 0], ref[..., 1], gamma)
        cpl = torch.addcmul((re_e - re_r).square(), im_e - im_r, im_e - im_r)
        return torch.lerp((mag_e - mag_r).square(), cpl, complex_weight)
    with torch.no_grad():
        target = _compress(ref[..., 0], ref[..., 1], gamma)
    return errors.apply(est, gamma, complex_weight, *target)[0]


class _CompressedErrors(torch.autograd.Function):
    """``_compressed_error`` of one estimate against k fixed targets (``Compressed``, flattened):
    k errors, the estimate's compression (m2, mc, s) made once for all of them; the gradient is
    the sum of each target's, gathered before the passes over the estimate. Written out, it has
    the same values and gradients as autograd through ``_compress`` (a test checks both), in
    about a third of the passes over the spectra, which dominate a CPU training step.

    With m2 = max(re^2 + im^2, EPS), mc = m2^(g/2), s = mc / sqrt(m2), dm = mc - mag_r,
    (er, ei) = (re, im) * s - (re_r, im_r):  err = (1 - c) dm^2 + c (er^2 + ei^2) and
    d err / d re = 2c er s + re K,  d err / d im = 2c ei s + im K,
    K = (2 (1 - c) g dm mc + 2c (g - 1) s (er re + ei im)) / m2, and K = 0 where m2 was clamped."""

    @staticmethod
    def forward(ctx, est, gamma: float, cw: float, *targets):
        re, im = est[..., 0], est[..., 1]  # inside the Function: no select nodes whose backward zero-fills [..., 2]
        m2 = torch.addcmul(re * re, im, im)
        clamped = m2 < EPS
        m2.clamp_min_(EPS)
        mc = m2.pow(0.5 * gamma)
        s = mc * torch.rsqrt(m2)
        errs, saved = [], []
        for mag_r, re_r, im_r in zip(targets[0::3], targets[1::3], targets[2::3], strict=True):
            dm = mc - mag_r
            er, ei = torch.addcmul(-re_r, re, s), torch.addcmul(-im_r, im, s)
            errs.append(torch.lerp(dm.square(), torch.addcmul(er * er, ei, ei), cw))
            saved += [dm, er, ei]
        ctx.save_for_backward(re, im, m2, clamped, mc, s, *saved)
        ctx.gamma, ctx.cw = gamma, cw
        return tuple(errs)

    @staticmethod
    def backward(ctx, *grads):
        re, im, m2, clamped, mc, s, *saved = ctx.saved_tensors
        g, c = ctx.gamma, ctx.cw
        k = er_sum = ei_sum = None  # sums over targets of grad * (K m2, er, ei)
        for grad, dm, er, ei in zip(grads, saved[0::3], saved[1::3], saved[2::3]):
            if grad is None:
                continue
            kj = torch.addcmul(er * re, ei, im).mul_(s).mul_(2 * c * (g - 1)).addcmul_(dm, mc, value=2 * (1 - c) * g)
            if k is None:
                k, er_sum, ei_sum = kj.mul_(grad), er * grad, ei * grad
            else:
                k.addcmul_(kj, grad)
                er_sum.addcmul_(er, grad)
                ei_sum.addcmul_(ei, grad)
        k.div_(m2).masked_fill_(clamped, 0.0)
        s2 = s.mul(2 * c)
        grad_est = torch.empty(*re.shape, 2, dtype=re.dtype, device=re.device)  # written once, re/im interleaved
        torch.addcmul(er_sum.mul_(s2), re, k, out=grad_est[..., 0])
        torch.addcmul(ei_sum.mul_(s2), im, k, out=grad_est[..., 1])
        return (grad_est, None, None) + (None,) * len(saved)


def _weighted_mean(err: Tensor, weight: Tensor | None) -> Tensor:
    """sum(err * w) / sum(w expanded to err), the weight broadcast to err's shape. Sums err over
    the axes the weight is constant on first (e.g. time), so only that smaller tensor is weighted."""
    if weight is None:
        return err.mean()
    weight = weight.reshape((1,) * (err.dim() - weight.dim()) + tuple(weight.shape))
    axes = tuple(i for i in range(err.dim()) if weight.shape[i] == 1 and err.shape[i] > 1)
    reduced = err.sum(axes, keepdim=True) if axes else err
    copies = err.numel() // reduced.numel()  # times each weight entry is repeated over err
    return (reduced * weight).sum() / (weight.expand_as(reduced).sum() * copies).clamp_min(1.0)


def spectral_loss(est: Tensor, ref: Tensor | Compressed, gamma: float, complex_weight: float, weight: Tensor | None = None,
                  errors=None) -> Tensor:
    """Compressed magnitude + complex MSE. est, ref [..., F, 2] (or ref's ``compress_target``);
    weight broadcasts to [..., F]; ``errors`` as in ``spectral_losses``."""
    return SPECTRAL_SCALE * _weighted_mean(_compressed_error(est, ref, gamma, complex_weight, errors), weight)


def band_weight(band_limit_hz: Tensor, freqs_hz: Tensor, hf_weight: float, item_weight: Tensor) -> Tensor:
    """[B, 1, 1, F] per-bin weights: 1 up to each item's band limit, ``hf_weight`` above;
    multiplied by ``item_weight`` [B] (0 for items without clean speech)."""
    above = freqs_hz[None, :] > band_limit_hz[:, None] + 1.0
    w = torch.where(above, torch.full_like(above, hf_weight, dtype=torch.float32), torch.ones_like(above, dtype=torch.float32))
    return (w * item_weight[:, None]).reshape(len(band_limit_hz), 1, 1, -1)


def stft_bins_hz(params: DspParams) -> Tensor:
    return torch.arange(params.freq_bins, dtype=torch.float32) * params.sample_rate_hz / params.fft_size


def multires_spectra(x: Tensor, fft_sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
    """The STFTs [B, T, F, 2] of waveforms x [B, N] at each of ``fft_sizes``, as ``multires_loss``
    takes them: a waveform that enters several multires terms (the student's output against the
    clean target and against the teacher) is transformed once per step, not once per term."""
    return tuple(_stft(x, n_fft) for n_fft in fft_sizes)


def multires_loss(
    est: Tensor | tuple[Tensor, ...], ref: Tensor | tuple[Tensor, ...], sample_rate: int, fft_sizes: tuple[int, ...],
    gamma: float, complex_weight: float,
    band_limit_hz: Tensor | None = None, hf_weight: float = 1.0, item_weight: Tensor | None = None, errors=None,
) -> Tensor:
    """Compressed spectral loss over several STFT resolutions of waveforms est, ref [B, N], each
    given as the waveform or as its ``multires_spectra(x, fft_sizes)`` (ref also as the
    ``compress_target`` of each of those); ``errors`` as in ``spectral_losses``."""
    est_specs = multires_spectra(est, fft_sizes) if isinstance(est, Tensor) else est
    ref_specs = multires_spectra(ref, fft_sizes) if isinstance(ref, Tensor) else ref
    first = est_specs[0]
    total = first.new_zeros(())
    item_weight = first.new_ones(first.shape[0]) if item_weight is None else item_weight
    for n_fft, se, sr in zip(fft_sizes, est_specs, ref_specs, strict=True):  # [B, T, F, 2]
        w = _multires_weight(first, n_fft, sample_rate, band_limit_hz, hf_weight, item_weight)
        total = total + spectral_loss(se, sr, gamma, complex_weight, w, errors) * (MULTIRES_SCALE / SPECTRAL_SCALE)
    return total / len(fft_sizes)


def _multires_weight(first: Tensor, n_fft: int, sample_rate: int, band_limit_hz: Tensor | None, hf_weight: float,
                     item_weight: Tensor) -> Tensor:
    """[B, 1, F] bin weights of one multires resolution (band limits, items)."""
    batch = first.shape[0]
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float32, device=first.device) * sample_rate / n_fft
    limit = band_limit_hz if band_limit_hz is not None else first.new_full((batch,), sample_rate / 2)
    return band_weight(limit, freqs, hf_weight, item_weight)[:, 0]


def spectral_losses(est: Tensor, refs: tuple[Compressed, ...], gamma: float, complex_weight: float,
                    weights: tuple[Tensor | None, ...], errors=None) -> list[Tensor]:
    """``spectral_loss`` of one estimate against several compressed targets, each with its
    weight: the estimate is compressed once for all (the supervised and the distillation term).
    ``errors``: the autograd Function that computes them (default ``_CompressedErrors``; the
    compiled form is training/compiled.py's)."""
    errs = (errors or _CompressedErrors).apply(est, gamma, complex_weight, *(t for ref in refs for t in ref))
    return [SPECTRAL_SCALE * _weighted_mean(e, w) for e, w in zip(errs, weights, strict=True)]


def multires_losses(
    est: Tensor | tuple[Tensor, ...], refs: tuple[tuple[Compressed, ...], ...], sample_rate: int,
    fft_sizes: tuple[int, ...], gamma: float, complex_weight: float, weightings: tuple[tuple | None, ...],
    errors=None,
) -> list[Tensor]:
    """``multires_loss`` of one estimate against several targets, each given as the
    ``compress_target`` of every resolution, with its weighting (band_limit_hz, hf_weight,
    item_weight) or None: each resolution of the estimate is compressed once for all targets.
    ``errors`` as in ``spectral_losses``."""
    est_specs = multires_spectra(est, fft_sizes) if isinstance(est, Tensor) else est
    first = est_specs[0]
    ones = first.new_ones(first.shape[0])
    totals = [first.new_zeros(()) for _ in refs]
    for r, (n_fft, se) in enumerate(zip(fft_sizes, est_specs, strict=True)):
        targets = [ref[r] for ref in refs]
        weights = [_multires_weight(first, n_fft, sample_rate, *(wt or (None, 1.0, None))[:2],
                                    ones if wt is None or wt[2] is None else wt[2]) for wt in weightings]
        for i, loss in enumerate(spectral_losses(se, tuple(targets), gamma, complex_weight, tuple(weights), errors)):
            totals[i] = totals[i] + loss * (MULTIRES_SCALE / SPECTRAL_SCALE)
    return [t / len(fft_sizes) for t in totals]


def _stft(x: Tensor, n_fft: int) -> Tensor:
    """[B, N] -> [B, T, F, 2] with a Hann window and hop n_fft / 4, centred: frames first, as
    torch.stft computes them and as the model's spectra are."""
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    if x.requires_grad and torch.is_grad_enabled():
        return _Stft.apply(x, n_fft, window)
    return _frames_first(torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True))


def _frames_first(spec: Tensor) -> Tensor:
    """torch.stft's complex [B, F, T] as the real [B, T, F, 2] its memory already holds (torch
    transforms frame by frame and returns a transposed view): no copy here, and none for the
    gradient, which the errors' backward writes in the same order."""
    return torch.view_as_real(spec.transpose(1, 2))


class _Stft(torch.autograd.Function):
    """``torch.stft`` (centred, reflect-padded, hop n_fft / 4) with its gradient written out:
    each frame's gradient is one inverse real FFT (autograd's is a full complex FFT plus copies
    and an index_add for the overlap-add); the four overlapping quarters are added as shifted
    slices and the reflected padding folded back. 3-4x less time for the student's multires
    STFTs' forward and backward on CPU; the same gradient to float rounding (a test)."""

    @staticmethod
    def forward(ctx, x: Tensor, n_fft: int, window: Tensor) -> Tensor:
        ctx.n_fft, ctx.samples = n_fft, x.shape[-1]
        ctx.save_for_backward(window)
        return _frames_first(torch.stft(x, n_fft, n_fft // 4, window=window, return_complex=True))

    @staticmethod
    def backward(ctx, grad: Tensor):
        (window,) = ctx.saved_tensors
        n_fft, n = ctx.n_fft, ctx.samples
        hop, half = n_fft // 4, n_fft // 2
        bins = grad.new_ones(half + 1)
        bins[1:half] = 0.5  # bins counted twice by irfft's Hermitian symmetry
        g = torch.view_as_complex(grad.contiguous()) * bins  # [B, T, F]; a new tensor: grad is not ours to scale
        frames = torch.fft.irfft(g, n=n_fft, dim=-1, norm="forward") * window  # [B, T, n_fft]
        b, t, _ = frames.shape
        quarters = frames.view(b, t, 4, hop)
        padded = frames.new_zeros(b, max(t + 3, -(-(n + n_fft) // hop)), hop)
        for k in range(4):  # frame t's quarter k lands on hop-block t + k of the padded signal
            padded[:, k : k + t] += quarters[:, :, k]
        padded = padded.view(b, -1)[:, : n + n_fft]  # gradient of the reflect-padded signal
        gx = padded[:, half : half + n].clone()
        gx[:, 1 : half + 1] += padded[:, :half].flip(-1)  # left padding = x[half], ..., x[1]
        gx[:, n - half - 1 : n - 1] += padded[:, half + n :].flip(-1)  # right = x[n-2], ..., x[n-half-1]
        return gx, None, None


def erb_power(spec: Tensor, widths: Tensor) -> Tensor:
    """[B, 1, T, F_all, 2] -> [B, 1, T, E] mean power per ERB band."""
    p = spec.pow(2).sum(-1)
    band = torch.repeat_interleave(torch.arange(len(widths), device=spec.device), widths.to(spec.device))
    out = p.new_zeros(*p.shape[:-1], len(widths)).index_add_(-1, band, p)
    return out / widths.to(p)


def ideal_erb_mask(clean_spec: Tensor, noisy_spec: Tensor, widths: Tensor) -> Tensor:
    """sqrt of the band power ratio, clipped to [0, 1]: [B, 1, T, E]."""
    ratio = erb_power(clean_spec, widths) / erb_power(noisy_spec, widths).clamp_min(EPS)
    return ratio.clamp(0, 1).sqrt()


def mask_loss(mask: Tensor, ideal: Tensor, item_weight: Tensor) -> Tensor:
    err = (mask.clamp_min(0).pow(MASK_EXPONENT) - ideal.pow(MASK_EXPONENT)).pow(2).mean(dim=(1, 2, 3))
    return (err * item_weight).sum() / item_weight.sum().clamp_min(1.0)


def local_snr_target(clean_spec: Tensor, noisy_spec: Tensor, lsnr_range: tuple[float, float]) -> Tensor:
    """Per-frame SNR in dB of clean vs (noisy - clean), clipped to the model's range: [B, T, 1]."""
    s = clean_spec.pow(2).sum(dim=(-1, -2))[:, 0]
    n = (noisy_spec - clean_spec).pow(2).sum(dim=(-1, -2))[:, 0]
    snr = 10 * torch.log10(s.clamp_min(EPS) / n.clamp_min(EPS))
    return snr.clamp(*lsnr_range).unsqueeze(-1)


def lsnr_loss(lsnr: Tensor, target: Tensor, item_weight: Tensor) -> Tensor:
    err = (lsnr - target).pow(2).mean(dim=(1, 2))
    return (err * item_weight).sum() / item_weight.sum().clamp_min(1.0)


def mask_distill_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Bernoulli KL (as BCE) between teacher and student ERB gains, both softened by T on the
    logit scale, times T^2 (Hinton et al.); masks in [0, 1]."""
    logit = lambda m: torch.logit(m.clamp(1e-4, 1 - 1e-4))
    target = torch.sigmoid(logit(teacher) / temperature)
    return F.binary_cross_entropy_with_logits(logit(student) / temperature, target) * temperature**2


def feature_distill_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """MSE of projected student embeddings [B, T, Dt] to the teacher's, per-channel normalised."""
    scale = teacher_emb.detach().pow(2).mean(dim=(0, 1), keepdim=True).clamp_min(1e-6)
    return ((student_emb - teacher_emb).pow(2) / scale).mean()
