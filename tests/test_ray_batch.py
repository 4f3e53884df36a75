"""The batch on Ray (``dfnet4_sdk.ray_batch``, ``dfsdk run --ray``) on a local Ray with 2 CPUs:
the same outputs, records, skips and failure report as the local batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from audio_data import REPO_ROOT
from test_batch import CORPUS, CORRUPT, RECORDS, corpus, demo, outputs  # noqa: F401 (fixtures)

from dfnet4_sdk.batch import enhance_batch
from dfnet4_sdk.cli import main

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dfnet4-sdk[ray]'")
from dfnet4_sdk.ray_batch import enhance_corpus  # noqa: E402


def test_an_unreachable_cluster_is_a_usage_error_before_any_work(corpus, tmp_path):
    """ray.init waits for an unreachable head without end; the address is tried first (runs before
    the module's local Ray starts, so that the address is not ignored)."""
    assert not ray.is_initialized()
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(corpus), "--output-dir", str(out), "--ray=127.0.0.1:1", "--quiet"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    assert not out.exists()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_outputs_equal_the_local_batch_and_report_the_corrupt_file(local_ray, corpus, tmp_path):
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    expected = enhance_batch([str(corpus)], local)
    report = enhance_corpus([str(corpus)], on_ray, workers=2)
    assert [(r.status, r.reason is None) for r in report.results].count(("done", True)) == len(CORPUS)
    (failed,) = report.of("failed")
    assert failed.input == str(corpus / CORRUPT) and "cannot read it as audio" in failed.reason
    assert report.exit_code == expected.exit_code == 1
    got, want = outputs(on_ray), outputs(local)
    assert sorted(got) == sorted(want) == sorted(CORPUS)
    for rel in CORPUS:  # the same samples, the same sample format, the same record
        np.testing.assert_array_equal(got[rel], want[rel])
        assert sf.info(on_ray / rel).subtype == sf.info(local / rel).subtype
        mine, theirs = (json.loads((d / RECORDS / f"{rel}.json").read_text()) for d in (on_ray, local))
        assert mine["identity"] == theirs["identity"] and mine["input"] == theirs["input"]

    # The local batch sees Ray's outputs as its own: everything is skipped, and the other way round.
    assert [r.status for r in enhance_batch([str(corpus)], on_ray).results].count("skipped") == len(CORPUS)
    again = enhance_corpus([str(corpus)], local, workers=2)
    assert [r.status for r in again.results].count("skipped") == len(CORPUS) and len(again.of("done")) == 0


def test_dfsdk_run_ray_cli(local_ray, corpus, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(corpus / "a"), "--output-dir", str(out), "--ray", "--jobs", "2",
                                       "--quiet", "--atten-lim-db", "12"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "2 done, 0 skipped, 0 failed" in result.output
    assert sorted(outputs(out)) == ["b/three.wav", "two.flac"]
    # --ray taking an input folder for its address is a usage error, not a connection attempt.
    wrong = CliRunner().invoke(main, ["run", "--ray", str(corpus), "--output-dir", str(out)])
    assert wrong.exit_code == 2 and "--ray=ADDRESS" in wrong.output


def test_an_interrupted_ray_batch_removes_only_the_temporaries_of_unfinished_files(tmp_path):
    """Killed actors cannot clean up: the driver removes `.NAME.xxxxxxxx.EXT` beside the outputs of
    the files that did not finish, and nothing else."""
    from dfnet4_sdk.batch import BatchItem
    from dfnet4_sdk.ray_batch import _remove_temporaries

    items = [BatchItem(tmp_path / f"in{i}.wav", tmp_path / name, tmp_path / f"{name}.json", 1.0)
             for i, name in enumerate(("a.wav", "a.b.wav", "done.wav"))]
    names = [".a.k3j_x9q2.wav", ".a.b.p0o9i8u7.wav", ".done.abcdefgh.wav", ".a.longer_than_8.wav", "a.wav"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    _remove_temporaries(items, finished={str(tmp_path / "in2.wav")})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a.longer_than_8.wav", ".done.abcdefgh.wav", "a.wav"]


def test_relative_paths_after_ray_started_elsewhere(local_ray, corpus, tmp_path, monkeypatch):
    """Actors keep the working directory Ray started in: rows carry absolute paths, the report the
    paths as given."""
    monkeypatch.chdir(corpus.parent)
    report = enhance_corpus(["corpus/a"], "relative_out", model="dfnet4-lite-v1", workers=1)
    assert sorted((r.input, r.status) for r in report.results) == [
        ("corpus/a/b/three.wav", "done"), ("corpus/a/two.flac", "done")]
    assert sorted(outputs(corpus.parent / "relative_out")) == ["b/three.wav", "two.flac"]


def test_an_actor_that_cannot_load_the_model_fails_its_files_not_the_job(local_ray, corpus, tmp_path):
    """The model vanished between the driver's check and the actors' start (a node without it):
    each file is reported with the reason; Ray does not restart the actor or fail the dataset."""
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO_ROOT / "dfnet4_sdk" / "assets" / "dfnet4-lite-v1-onnx", bundle)
    report = enhance_corpus([str(corpus / "a")], tmp_path / "out", model=str(bundle), workers=1,
                            on_plan=lambda plan: shutil.rmtree(bundle))
    assert [r.status for r in report.results] == ["failed", "failed"]
    assert all("this worker could not load the model" in r.reason for r in report.results)
    assert report.exit_code == 1
