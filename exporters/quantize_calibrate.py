"""Calibration data for quantization: real noisy speech (``calibration_audio``) streamed
through the PyTorch model with every stage on, recording every graph call, so each graph sees
the inputs it gets in deployment, recurrent states included (``calibration_frames``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def calibration_audio(data_dir: str | Path, sample_rate: int, seconds: float = 24.0, seed: int = 0) -> list[np.ndarray]:
    """Real noisy speech for calibration, ``seconds`` in all. From a folder laid out as
    ../shared/data: ``noisy_real/gtcrn_mix_16k.flac`` plus speech + noise mixtures (speech from
    ``speech/synthetic``, real noise from ``noise``, SNR 0..15 dB); ``dev_eval`` and the street
    clip the conformance suite streams are never read. Any other folder: its audio files as is."""
    from dfnet4_sdk.audio_io import read_audio, resample

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder {root} does not exist")

    def load(path: Path) -> np.ndarray:
        audio, sr = read_audio(path)
        return resample(audio.mean(axis=1), sr, sample_rate).astype(np.float32)

    rng = np.random.default_rng(seed)
    speech_dir, noise_dir = root / "speech" / "synthetic", root / "noise"
    clips: list[np.ndarray] = []
    if speech_dir.is_dir() and noise_dir.is_dir():
        speech = sorted(speech_dir.glob("*.flac"))
        noise = sorted(noise_dir.glob("*.flac"))
        real = root / "noisy_real" / "gtcrn_mix_16k.flac"
        if real.is_file():
            clips.append(load(real))
        while sum(len(c) for c in clips) < seconds * sample_rate:
            s = load(speech[rng.integers(len(speech))])
            n = load(noise[rng.integers(len(noise))])
            n = np.tile(n, math.ceil(len(s) / len(n)))[: len(s)]
            snr = rng.uniform(0.0, 15.0)
            gain = np.sqrt(np.sum(s**2) / (np.sum(n**2) * 10 ** (snr / 10) + 1e-12))
            clips.append((s + gain * n).astype(np.float32))
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
        if not files:
            raise FileNotFoundError(f"no audio files (.wav/.flac/.ogg/.mp3) in calibration folder {root}")
        for p in files:
            clips.append(load(p))
            if sum(len(c) for c in clips) >= seconds * sample_rate:
                break
    total, out = int(seconds * sample_rate), []
    for c in clips:
        take = min(len(c), total - sum(len(o) for o in out))
        if take <= 0:
            break
        out.append(c[:take])
    return out


def calibration_frames(model, clips: Iterable[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component graph's per-frame inputs (features, intermediates, states) while the
    clips stream through the PyTorch model, each clip from fresh state."""
    from dfnet4_sdk.exporters.validate import ALL_STAGES, RecordingBackend
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend

    from dfnet4_sdk.stream import EnhancementStream

    recorder = RecordingBackend(TorchBackend(model.eval()))
    for clip in clips:
        stream = EnhancementStream(recorder, ALL_STAGES, fused=False)
        stream.process(clip)
        stream.flush()
    return {g: [inputs for inputs, _ in calls] for g, calls in recorder.calls.items() if calls}
