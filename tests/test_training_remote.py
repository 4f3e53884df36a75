"""GPU chunks (issue 13 item 5): the packed data a lent GPU trains on, and the table of chunks."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("torch")

from dfnet4_sdk.training.config import TrainConfig  # noqa: E402
from dfnet4_sdk.training.data import MixtureDataset, build_lists  # noqa: E402
from dfnet4_sdk.training.pack import opus_rate, pack  # noqa: E402
from dfnet4_sdk.training.throughput import chunk_row, gpu_markdown  # noqa: E402

FIELDS = ["path", "kind", "sample_rate", "channels", "seconds", "source", "licence", "synthetic", "speaker_or_voice"]


def _tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def _data_root(root: Path) -> None:
    rows = []
    for path, kind, rate, licence in [
        ("speech/vctk_a_16k.flac", "speech", 16000, "CC BY 4.0"),
        ("speech/vctk_b_22k.flac", "speech", 22050, "CC BY 4.0"),
        ("speech/vctk_c_44k.flac", "speech", 44100, "CC BY 4.0"),
        ("speech/freesound_33711_48k.flac", "speech", 48000, "CC BY-NC 3.0"),  # never trained on
        ("noise/fan_48k.flac", "noise", 48000, "CC0"),
        ("rir/room.flac", "rir", 48000, "CC BY 4.0"),
    ]:
        audio = _tone(rate, 0.05 if kind == "rir" else 2.0, 300.0 if kind == "speech" else 1234.0)
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / path, audio, rate)
        rows.append({"path": path, "kind": kind, "sample_rate": rate, "channels": 1, "seconds": len(audio) / rate,
                     "source": "test", "licence": licence, "synthetic": "no", "speaker_or_voice": path})
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)


def test_opus_rate_keeps_the_band():
    assert [opus_rate(r) for r in (8000, 16000, 22050, 32000, 44100, 48000, 96000)] == [
        8000, 16000, 24000, 48000, 48000, 48000, 48000]


def test_pack_holds_what_the_config_trains_on_and_trains(tmp_path):
    source = tmp_path / "data"
    _data_root(source)
    cfg = TrainConfig.load(Path(__file__).parents[1] / "training/configs/dfnet4_lite_distill.toml")
    cfg = replace(cfg, data=replace(cfg.data, data_root=str(source), speech_screen="", corpora=()))
    out = tmp_path / "pack"
    summary = pack(cfg, out, speech_mb=1.0, workers=1)

    with (out / "manifest.csv").open(newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    # the NC file is not packed; every other file is, at a rate Opus stores, with its duration
    assert sorted(rows) == ["noise/fan_48k.ogg", "rir/room.flac", "speech/vctk_a_16k.ogg", "speech/vctk_b_22k.ogg",
                            "speech/vctk_c_44k.ogg"]
    for path, row in rows.items():
        info = sf.info(out / path)
        assert info.samplerate == int(row["sample_rate"])
        assert abs(info.duration - float(row["seconds"])) < 0.01
        assert abs(float(row["seconds"]) - (0.05 if "rir" in path else 2.0)) < 0.01
    assert rows["speech/vctk_b_22k.ogg"]["sample_rate"] == "24000"
    assert rows["speech/vctk_c_44k.ogg"]["sample_rate"] == "48000"
    assert sf.info(out / "speech/vctk_a_16k.ogg").format == "OGG"
    # a 16 kHz tone survives the codec (level within 1 dB, same dominant frequency)
    a, _ = sf.read(source / "speech/vctk_a_16k.flac", dtype="float32")
    b, _ = sf.read(out / "speech/vctk_a_16k.ogg", dtype="float32")
    level = 10 * np.log10(np.mean(b**2) / np.mean(a**2))
    assert abs(level) < 1.0
    assert np.argmax(np.abs(np.fft.rfft(b[:16000]))) == np.argmax(np.abs(np.fft.rfft(a[:16000])))
    assert json.loads((out / "pack.json").read_text())["groups"]["noise"]["files"] == 1
    assert summary["mb"] > 0

    packed = replace(cfg, data=replace(cfg.data, data_root=str(out)))
    lists = build_lists(packed.data)
    assert len(lists.speech) == 3 and len(lists.noise) == 1 and len(lists.rir) == 1
    from dfnet4_sdk.params import DspParams

    batch = MixtureDataset(packed.data, DspParams(), lists, "train").batch(0, 2)
    n = int(round(packed.data.segment_s * 48000))
    assert batch["noisy"].shape[0] == 2 and batch["noisy"].shape[-1] == n


def test_chunk_table_from_what_a_chunk_brought_back(tmp_path):
    chunk = tmp_path / "gpu_chunk1"
    chunk.mkdir()
    log = [{"step": 10 * (i + 1), "s_per_step": 2.0 if i == 0 else 0.25, "t_data": 0.01} for i in range(5)]
    (chunk / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    (chunk / "config.toml").write_text("[data]\nsegment_s = 3.0\n[model]\npreset = 'dfnet4-dfn3conv'\n"
                                         "[optim]\nbatch_size = 32\ndata_workers = 12\n")
    (chunk / "chunk.json").write_text(json.dumps({"step": 50, "device": "NVIDIA H200",
                                                  "held_out": {"ovrl_noisy_real": 2.8, "pesq_ears": 1.95}}))
    row = chunk_row(chunk)
    # the start-up row (2 s/step) is left out: 96 s of audio per 0.25 s step
    assert row["s_per_step"] == pytest.approx(0.25)
    assert row["audio_per_s"] == pytest.approx(384.0)
    assert row["audio_h"] == pytest.approx(50 * 96 / 3600)
    table = gpu_markdown([chunk])
    assert "| gpu_chunk1 | dfnet4-dfn3conv | NVIDIA H200 | 12 | 50 | 32 x 3 s | 1.3 h | 0.250 | 384 | 0.010 s | 2.800 / 1.950 |" in table
