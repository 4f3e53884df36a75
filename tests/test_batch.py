"""`dfsdk run` on many inputs: folders, globs, list files into --output-dir, worker processes,
skip-done records, a bad file reported, exit codes, interruption that leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from audio_data import REPO_ROOT
from click.testing import CliRunner

from dfnet4_sdk.batch import RECORDS, enhance_batch
from dfnet4_sdk.batch_inputs import expand_inputs
from dfnet4_sdk.cli import main
from dfnet4_sdk.errors import PathError

DEMO = REPO_ROOT / "examples" / "noisy_speech_48k.flac"  # in the repository: no shared data needed
# The corpus: relative path -> (start s, length s, subtype) cut from the demo clip; one corrupt file.
CORPUS = {
    "one.wav": (0.0, 1.2, "PCM_16"),
    "a/two.flac": (1.2, 1.0, "PCM_24"),
    "a/b/three.wav": (2.2, 0.8, "FLOAT"),
    "c/four.wav": (3.0, 1.1, "PCM_16"),
}
CORRUPT = "c/bad.wav"


def run_cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def demo() -> tuple[np.ndarray, int]:
    return sf.read(DEMO, dtype="float32")


@pytest.fixture()
def corpus(tmp_path, demo) -> Path:
    x, sr = demo
    root = tmp_path / "corpus"
    for rel, (start, seconds, subtype) in CORPUS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, x[int(start * sr): int((start + seconds) * sr)], sr, subtype=subtype)
    (root / CORRUPT).write_bytes(b"RIFF not really audio")
    (root / "a" / ".hidden.wav").write_bytes(b"a temporary of some other program")
    (root / "notes.txt").write_text("not audio")
    return root


def outputs(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): sf.read(p, dtype="float32")[0]
            for p in sorted(out.rglob("*")) if p.is_file() and RECORDS not in p.parts}


def test_folder_with_two_jobs_mirrors_the_tree_equals_single_runs_and_reports_the_corrupt_file(corpus, tmp_path):
    out = tmp_path / "out"
    result = run_cli("run", str(corpus), "--output-dir", str(out), "--jobs", "2", "--quiet")
    assert result.exit_code == 1, result.output  # one file failed
    assert "4 done, 0 skipped, 1 failed" in result.output
    assert f"failed: {corpus / CORRUPT}: cannot read it as audio" in result.output
    got = outputs(out)
    assert sorted(got) == sorted(CORPUS)  # the tree mirrored; the corrupt, hidden and text files not written
    for rel in CORPUS:  # the same samples and sample format as `dfsdk run FILE -o OUT`, one file at a time
        single = tmp_path / "single" / rel
        single.parent.mkdir(parents=True, exist_ok=True)
        assert run_cli("run", str(corpus / rel), "-o", str(single), "--quiet").exit_code == 0
        np.testing.assert_array_equal(got[rel], sf.read(single, dtype="float32")[0])
        assert sf.info(out / rel).subtype == sf.info(corpus / rel).subtype == sf.info(single).subtype
    assert not [p for p in out.rglob(".*") if p.is_file() and RECORDS not in p.parts]  # no temporaries

    # A second run skips every output and says so; nothing is rewritten.
    mtimes = {rel: (out / rel).stat().st_mtime_ns for rel in CORPUS}
    again = run_cli("run", str(corpus), "--output-dir", str(out), "--jobs", "2", "--quiet")
    assert again.exit_code == 1 and "0 done, 4 skipped, 1 failed" in again.output
    assert "already enhanced with the same model and options" in again.output
    assert {rel: (out / rel).stat().st_mtime_ns for rel in CORPUS} == mtimes

    # Another option re-does every file (and what it writes differs).
    redo = run_cli("run", str(corpus), "--output-dir", str(out), "--atten-lim-db", "6", "--quiet")
    assert redo.exit_code == 1 and "4 done, 0 skipped, 1 failed" in redo.output
    limited = outputs(out)
    for rel in CORPUS:
        assert np.max(np.abs(limited[rel] - got[rel])) > 1e-3
        assert json.loads((out / RECORDS / f"{rel}.json").read_text())["identity"]["options"]["atten_lim_db"] == 6.0


def test_list_file_and_glob_inputs(corpus, tmp_path):
    listing = corpus / "list.txt"
    listing.write_text("# two files, relative to the list's folder\none.wav\n\na/b/three.wav\n")
    out = tmp_path / "from_list"
    result = run_cli("run", "--list", str(listing), "--output-dir", str(out), "--quiet", "--model", "dfnet4-lite-v1")
    assert result.exit_code == 0, result.output
    assert sorted(outputs(out)) == ["a/b/three.wav", "one.wav"]  # a relative line keeps its path

    # A relative folder line keeps its own path too; an absolute one mirrors the folder's tree.
    # Each input is enhanced once, where it was first named.
    (corpus / "folders.txt").write_text(f"a\n{corpus / 'a'}\n")
    out = tmp_path / "from_folders"
    result = run_cli("run", "--list", str(corpus / "folders.txt"), "--output-dir", str(out), "--quiet",
                     "--model", "dfnet4-lite-v1")
    assert result.exit_code == 0, result.output
    assert sorted(outputs(out)) == ["a/b/three.wav", "a/two.flac"] and "2 done" in result.output

    out = tmp_path / "from_at"
    assert run_cli("run", f"@{listing}", "--output-dir", str(out), "--quiet", "--model", "dfnet4-lite-v1").exit_code == 0
    assert sorted(outputs(out)) == ["a/b/three.wav", "one.wav"]

    out = tmp_path / "from_glob"
    result = run_cli("run", f"{corpus}/**/t*.*", "--output-dir", str(out), "--quiet", "--model", "dfnet4-lite-v1")
    assert result.exit_code == 0, result.output
    assert sorted(outputs(out)) == ["a/b/three.wav", "a/two.flac"]  # the tree below the glob's fixed folder


def test_usage_errors_are_exit_2_before_any_work(corpus, tmp_path):
    many = run_cli("run", str(corpus / "one.wav"), str(corpus / "c/four.wav"), "-o", str(tmp_path / "x.wav"))
    assert many.exit_code == 2 and "--output-dir" in many.output and not (tmp_path / "x.wav").exists()
    assert run_cli("run", str(corpus)).exit_code == 2  # a folder needs --output-dir
    for jobs in ("0", "65"):
        assert run_cli("run", str(corpus), "--output-dir", str(tmp_path / "o"), "--jobs", jobs).exit_code == 2
    # Every problem at once: a missing file, a glob matching nothing, two inputs with one output name.
    (corpus / "d").mkdir()
    (corpus / "d" / "one.wav").write_bytes((corpus / "one.wav").read_bytes())
    bad = run_cli("run", str(corpus / "one.wav"), str(corpus / "d" / "one.wav"), str(corpus / "nope.wav"),
                  f"{corpus}/*.mp3", "--output-dir", str(tmp_path / "o"))
    assert bad.exit_code == 2, bad.output
    assert "3 problem(s)" in bad.output and "nope.wav does not exist" in bad.output
    assert "matches no file" in bad.output and "would both be written to one.wav" in bad.output
    assert not (tmp_path / "o").exists()
    # An output folder that is the input folder would overwrite the inputs.
    same = run_cli("run", str(corpus), "--output-dir", str(corpus))
    assert same.exit_code == 2 and "would overwrite" in same.output


def test_outputs_no_run_wrote_are_kept_unless_overwrite(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "one.wav").write_bytes(b"keep me")
    args = ("run", str(corpus / "one.wav"), str(corpus / "c" / "four.wav"), "--output-dir", str(out), "--quiet")
    result = run_cli(*args)
    assert result.exit_code == 2 and "did not write" in result.output and "--overwrite" in result.output
    assert (out / "one.wav").read_bytes() == b"keep me" and not (out / "four.wav").exists()
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert sf.info(out / "one.wav").frames == sf.info(corpus / "one.wav").frames


def test_an_interrupted_batch_leaves_no_partial_output_and_resumes(corpus, tmp_path):
    """Ctrl-C in the middle of the second file: the first output is kept, the second leaves
    nothing (its record stays "pending"); the next run does the rest and skips the first."""
    out, seen = tmp_path / "out", []

    def interrupt_in_second_file(seconds):
        seen.append(seconds)
        if len(seen) == 2:
            raise KeyboardInterrupt

    inputs = [str(corpus / "one.wav"), str(corpus / "a")]
    with pytest.raises(KeyboardInterrupt):
        enhance_batch(inputs, out, model="dfnet4-lite-v1", progress=interrupt_in_second_file)
    assert [p.name for p in out.iterdir() if p.is_file()] == ["one.wav"]
    assert not list(out.rglob(".*.*"))  # no temporary (records aside)
    pending = json.loads((out / RECORDS / "two.flac.json").read_text())
    assert pending["output"] is None

    report = enhance_batch(inputs, out, model="dfnet4-lite-v1")
    assert [(Path(r.input).name, r.status) for r in report.results] == [
        ("one.wav", "skipped"), ("two.flac", "done"), ("three.wav", "done")]
    assert report.exit_code == 0 and report.audio_seconds == pytest.approx(1.8, abs=1e-3)


def _group_members(pgid: int) -> list[int]:
    """Processes in process group ``pgid`` (from /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp; a zombie has exited
            members.append(int(stat.parent.name))
    return members


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc (Linux)")
@pytest.mark.parametrize("how, code, said", [("SIGTERM to the parent", 143, "terminated"),
                                             ("Ctrl-C to the process group", 130, "interrupted")])
def test_a_signal_stops_the_workers_and_leaves_no_partial_output(tmp_path, demo, how, code, said):
    """`dfsdk run --jobs 2` signalled while files are in progress: the shell's exit code, every
    worker gone, every output there complete (its record written), no temporary left."""
    x, sr = demo
    corpus, out = tmp_path / "long", tmp_path / "out"
    corpus.mkdir()
    for i in range(4):
        sf.write(corpus / f"f{i}.wav", np.tile(x, 2), sr)  # ~19 s each: seconds of work per file
    exe = Path(sys.executable).with_name("dfsdk")
    proc = subprocess.Popen([str(exe), "run", str(corpus), "--output-dir", str(out), "--jobs", "2", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not list((out / RECORDS).glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)  # inside the first files
    if how.startswith("SIGTERM"):
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert said in err and "Traceback" not in err
    deadline = time.monotonic() + 10  # a worker may still be in the kernel's exit path
    while _group_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(proc.pid) == []  # no worker left running
    assert not [p for p in out.rglob(".*") if p.is_file() and RECORDS not in p.parts]
    for wav in out.glob("*.wav"):  # only finished outputs, each with its record
        assert sf.info(wav).frames == 2 * len(x)
        assert json.loads((out / RECORDS / f"{wav.name}.json").read_text())["output"] is not None
    assert len(list(out.glob("*.wav"))) < 4


def test_expand_inputs_skips_hidden_files_and_the_output_folder_inside_an_input(corpus):
    nested_out = corpus / "enhanced"
    (nested_out / "x").mkdir(parents=True)
    sf.write(nested_out / "x" / "old.wav", np.zeros(480, np.float32), 48000)
    sources = expand_inputs([str(corpus)], output_dir=nested_out)
    assert sorted(s.relative_output.as_posix() for s in sources) == sorted([*CORPUS, CORRUPT])
    with pytest.raises(PathError, match="would overwrite 1 input"):
        expand_inputs([str(corpus / "c" / "..")], output_dir=corpus / "c" / "..")


def test_a_file_that_fails_while_enhancing_is_reported_and_the_batch_goes_on(corpus, tmp_path):
    """A readable header over NaN samples fails inside the work (not at planning): reported, the rest done."""
    sf.write(corpus / "a" / "nan.wav", np.array([0.0, np.nan, 0.1] * 1600, np.float32), 48000, subtype="FLOAT")
    report = enhance_batch([str(corpus / "a")], tmp_path / "out", model="dfnet4-lite-v1", jobs=2)
    assert {Path(r.input).name: r.status for r in report.results} == {
        "nan.wav": "failed", "two.flac": "done", "three.wav": "done"}
    assert "NaN" in report.of("failed")[0].reason and report.exit_code == 1
    assert not (tmp_path / "out" / "nan.wav").exists()


def test_only_ray_batch_imports_ray():
    """Ray is an optional extra: no other module of the package imports it."""
    package = REPO_ROOT / "dfnet4_sdk"
    importers = [p.name for p in package.rglob("*.py")
                 if any(line.strip().startswith(("import ray", "from ray")) for line in p.read_text().splitlines())]
    assert importers == ["ray_batch.py"]


def test_a_script_without_a_main_guard_gets_told_instead_of_running_the_batch_in_every_worker(corpus, tmp_path):
    """Spawned workers import the main script again: unguarded, each would start a batch of its own
    on the same outputs. The worker refuses with a message that says what to do; no output is written."""
    script = tmp_path / "unguarded.py"
    script.write_text("from dfnet4_sdk.batch import enhance_batch\n"
                      f"report = enhance_batch([{str(corpus / 'a')!r}], {str(tmp_path / 'out')!r}, "
                      "model='dfnet4-lite-v1', jobs=2)\n"
                      "print(report.summary_lines()[0])\n")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("0 done, 0 skipped, 2 failed")
    assert 'put the call under `if __name__ == "__main__":`' in proc.stderr
    assert not list((tmp_path / "out").glob("**/*.wav")) + list((tmp_path / "out").glob("**/*.flac"))
