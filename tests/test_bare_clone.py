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

# Real modules: (module, -k expression, tests that must pass, tests that must skip for want of data).
SELECTION = [
    ("tests/test_evaluation.py", "find_eval_items or pesq_identity",  # DEV_EVAL / DATA_DIR; fixture vbd_pair
     {"test_find_eval_items_says_what_is_wrong"},
     {"test_find_eval_items_in_dev_eval", "test_find_eval_items_from_manifests", "test_pesq_identity_and_noisy_pair"}),
    ("tests/test_dsp.py", "norm_alpha or stft_matches",  # a parametrized fixture reading clips
     {"test_norm_alpha_at_defaults"}, {"test_stft_matches_libdf_analysis[16k]", "test_stft_matches_libdf_analysis[48k]"}),
    ("tests/test_runtime.py", "digital_silence or reset_restarts",  # the session fixture speech_mix_48k
     {"test_digital_silence_gives_silence"}, {"test_reset_restarts_the_stream"}),
]

# Every route by which a test reaches the data, in one module run with tests/conftest.py as a plugin.
# HELPER is filled in when the module is written: spelled out here, conftest would take this module
# for one that runs audio_data in a subprocess and skip its tests in a bare clone, where they matter.
ROUTES = """
import subprocess
import sys

import pytest
from HELPER import DATA_DIR, load_clip

CLIP = "noisy_real/dns5_blind_street_48k.flac"
NOISY_DIR = DATA_DIR / "noisy_real"
SCRIPT = "from HELPER import load_clip\\nload_clip(" + repr(CLIP) + ")"


@pytest.fixture
def clip():
    return load_clip(CLIP)


def _files():
    return sorted(NOISY_DIR.iterdir())


def test_fixture(clip):
    assert len(clip) > 0


def test_module_level_path():
    assert NOISY_DIR.is_dir()


def test_module_level_path_through_a_helper():
    assert _files()


@pytest.mark.parametrize("path", [DATA_DIR / "manifest.csv"])
def test_parametrized_path(path):
    assert path.is_file()


def test_script_in_a_subprocess():
    subprocess.run([sys.executable, "-c", SCRIPT], check=True)


def test_needs_no_data():
    assert sum(range(4)) == 6
"""
ROUTE_TESTS = {"test_fixture", "test_module_level_path", "test_module_level_path_through_a_helper",
               "test_parametrized_path[path0]", "test_script_in_a_subprocess"}


def _env(data_dir, **extra) -> dict:
    """This environment with the data folder at ``data_dir``; not required unless ``extra`` says so
    (CI requires it for the suite, not for these bare-clone sessions)."""
    env = {k: v for k, v in os.environ.items() if k != shared_data.REQUIRE_ENV_VAR}
    return {**env, shared_data.DATA_ENV_VAR: str(data_dir), **extra}


def _pytest(args: list, cwd, env, report) -> dict:
    """Run pytest in a subprocess; {test name: "passed" | "failed" | skip reason}."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode in (0, 1), proc.stdout[-4000:] + proc.stderr[-2000:]  # 1: some tests failed
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        skipped = case.find("skipped")
        failed = any(c.tag in ("failure", "error") for c in case)
        outcomes[case.get("name")] = "failed" if failed else "passed" if skipped is None else skipped.get("message")
    assert (proc.returncode == 1) == ("failed" in outcomes.values()), proc.stdout[-4000:]
    return outcomes


def test_without_the_data_the_tests_that_need_it_skip_naming_it_and_none_fails(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    modules = [module for module, *_ in SELECTION]
    k = " or ".join(f"({k})" for _, k, _, _ in SELECTION)
    outcomes = _pytest(["-k", k, *modules], audio_data.REPO_ROOT, _env(empty), tmp_path / "report.xml")
    assert "failed" not in outcomes.values(), outcomes
    reason = shared_data.missing_data_reason(empty)
    for _, _, passing, skipping in SELECTION:
        for name in passing:
            assert outcomes.get(name) == "passed", (name, outcomes.get(name))
        for name in skipping:
            assert reason in (outcomes.get(name) or ""), (name, outcomes.get(name))


@pytest.mark.parametrize("data", ["absent", "empty", "present without the files"])
def test_every_route_to_the_data_skips_only_when_the_folder_is_missing(tmp_path, data):
    """Absent or empty folder (a bare clone): each route skips with the reason naming the folder.
    A folder that is there but lacks the files (CI with a broken data set): each fails, none skips."""
    module = tmp_path / "routes" / "test_routes.py"
    module.parent.mkdir()
    module.write_text(ROUTES.replace("HELPER", "audio_data"))
    root = tmp_path / "data"
    if data != "absent":
        root.mkdir()
    if data == "present without the files":
        (root / "README.md").write_text("the data set, emptied\n")
    env = _env(root, PYTHONPATH=os.pathsep.join([str(audio_data.REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    outcomes = _pytest(["-p", "conftest", str(module)], module.parent, env, tmp_path / "report.xml")
    assert outcomes.pop("test_needs_no_data") == "passed"
    assert set(outcomes) == ROUTE_TESTS, outcomes
    expected = "failed" if data == "present without the files" else shared_data.missing_data_reason(root)
    for name, outcome in outcomes.items():
        assert expected in outcome, (name, outcome)


def test_where_the_data_is_required_a_missing_folder_stops_the_session(tmp_path):
    """CI sets DFNET4_SDK_REQUIRE_DATA: without the folder, pytest stops at collection (usage error,
    exit 4) naming the folder, rather than passing with every data test skipped."""
    module = tmp_path / "routes" / "test_routes.py"
    module.parent.mkdir()
    module.write_text(ROUTES.replace("HELPER", "audio_data"))
    env = _env(tmp_path / "absent", **{shared_data.REQUIRE_ENV_VAR: "1"},
               PYTHONPATH=os.pathsep.join([str(audio_data.REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest", str(module)],
                          cwd=module.parent, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"DFNET4_SDK_REQUIRE_DATA is set, but the tests {shared_data.missing_data_reason(tmp_path / 'absent')}" in (
        proc.stdout + proc.stderr)


def test_a_missing_file_in_a_folder_that_is_there_is_an_error_not_a_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_data, "DATA_DIR", tmp_path)
    monkeypatch.delenv(shared_data.REQUIRE_ENV_VAR, raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs the project's audio"):
        audio_data.data_file("noisy_real/dns5_blind_street_48k.flac")  # empty folder: a bare clone
    monkeypatch.setenv(shared_data.REQUIRE_ENV_VAR, "1")
    with pytest.raises(FileNotFoundError, match="DFNET4_SDK_REQUIRE_DATA is set, but the test needs"):
        audio_data.data_file("noisy_real/dns5_blind_street_48k.flac")  # CI without its data
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
    assert proc.returncode in (1, 2), proc.stderr  # a failure or a usage error (issue 15 item 8), not 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(tmp_path / "absent") in proc.stderr and needs in proc.stderr, proc.stderr
