"""Evaluation metrics, item discovery, end-to-end evaluation and plots, on real audio."""

from __future__ import annotations

import socket
import struct
import sys

import numpy as np
import pytest
from audio_data import DATA_DIR, load_clip, mix_at_snr

from dfnet4_sdk import evaluation as ev
from dfnet4_sdk.errors import AudioFileError, BackendNotAvailableError, ConfigError
from dfnet4_sdk.plotting import plot_spectrogram_files, plot_spectrograms, png_size

DEV_EVAL = DATA_DIR / "dev_eval"
SR = 16000


@pytest.fixture(scope="module")
def vbd_pair() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy) VoiceBank+DEMAND train p287_001, 16 kHz."""
    return (load_clip("dev_eval/vbd_train/p287_001_clean.flac", SR),
            load_clip("dev_eval/vbd_train/p287_001_noisy.flac", SR))


@pytest.fixture(scope="module")
def vctk_and_noise() -> tuple[np.ndarray, np.ndarray]:
    """VCTK p286_011 speech (first 4.6 s: one DNSMOS segment) and city noise, 16 kHz."""
    return load_clip("speech/vctk_p286_011_48k.flac", SR, seconds=4.6), load_clip("noise/blanket_city_00.flac", SR, seconds=10.0)


def png_dimensions(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


# -- metrics ---------------------------------------------------------------------------------------
def test_pesq_identity_and_noisy_pair(vbd_pair):
    clean, noisy = vbd_pair
    assert ev.pesq_wb(clean, clean, SR) >= 4.4
    assert 1.0 <= ev.pesq_wb(clean, noisy, SR) <= 3.5
    # any rate is resampled to 16 kHz first
    assert ev.pesq_wb(load_clip("dev_eval/vbd_train/p287_001_clean.flac", 48000),
                      load_clip("dev_eval/vbd_train/p287_001_clean.flac", 48000), 48000) >= 4.4


def test_stoi_and_pesq_remove_delay(vbd_pair):
    import pystoi

    clean, _ = vbd_pair
    delayed = np.concatenate([np.zeros(37, np.float32), clean])[: len(clean)]
    assert ev.aligned(clean, delayed, SR)[2] == 37
    assert ev.stoi(clean, delayed, SR) >= 0.99
    assert ev.stoi(clean, delayed, SR, extended=True) >= 0.99
    assert pystoi.stoi(clean, delayed, SR, extended=True) < 0.97  # what the delay costs unaligned
    assert ev.pesq_wb(clean, delayed, SR) >= 4.4


def test_si_sdr_of_a_mixture_is_its_snr(vctk_and_noise):
    speech, noise = vctk_and_noise
    for snr in (0.0, 10.0):
        mixture = mix_at_snr(speech, noise, snr)
        assert ev.si_sdr(speech, mixture, SR) == pytest.approx(snr, abs=0.5)
        assert ev.si_sdr(speech, 0.3 * np.roll(mixture, 50), SR) == pytest.approx(snr, abs=0.5)  # scale, delay


def test_dnsmos_prefers_clean_speech_and_stays_offline(vctk_and_noise, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("DNSMOS tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    speech, noise = vctk_and_noise
    clean = ev.dnsmos(speech, SR)
    noisy = ev.dnsmos(mix_at_snr(speech, noise, 0.0), SR)
    assert set(clean) == {"sig", "bak", "ovrl", "p808"}
    assert all(1.0 <= v <= 5.0 for v in (*clean.values(), *noisy.values()))
    assert clean["ovrl"] > noisy["ovrl"] + 1.0 and clean["bak"] > noisy["bak"]


def test_dnsmos_matches_speechmos_with_librosa_0_9_1():
    """Reference: speechmos 0.0.1.1 `dnsmos.run` (librosa 0.9.1) on the whole VCTK clip."""
    scores = ev.dnsmos(load_clip("speech/vctk_p286_011_48k.flac", SR), SR)
    expected = {"sig": 3.50949, "bak": 3.98775, "ovrl": 3.20389, "p808": 4.12288}
    assert scores == pytest.approx(expected, abs=0.01)


def test_missing_metric_package_names_the_extra(monkeypatch, vbd_pair):
    monkeypatch.setitem(sys.modules, "pesq", None)
    with pytest.raises(BackendNotAvailableError, match=r'dfnet4-sdk\[eval\]'):
        ev.pesq_wb(*vbd_pair, SR)


# -- finding items ---------------------------------------------------------------------------------
def test_find_eval_items_in_dev_eval():
    items = ev.find_eval_items(DEV_EVAL)
    vbd = [it for it in items if it.group == "vbd_train"]
    ears = [it for it in items if it.group == "ears"]
    assert len(vbd) == 6 and len(ears) == 12 and len(items) == 18
    assert all(it.clean_path is not None and it.clean_path.stem.endswith("_clean") for it in items)
    assert all(it.reference_paths == {} for it in vbd)
    assert all(set(it.reference_paths) == {"deepfilternet3"} for it in ears)
    assert ears[0].name == "ears/0_p102_382" and ears[0].noisy_path.name == "0_p102_382_noisy.flac"


def test_find_eval_items_from_manifests(tmp_path):
    shared = ev.find_eval_items(DATA_DIR / "manifest.csv")  # the data set's own path,kind manifest
    assert len(shared) == 18 and sum(bool(it.reference_paths) for it in shared) == 12
    ears = DEV_EVAL / "ears"
    manifest = tmp_path / "eval.csv"
    manifest.write_text("name,noisy,clean,reference_dfn3\n"
                        f"a,{ears}/0_p102_382_noisy.flac,{ears}/0_p102_382_clean.flac,{ears}/0_p102_382_deepfilternet3.flac\n"
                        f"b,{ears}/0_p102_84_noisy.flac,,\n")
    a, b = ev.find_eval_items(manifest)
    assert a.reference_paths == {"dfn3": ears / "0_p102_382_deepfilternet3.flac"}
    assert b.clean_path is None and b.reference_paths == {}


def test_find_eval_items_says_what_is_wrong(tmp_path):
    with pytest.raises(AudioFileError, match="X_noisy"):
        ev.find_eval_items(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\nx.wav,noisy\n")
    with pytest.raises(ConfigError, match="name,noisy,clean"):
        ev.find_eval_items(bad)
    missing = tmp_path / "missing.csv"
    missing.write_text("name,noisy\nx,nowhere_noisy.wav\n")
    with pytest.raises(AudioFileError, match="do not exist"):
        ev.find_eval_items(missing)


# -- end to end ------------------------------------------------------------------------------------
def test_evaluate_dfn3_improves_pesq(tmp_path):
    from dfnet4_sdk.runtime import Runtime

    items = [it for it in ev.find_eval_items(DEV_EVAL / "vbd_train") if it.name in ("p287_005", "p287_006")]
    rows = ev.evaluate(items, Runtime("dfn3"), plot_dir=tmp_path / "plots")
    assert [(r["item"], r["system"]) for r in rows] == [
        ("p287_005", "noisy"), ("p287_005", "enhanced"), ("p287_006", "noisy"), ("p287_006", "enhanced")]
    for noisy, enhanced in (rows[0:2], rows[2:4]):
        assert enhanced["pesq"] > noisy["pesq"] + 0.3
        assert enhanced["dnsmos_bak"] > noisy["dnsmos_bak"]
        assert abs(enhanced["delay_samples"]) <= 2  # the runtime compensates its delay
    summary = ev.summarise(rows)
    assert [(s["system"], s["items"]) for s in summary] == [("noisy", 2), ("enhanced", 2)]
    table = ev.to_markdown(summary)
    assert "PESQ-WB" in table and "OVRL" in table and len(table.splitlines()) == 4
    ev.to_csv(rows, tmp_path / "rows.csv")
    assert len((tmp_path / "rows.csv").read_text().splitlines()) == 5
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["p287_005.png", "p287_006.png"]
    assert png_dimensions(tmp_path / "plots" / "p287_005.png") == png_size(3)  # noisy, enhanced, clean


def test_evaluate_rejects_unknown_systems():
    items = ev.find_eval_items(DEV_EVAL / "vbd_train")[:1]
    with pytest.raises(ConfigError, match="unknown systems"):
        ev.evaluate(items, systems=("noisy", "dfn2"))


def test_plot_spectrograms_writes_a_png(tmp_path, vbd_pair):
    noisy = vbd_pair[1]
    path = plot_spectrograms(tmp_path / "p.png", {"noisy": (noisy, SR), "clean 48 kHz": (load_clip(
        "dev_eval/vbd_train/p287_001_clean.flac", 48000), 48000)}, title="p287_001")
    assert path.stat().st_size > 10_000
    assert png_dimensions(path) == png_size(2) == (1000, 500)
    pair = {"noisy": DEV_EVAL / "vbd_train/p287_001_noisy.flac", "clean": DEV_EVAL / "vbd_train/p287_001_clean.flac"}
    assert png_dimensions(plot_spectrogram_files(tmp_path / "files.png", pair)) == png_size(2)
