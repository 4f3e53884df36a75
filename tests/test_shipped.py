"""The shipped default model: packaged, run without torch, equal to its checkpoint, and it enhances."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from audio_data import load_clip

from dfnet4_sdk import Runtime
from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.shipped import DEFAULT_MODEL, SHIPPED_MODELS

HELD_OUT = [f"dev_eval/vbd_train/p287_00{i}" for i in range(1, 7)]  # never in the training mixtures


def test_default_model_is_a_shipped_trained_model():
    assert DEFAULT_MODEL in SHIPPED_MODELS
    shipped = SHIPPED_MODELS[DEFAULT_MODEL]
    assert shipped.checkpoint_path.is_file()
    bundle = Bundle.load(shipped.onnx_bundle_dir)  # verifies schema and every file's sha256
    assert (bundle.manifest.backend, bundle.manifest.precision) == ("onnx", "fp32")
    assert {g.kind for g in bundle.manifest.graphs} == {"component", "frame", "block"}


def test_default_runtime_runs_the_packaged_bundle_without_torch():
    """`Runtime()` must not import torch (apps install no torch) nor export anything."""
    code = (
        "import sys, numpy as np\n"
        "from dfnet4_sdk import Runtime\n"
        "rt = Runtime()\n"
        "y = rt.enhance(np.random.default_rng(0).normal(0, 0.05, 48000).astype(np.float32), 48000)\n"
        "assert y.shape == (48000,) and np.isfinite(y).all()\n"
        "print(rt.backend.name, rt.model_family, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["onnx", "dfnet4-lite", "False"]


def test_packaged_bundle_equals_its_checkpoint():
    """A bundle left stale after the checkpoint changed would fail here."""
    noisy = load_clip(f"{HELD_OUT[0]}_noisy.flac", sample_rate=48000)
    from_bundle = Runtime().enhance(noisy, 48000)
    from_checkpoint = Runtime(DEFAULT_MODEL, backend="torch").enhance(noisy, 48000)
    assert snr_db(from_checkpoint, from_bundle) > 60.0


def test_default_model_enhances_held_out_speech():
    """Wide-band PESQ on the six VoiceBank+DEMAND pairs the training never saw (16 kHz files,
    resampled by the runtime): clearly better on average, and no clip made noticeably worse
    (the -0.75 dB SNR clip p287_004 stays within 0.01 of its input)."""
    from dfnet4_sdk.evaluation import pesq_wb

    rt = Runtime(input_sample_rate=16000)
    gains = []
    for item in HELD_OUT:
        clean = load_clip(f"{item}_clean.flac", sample_rate=16000)
        noisy = load_clip(f"{item}_noisy.flac", sample_rate=16000)
        rt.reset()
        enhanced = np.concatenate([rt.process(noisy), rt.flush()])
        assert enhanced.shape == noisy.shape
        before, after = pesq_wb(clean, noisy, 16000), pesq_wb(clean, enhanced, 16000)
        print(f"{item}: PESQ {before:.3f} -> {after:.3f}")
        gains.append(after - before)
    assert min(gains) > -0.05
    assert np.mean(gains) > 0.2
