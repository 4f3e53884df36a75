"""Rebuild examples/noisy_speech_48k.flac, the short noisy clip the README's quickstart enhances.

Made by this project from material whose licences allow shipping it (examples/ATTRIBUTION.md):
two VCTK 0.92 utterances of speaker s5 (CC BY 4.0) mixed with Blanket's coffee-shop ambience
(public domain) at 5 dB SNR. Needs ../shared/data (the project's audio); the result is committed,
so a bare clone does not need this script.

    python examples/make_example.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dfnet4_sdk.shared_data import shared_data_dir

HERE = Path(__file__).resolve().parent
DATA = shared_data_dir()  # ../shared/data beside the checkout, or $DFNET4_SDK_DATA
RATE = 48000
SNR_DB = 5.0
GAP_S = 0.4
SPEECH = ("speech/vctk_seflow/clip_s5_185_mic1_48k.flac", "speech/vctk_seflow/noise_s5_085_mic1_48k.flac")
NOISE = "noise/blanket_coffee-shop_00.flac"


def _mono(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(audio.mean(axis=1), rate, RATE) if rate != RATE else audio.mean(axis=1)


def make() -> np.ndarray:
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    parts = [gap]
    for name in SPEECH:
        parts += [_mono(DATA / name), gap]
    speech = np.concatenate(parts)
    noise = _mono(DATA / NOISE)[: speech.size]
    active = np.abs(speech) > 1e-4  # speech power over its active samples, not the gaps
    gain = np.sqrt(np.mean(speech[active] ** 2) / np.mean(noise**2) / 10 ** (SNR_DB / 10))
    noisy = speech + gain * noise
    return (noisy * (0.5 / np.max(np.abs(noisy)))).astype(np.float32)  # peak at -6 dBFS


if __name__ == "__main__":
    out = HERE / "noisy_speech_48k.flac"
    sf.write(out, make(), RATE, subtype="PCM_16")
    print(f"wrote {out}")
