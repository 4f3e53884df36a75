"""A bare clone (no ../shared/data): tests that need the project's audio skip, naming the folder;
nothing fails; the CLI's one-clip commands fall back to the demo clip or say which option to pass."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import audio_data
import pytest

from dfnet4_sdk import shared_data
from dfnet4_sdk.errors import AudioFileError

# (module, -k expression, tests that must pass, tests that must skip for want of data). The skips
# cover each route: a fixture calling data_file (vbd_pair, case, speech_mix_48k), a module-level
# path inside the folder (DEV_EVAL, DATA_DIR), a script importing audio_data run in a subprocess.
SELECTION = [
    ("tests/test_evaluation.py", "find_eval_items or pesq_identity",
     {"test_find_eval_items_says_what_is_wrong"},
     {"test_find_eval_items_in_dev_eval", "test_find_eval_items_from_manifests", "test_pesq_identity_and_noisy_pair"}),
    ("tests/test_dsp.py", "norm_alpha or stft_matches",
     {"test_norm_alpha_at_defaults"}, {"test_stft_matches_libdf_analysis[16k]", "test_stft_matches_libdf_analysis[48k]"}),
    ("tests/test_runtime.py", "digital_silence or reset_restarts",
     {"test_digital_silence_gives_silence"}, {"test_reset_restarts_the_stream"}),
    ("tests/test_api_hardening.py", "hammered", set(),
     {"test_one_runtime_hammered_from_four_threads_never_crashes_and_loses_nothing"}),
]


def _env(data_dir) -> dict:
    return {**os.environ, shared_data.DATA_ENV_VAR: str(data_dir)}


def test_without_the_data_the_tests_that_need_it_skip_naming_it_and_none_fails(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    report = tmp_path / "report.xml"
    modules = [module for module, *_ in SELECTION]
    k = " or ".join(f"({k})" for _, k, _, _ in SELECTION)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", k,
                           f"--junitxml={report}", *modules], cwd=audio_data.REPO_ROOT, env=_env(empty),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error")]
        assert not bad, f"{case.get('name')}: {bad[0].get('message')}"
        skipped = case.find("skipped")
        outcomes[case.get("name")] = "passed" if skipped is None else skipped.get("message")
    reason = shared_data.missing_data_reason(empty)
    for _, _, passing, skipping in SELECTION:
        for name in passing:
            assert outcomes.get(name) == "passed", (name, outcomes.get(name))
        for name in skipping:
            assert reason in (outcomes.get(name) or ""), (name, outcomes.get(name))


def test_a_missing_file_in_a_folder_that_is_there_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_data, "DATA_DIR", tmp_path)
    with pytest.raises(pytest.skip.Exception, match="needs the project's audio"):
        audio_data.data_file("noisy_real/dns5_blind_street_48k.flac")  # empty folder: a bare clone
    (tmp_path / "README.md").write_text("the data set\n")
    with pytest.raises(FileNotFoundError, match="restore the file"):
        audio_data.data_file("noisy_real/dns5_blind_street_48k.flac")


def test_data_location_honours_the_environment_and_defaults_beside_the_checkout(tmp_path, monkeypatch):
    monkeypatch.delenv(shared_data.DATA_ENV_VAR, raising=False)
    assert shared_data.shared_data_dir() == audio_data.REPO_ROOT.parent / "shared" / "data"
    monkeypatch.setenv(shared_data.DATA_ENV_VAR, str(tmp_path))
    assert shared_data.shared_data_dir() == tmp_path
    assert not shared_data.shared_data_present()  # empty
    (tmp_path / "x").mkdir()
    assert shared_data.shared_data_present()


def test_default_clip_falls_back_to_the_demo_clip_then_names_the_option(tmp_path, monkeypatch):
    monkeypatch.setenv(shared_data.DATA_ENV_VAR, str(tmp_path / "absent"))
    assert shared_data.DEMO_CLIP.is_file()  # committed in examples/
    assert shared_data.default_noisy_clip() == shared_data.DEMO_CLIP
    monkeypatch.setattr(shared_data, "DEMO_CLIP", tmp_path / "no-demo.flac")  # an installed wheel
    with pytest.raises(AudioFileError, match=r"absent/noisy_real/dns5_blind_street_48k\.flac.*pass --clip"):
        shared_data.default_noisy_clip("--clip")


def test_cli_default_clip_is_the_demo_clip_in_a_bare_clone_and_says_so(tmp_path, monkeypatch, capsys):
    from dfnet4_sdk import cli

    monkeypatch.setenv(shared_data.DATA_ENV_VAR, str(tmp_path / "absent"))
    assert cli._default_clip() == shared_data.DEMO_CLIP
    assert f"no DNS5 clip in {tmp_path / 'absent'}: using the demo clip" in capsys.readouterr().err


@pytest.mark.parametrize("args, needs", [(["bench", "--seconds", "1"], "--audio"), (["eval"], "dev_eval")])
def test_cli_without_data_or_demo_clip_says_what_to_pass_in_one_line(tmp_path, args, needs):
    """With neither ../shared/data nor the demo clip (an installed wheel), `dfsdk bench` and
    `dfsdk eval` stop before any work with one line naming the missing folder, no traceback."""
    code = ("import sys; from dfnet4_sdk import shared_data; from pathlib import Path; "
            f"shared_data.DEMO_CLIP = Path({str(tmp_path / 'no-demo.flac')!r}); "
            "from dfnet4_sdk.cli import main; sys.argv = ['dfsdk', *sys.argv[1:]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, *args, "-o", str(tmp_path / "b.md")] if args[0] == "bench"
                          else [sys.executable, "-c", code, *args], cwd=tmp_path, env=_env(tmp_path / "absent"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(tmp_path / "absent") in proc.stderr and needs in proc.stderr, proc.stderr
