"""`dfsdk run` and `dfsdk import-dfn3` as a user calls them."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from audio_data import data_file, load_clip

from dfnet4_sdk.cli import main
from dfnet4_sdk.metrics import estimate_delay, snr_db


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture()
def noisy_wav(tmp_path) -> Path:
    path = tmp_path / "noisy.wav"
    sf.write(path, load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=16000, seconds=2.0), 16000)
    return path


def test_console_script_enhances_a_file(tmp_path):
    """The installed `dfsdk` entry point, in a subprocess, on a 48 kHz FLAC."""
    src = tmp_path / "street.flac"
    shutil.copy(data_file("noisy_real/dns5_blind_street_48k.flac"), src)
    out = tmp_path / "street_clean.flac"
    exe = Path(sys.executable).with_name("dfsdk")
    proc = subprocess.run([str(exe), "run", str(src), "-o", str(out), "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    x, sr_in = sf.read(src, dtype="float32")
    y, sr_out = sf.read(out, dtype="float32")
    assert sr_out == sr_in == 48000 and y.shape == x.shape
    assert np.sum(y**2) < 0.8 * np.sum(x**2)


def test_run_resamples_and_keeps_length_rate_and_alignment(noisy_wav, tmp_path):
    out = tmp_path / "out.wav"
    result = run_cli("run", str(noisy_wav), "-o", str(out), "--quiet")
    assert result.exit_code == 0, result.output
    x, sr_in = sf.read(noisy_wav, dtype="float32")
    y, sr_out = sf.read(out, dtype="float32")
    assert (sr_out, y.shape) == (sr_in, x.shape)
    assert estimate_delay(x, y, 1600) == 0


def test_run_default_output_name_and_options(noisy_wav):
    result = run_cli("run", str(noisy_wav), "--quiet", "--atten-lim-db", "20", "--post-filter")
    assert result.exit_code == 0, result.output
    assert (noisy_wav.parent / "noisy_enhanced.wav").is_file()


def test_run_enhances_every_channel(tmp_path):
    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=16000, seconds=1.5)
    stereo = np.stack([x, np.roll(x, 800)], axis=1)
    src, out = tmp_path / "stereo.wav", tmp_path / "stereo_out.wav"
    sf.write(src, stereo, 16000, subtype="FLOAT")
    assert run_cli("run", str(src), "-o", str(out), "--quiet").exit_code == 0
    y, _ = sf.read(out, dtype="float32")
    assert y.shape == stereo.shape
    assert not np.allclose(y[:, 0], y[:, 1])


def test_existing_output_is_kept_unless_overwrite(noisy_wav, tmp_path):
    out = tmp_path / "exists.wav"
    out.write_bytes(b"keep me")
    result = run_cli("run", str(noisy_wav), "-o", str(out), "--quiet")
    assert result.exit_code != 0 and "--overwrite" in result.output
    assert out.read_bytes() == b"keep me"
    assert run_cli("run", str(noisy_wav), "-o", str(out), "--quiet", "--overwrite").exit_code == 0
    assert sf.info(out).frames == sf.info(noisy_wav).frames


@pytest.mark.parametrize(
    "make_input, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"RIFF not really audio"), "cannot read"),
        (lambda p: sf.write(p, np.zeros((0,), np.float32), 16000), "no samples"),
        (lambda p: sf.write(p, np.array([0.0, np.nan, 0.1] * 100, np.float32), 16000, subtype="FLOAT"), "NaN"),
    ],
    ids=["missing", "corrupt", "empty", "nan"],
)
def test_bad_input_files_fail_clearly_and_write_nothing(tmp_path, make_input, message):
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    make_input(src)
    result = run_cli("run", str(src), "-o", str(out), "--quiet")
    assert result.exit_code == (2 if message == "does not exist" else 1)  # a bad path is a usage error
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert list(tmp_path.glob(".out.*")) == []  # no temporary left behind


def test_unsupported_output_format_fails_before_work(noisy_wav, tmp_path):
    result = run_cli("run", str(noisy_wav), "-o", str(tmp_path / "out.xyz"), "--quiet")
    assert result.exit_code != 0 and "unknown audio format" in result.output


def test_import_dfn3_writes_a_checkpoint_that_run_uses(noisy_wav, tmp_path):
    ckpt = tmp_path / "dfn3.pt"
    result = run_cli("import-dfn3", "-o", str(ckpt))
    assert result.exit_code == 0, result.output
    assert "2,1" in result.output  # parameter count printed
    out_named, out_ckpt = tmp_path / "a.wav", tmp_path / "b.wav"
    assert run_cli("run", str(noisy_wav), "-o", str(out_named), "--quiet", "--model", "dfn3", "--subtype", "FLOAT").exit_code == 0
    assert run_cli("run", str(noisy_wav), "-o", str(out_ckpt), "--quiet", "--model", str(ckpt), "--subtype", "FLOAT").exit_code == 0
    # The named model may run a shipped reduced-precision bundle (LiteRT fp16), the checkpoint an fp32 export.
    snr = snr_db(sf.read(out_ckpt)[0], sf.read(out_named)[0])
    print(f"dfn3 named vs imported checkpoint: {snr:.1f} dB")
    assert snr >= 50.0


def test_unknown_model_name_is_a_clear_error(noisy_wav, tmp_path):
    result = run_cli("run", str(noisy_wav), "-o", str(tmp_path / "o.wav"), "--model", "nope", "--quiet")
    assert result.exit_code != 0 and "neither an existing file" in result.output


def test_run_plot_writes_a_spectrogram_png(noisy_wav, tmp_path):
    png = tmp_path / "before_after.png"
    result = run_cli("run", str(noisy_wav), "-o", str(tmp_path / "o.wav"), "--quiet", "--plot", str(png))
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_eval_scores_a_folder_and_writes_tables(tmp_path):
    """Two VoiceBank+DEMAND pairs copied into a folder of the documented layout."""
    folder = tmp_path / "set"
    folder.mkdir()
    for n in ("p287_005", "p287_006"):
        for kind in ("clean", "noisy"):
            shutil.copy(data_file(f"dev_eval/vbd_train/{n}_{kind}.flac"), folder / f"{n}_{kind}.flac")
    csv, md = tmp_path / "rows.csv", tmp_path / "summary.md"
    result = run_cli("eval", str(folder), "--quiet", "--csv", str(csv), "--markdown", str(md))
    assert result.exit_code == 0, result.output
    lines = csv.read_text().splitlines()
    assert len(lines) == 1 + 2 * 2  # header + 2 items x (noisy, enhanced)
    assert "enhanced" in md.read_text() and "PESQ" in md.read_text()


def test_import_dfn3_straight_into_a_bundle(tmp_path, noisy_wav):
    out = tmp_path / "dfn3_bundle"
    old = os.umask(0o002)
    try:
        result = run_cli("import-dfn3", "-o", str(out))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert oct(out.stat().st_mode & 0o777) == oct(0o775)  # the umask's, not the staging directory's 0700
    assert (out / "manifest.json").is_file() and (out / "enc.onnx").is_file()
    assert run_cli("run", str(noisy_wav), "-o", str(tmp_path / "x.wav"), "--model", str(out), "--quiet").exit_code == 0


def test_run_names_the_model_and_keeps_the_sample_format(noisy_wav, tmp_path):
    out = tmp_path / "o.wav"
    result = run_cli("run", str(noisy_wav), "-o", str(out), "--quiet", "--model", "dfnet4-lite-v1")
    assert result.exit_code == 0, result.output
    assert "model dfnet4-lite-v1," in result.output and "PCM_16" in result.output  # not the preset's name
    assert sf.info(out).subtype == sf.info(noisy_wav).subtype == "PCM_16"


def test_run_reports_clipping_on_stderr_and_in_the_summary(tmp_path):
    x = load_clip("noisy_real/gtcrn_mix_16k.flac", sample_rate=16000, seconds=2.0)
    src = tmp_path / "loud.wav"
    sf.write(src, 6.0 * x / np.abs(x).max(), 16000, subtype="FLOAT")
    lite = ["--quiet", "--model", "dfnet4-lite-v1"]
    result = CliRunner().invoke(main, ["run", str(src), "-o", str(tmp_path / "o.wav"), "--subtype", "PCM_16", *lite],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    count = int(result.stderr.split("warning: ")[1].split()[0])
    assert count > 100 and f"{count} samples clipped" in result.stdout
    assert "clipped" not in run_cli("run", str(src), "-o", str(tmp_path / "f.wav"), *lite).output  # FLOAT kept


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model fails the test: the checks must come before any work."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr("dfnet4_sdk.runtime.Runtime", refuse)


@pytest.mark.parametrize(
    "output, extra, message",
    [
        ("/proc/o.wav", [], "cannot write in /proc"),
        ("{tmp}/nodir/o.wav", [], "does not exist"),
        ("{tmp}/o.raw", [], "headerless .raw"),
        ("{tmp}/o.flac", ["--subtype", "FLOAT"], "FLAC takes"),
        ("{tmp}/o.wav", ["--subtype", "NOPE"], "WAV takes"),
        ("{tmp}/o.wav", ["--plot", "{tmp}/p.jpg"], "must end in .png"),
        ("{tmp}/o.wav", ["--plot", "{tmp}/nodir/p.png"], "does not exist"),
        ("{tmp}/o.wav", ["--plot", "/proc/p.png"], "cannot write --plot in /proc"),
    ],
    ids=["unwritable-dir", "missing-dir", "raw", "flac-float", "bad-subtype", "plot-suffix", "plot-dir", "plot-unwritable"],
)
def test_run_bad_paths_fail_before_work_with_usage_code(noisy_wav, tmp_path, no_model, output, extra, message):
    args = [a.format(tmp=tmp_path) for a in ["run", str(noisy_wav), "-o", output, "--quiet", *extra]]
    before = sorted(os.listdir(tmp_path))
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == before


def test_run_mp3_at_96k_fails_before_work(tmp_path, no_model):
    src = tmp_path / "hi.wav"
    sf.write(src, np.full(9600, 0.01, np.float32), 96000)
    result = run_cli("run", str(src), "-o", str(tmp_path / "o.mp3"), "--quiet")
    assert result.exit_code == 2 and "only supports sample rates" in result.output
    assert os.listdir(tmp_path) == ["hi.wav"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "--target", "onnx", "-o", "/proc/x"], "cannot write bundle directory /proc/x"),
        (["export", "--target", "onnx", "-o", "{tmp}/b", "--fixture-seconds", "0"], "--fixture-seconds"),
        (["import-dfn3", "-o", "/proc/x.pt"], "cannot write output in /proc"),
        (["import-dfn3", "-o", "/proc/x"], "cannot write output /proc/x"),
        (["eval", "{tmp}", "--csv", "/proc/x.csv"], "cannot write --csv in /proc"),
        (["eval", "{tmp}", "--markdown", "{tmp}/x.txt"], "must end in .md"),
        (["eval", "{tmp}", "--quiet"], "no evaluation items"),
        (["eval", "{tmp}/f.txt", "--quiet"], "neither a folder nor a .csv"),
    ],
)
def test_other_commands_refuse_bad_paths_before_work(tmp_path, args, message):
    (tmp_path / "f.txt").write_text("not audio")
    result = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_an_unexpected_error_is_a_message_not_a_traceback(noisy_wav, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("boom")

    monkeypatch.setattr("dfnet4_sdk.files.enhance_file", broken)
    result = run_cli("run", str(noisy_wav), "-o", str(tmp_path / "o.wav"), "--quiet")
    assert result.exit_code == 1
    assert "unexpected TypeError: boom" in result.output and "-vv" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_leaves_no_file_and_exits_conventionally(tmp_path, sig, code):
    """`dfsdk run` on 3 minutes of audio, signalled once it has written its first block."""
    x = load_clip("noisy_real/dns5_blind_street_48k.flac")
    src, out_dir = tmp_path / "long.wav", tmp_path / "out"
    out_dir.mkdir()
    sf.write(src, np.tile(x, 18), 48000)
    exe = Path(sys.executable).with_name("dfsdk")
    proc = subprocess.Popen([str(exe), "run", str(src), "-o", str(out_dir / "clean.wav"), "--quiet", "--model", "dfnet4-lite-v1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(3000):  # the temporary file holds a whole block: enhancement is under way
            if any(p.stat().st_size > 500_000 for p in out_dir.glob(".clean.*")) or proc.poll() is not None:
                break
            time.sleep(0.02)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stdout + stderr
    assert "Traceback" not in stderr and "no output was written" in stderr
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize(
    "option, value, message",
    [("--threads", "0", "num_threads"), ("--threads", "100000", "num_threads"), ("--atten-lim-db", "nan", "atten_lim_db"),
     ("--offline-threads", "0", "offline_threads")],
)
def test_bad_option_values_reach_the_user_as_usage_errors(noisy_wav, tmp_path, option, value, message):
    """The Runtime's own validation, as a one-line message with exit code 2 and no output file."""
    result = run_cli("run", str(noisy_wav), "-o", str(tmp_path / "o.wav"), "--quiet", option, value)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.wav").exists() and list(tmp_path.glob(".o.*")) == []


def test_deep_filter_flags_mean_what_they_mean_there(tmp_path):
    """What a `deep-filter` user types (-m, -a, --pf, -D, the gating thresholds) works and gives
    exactly what the same options give through Runtime (the demo clip ships in the repository)."""
    from dfnet4_sdk.model_facts import DEMO_CLIP
    from dfnet4_sdk.runtime import Runtime

    src = tmp_path / "noisy.wav"
    audio, rate = sf.read(DEMO_CLIP, dtype="float32")
    sf.write(src, audio[: 3 * rate], rate, subtype="FLOAT")
    out = tmp_path / "clean.wav"
    result = run_cli("run", str(src), "-o", str(out), "--quiet", "-m", "dfnet4-lite-v1", "-a", "12", "--pf", "-D",
                     "--min-db-thresh", "-10", "--max-db-erb-thresh", "30", "--max-db-df-thresh", "25")
    assert result.exit_code == 0, result.output
    got, _ = sf.read(out, dtype="float32")
    rt = Runtime("dfnet4-lite-v1", atten_lim_db=12, post_filter_beta=0.02, min_db_thresh=-10, max_db_erb_thresh=30,
                 max_db_df_thresh=25)
    want = rt.enhance(audio[: 3 * rate], rate)
    assert got.shape == want.shape and snr_db(want, got) > 100.0
    plain = Runtime("dfnet4-lite-v1").enhance(audio[: 3 * rate], rate)
    assert snr_db(plain, got) < 40.0  # the options changed the output


def test_conformance_checks_its_report_path_before_any_work(tmp_path):
    """`--write-docs` into a missing folder used to fail only after every cell had run."""
    result = CliRunner().invoke(main, ["conformance", "dfnet4-lite-v1", "--target", "onnx",
                                       "--write-docs", str(tmp_path / "missing" / "CONFORMANCE.md")])
    assert result.exit_code == 2 and "does not exist; create it first" in result.output
    assert "Traceback" not in result.output and "onnx-fp32" not in result.output  # no cell ran


def test_conformance_refuses_an_unknown_target_before_any_work():
    """`--target tf` used to match no cell: the command read the clip, ran nothing and exited 0."""
    result = CliRunner().invoke(main, ["conformance", "dfnet4-lite-v1", "--target", "onnx", "--target", "tf"])
    assert result.exit_code == 2, result.output
    assert "unknown --target ['tf']; choose from ['coreml', 'onnx', 'tflite']" in result.output
    assert "Traceback" not in result.output and "onnx-fp32" not in result.output  # no cell ran
