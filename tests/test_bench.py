"""`dfsdk bench` end to end on one short cell (the numbers themselves go to BENCHMARKS.md, not here)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from audio_data import data_file

from dfnet4_sdk.cli import main


def test_bench_measures_our_runtime_next_to_the_official_one(tmp_path):
    out = tmp_path / "BENCH.md"
    result = CliRunner().invoke(main, ["bench", "--model", "dfnet4-lite-v1", "--backend", "onnx", "--seconds", "1",
                                       "--audio", str(data_file("noisy_real/dns5_blind_street_48k.flac")), "-o", str(out),
                                       "--rounds", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = [line for line in out.read_text().splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == ["official-dfn3", "onnx-fp32-dfnet4-lite-v1"]
    official, ours = ([c.strip() for c in line.split("|")[1:-1]] for line in table)
    assert official[2].endswith("(1.00x)") and ours[1] == "yes"  # ratios are to the official runtime
    p50_ms = float(ours[2].split()[0])
    ratio = float(ours[2].split("(")[1].rstrip("x)"))
    assert 0.0 < p50_ms < 10.0 and abs(ratio - p50_ms / float(official[2].split()[0])) < 0.01
    assert 0.0 < float(ours[4].split()[0]) < 1.0 and 0.0 < float(ours[5].split()[0]) < 1.0  # offline RTFs
    assert 5.0 < float(ours[7]) < 20.0  # the shipped bundle's graphs, MB
    text = out.read_text()
    assert "each of 2 rounds" in text and "The official runtime's p50 ranged from" in text
    assert result.output.count("round ") == 2


def test_rounds_combine_to_medians_best_rtf_and_highest_memory():
    from dfnet4_sdk.bench import BenchResult, combine_rounds

    def cell(p50, p99, rtf, rtf_all, rss):
        return BenchResult("onnx-fp32-m", "m", "onnx", "fp32", p50, p99, rtf, rss, 6.9, True, rtf_all)

    r = combine_rounds([cell(0.30, 0.50, 0.009, 0.005, 180), cell(0.40, 0.70, 0.008, 0.006, 190),
                        cell(0.35, 0.60, 0.010, 0.004, 170)])
    assert (r.frame_ms_p50, r.frame_ms_p99) == (0.35, 0.60)
    assert (r.offline_rtf, r.offline_rtf_all_cores, r.peak_rss_mb) == (0.008, 0.004, 190)
    assert r.rounds == 3 and r.frame_ms_p50_range == (0.30, 0.40) and r.bundle_mb == 6.9


# -- bad options: a one-line message and exit 2, before any work ---------------------------------


def _clip() -> str:
    return str(data_file("noisy_real/dns5_blind_street_48k.flac"))


@pytest.mark.parametrize(
    "args, option, message",
    [
        (["--model", "nosuch"], "--model", "unknown model 'nosuch'"),
        (["--model", "nosuch", "--model", "dfnet4-lite-v1", "--model", "nope"], "--model", "unknown models 'nosuch', 'nope'"),
        (["--seconds", "0"], "--seconds", "got 0.0"),
        (["--seconds", "-1"], "--seconds", "got -1.0"),
        (["--seconds", "nan"], "--seconds", "got nan"),
        (["--seconds", "11"], "--seconds", "clip's length (10.00 s"),  # longer than the clip: RTFs would be wrong
        (["--soak", "0"], "--soak", "got 0.0"),
        (["--soak", "-2"], "--soak", "got -2.0"),
        (["--soak", "inf"], "--soak", "got inf"),
        (["--soak", "0.01", "--model", "dfn3", "--model", "dfnet4-lite-v1"], None, "at most one --model"),
        (["--backend", "nosuch"], "--backend", "'nosuch' is not one of"),
        (["--corpus", "0"], "--corpus", "at least 1"),
        (["--corpus", "2", "--seconds", "0.01"], "--seconds", "0.1 s to an hour"),
        (["--corpus", "2", "--model", "dfn3", "--model", "dfnet4-lite-v1"], None, "at most one --model"),
    ],
)
def test_bad_bench_options_exit_2_with_a_message(tmp_path, args, option, message):
    """Before: `--model nosuch` ran the official cell, then died with a RuntimeError traceback;
    `--seconds 0` with a traceback from numpy (percentile of nothing)."""
    out = tmp_path / "BENCH.md"
    result = CliRunner().invoke(main, ["bench", "--audio", _clip(), "-o", str(out), *args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert message in result.output and (option is None or option in result.output), result.output
    assert "Traceback" not in result.output and not out.exists()
    assert "official" not in result.output  # refused before the first cell ran


# -- soak ------------------------------------------------------------------------------------------


def test_soak_reports_latency_percentiles_and_memory_per_window():
    from dfnet4_sdk import Runtime
    from dfnet4_sdk.bench import soak
    from dfnet4_sdk.shipped import DEFAULT_MODEL

    lines = []
    report = soak(0.0005, _clip(), window_s=0.3, echo=lines.append)  # 1.8 s of wall clock
    assert len(report.windows) == 6 and len(lines) == 6 and lines[-1].startswith("window 6/6 at")
    assert report.model == DEFAULT_MODEL and report.backend == Runtime().backend.name and report.warmup_windows == 1
    for k, w in enumerate(report.windows):
        assert w.hops >= 1, w
        assert 0 < w.p50_ms <= w.p95_ms <= w.p99_ms <= w.max_ms, w
        assert 30 < w.rss_mb < 4000, w
        assert w.end_s >= 0.3 * (k + 1) - 1e-9 and (k == 0 or w.end_s > report.windows[k - 1].end_s), (k, w.end_s)
    assert report.audio_hours * 3600 == pytest.approx(sum(w.hops for w in report.windows) * 0.01)
    assert report.rss_growth_mb == report.windows[-1].rss_mb - report.windows[0].rss_mb
    table = [line for line in report.to_markdown().splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == 6 and report.verdict() in report.to_markdown()


def test_soak_verdict_flags_growth_after_warm_up_only():
    from dfnet4_sdk.soak import SOAK_RSS_TOLERANCE_MB, SoakReport, SoakWindow

    def report(rss):
        windows = [SoakWindow(float(k + 1), 100, 0.3, 0.4, 0.5, 0.9, r) for k, r in enumerate(rss)]
        return SoakReport("m", "onnx", "clip.flac", 0.01, 1.0, 0.01, 2, windows)

    flat = report([80.0, 150.0, 150.5, 151.0, 150.2])  # growth inside the warm-up windows is expected
    assert not flat.rss_grew and flat.rss_growth_mb == pytest.approx(0.2) and "flat" in flat.verdict()
    leak = report([80.0, 150.0, 160.0, 170.0, 150.0 + SOAK_RSS_TOLERANCE_MB + 1])
    assert leak.rss_grew and "GREW" in leak.verdict()


def test_bench_soak_command_streams_for_the_given_fraction_of_an_hour(tmp_path):
    out = tmp_path / "SOAK.md"
    result = CliRunner().invoke(main, ["bench", "--soak", "0.0003", "--audio", _clip(), "-o", str(out)])
    assert result.exit_code == 0, result.output  # 1 would mean RSS grew after warm-up
    assert result.output.count("window ") == 10 and "window 10/10 at" in result.output
    assert "after warm-up" in result.output and "flat" in result.output
    assert "| window end s | hops |" in out.read_text()


def test_default_cells_are_the_shipped_bundles_first_then_the_comparisons():
    from dfnet4_sdk.bench import EXTRA_CELLS, cells_for
    from dfnet4_sdk.shipped import DEFAULT_MODEL, SHIPPED_MODELS

    cells = cells_for()
    first = SHIPPED_MODELS[DEFAULT_MODEL].bundles[0]
    assert cells[0] == (DEFAULT_MODEL, first.backend, first.precision)  # the default path, measured first
    shipped = {(m.name, b.backend, b.precision) for m in SHIPPED_MODELS.values() for b in m.bundles}
    assert shipped <= set(cells) and set(EXTRA_CELLS) <= set(cells) and len(cells) == len(set(cells))
    assert cells_for(("dfnet4-lite-v1",), ("onnx",)) == [("dfnet4-lite-v1", "onnx", "fp32")]


def test_bench_report_keeps_the_training_section(tmp_path):
    """`dfsdk bench` rewrites BENCHMARKS.md; the training throughput section written by
    training/throughput.py between its markers must survive (it used to be overwritten)."""
    from dfnet4_sdk.bench import write_report

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# old inference table\n\n<!-- training:start -->\n## Training\n6 s/s -> 40 s/s\n<!-- training:end -->\n")
    write_report(path, "# new inference table\n")
    text = path.read_text()
    assert text.startswith("# new inference table\n") and "old inference" not in text
    assert "<!-- training:start -->\n## Training\n6 s/s -> 40 s/s\n<!-- training:end -->" in text
    write_report(tmp_path / "fresh.md", "# table\n")
    assert (tmp_path / "fresh.md").read_text() == "# table\n"


def test_bench_report_keeps_every_marked_section_in_order(tmp_path):
    """Any tool's block between <!-- NAME:start --> and <!-- NAME:end --> survives a rewrite (the
    GPU training block was dropped while only two names were known)."""
    from dfnet4_sdk.bench import write_report

    blocks = ["<!-- streams:start -->\nS\n<!-- streams:end -->", "<!-- training:start -->\nT\n<!-- training:end -->",
              "<!-- training-gpu:start -->\nG\n<!-- training-gpu:end -->", "<!-- browser:start -->\nB\n<!-- browser:end -->"]
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# old\n\n" + "\n\nprose between\n\n".join(blocks) + "\n")
    write_report(path, "# new\n")
    assert path.read_text() == "# new\n\n" + "\n\n".join(blocks) + "\n"


def test_a_bundle_directory_is_benchmarked_as_it_is():
    """`dfsdk bench --model DIR` ran the directory through load_model (an export) and failed with
    'no manifest.json' on a valid bundle; it runs the bundle, and says which backend it needs."""
    from dfnet4_sdk.bench import _bundle_for
    from dfnet4_sdk.errors import ConfigError
    from dfnet4_sdk.shipped import SHIPPED_MODELS

    shipped = SHIPPED_MODELS["dfnet4-lite-v1"].bundles[0]  # onnx fp32
    assert _bundle_for(str(shipped.path), "onnx", "fp32") == shipped.path
    with pytest.raises(ConfigError, match="pass --backend onnx --precision fp32"):
        _bundle_for(str(shipped.path), "tflite", "fp16")


# -- corpus ----------------------------------------------------------------------------------------


def test_corpus_bench_runs_every_local_runner_on_the_same_files_with_the_same_outputs():
    from dfnet4_sdk.bench_corpus import run_corpus, to_markdown

    lines = []
    results = run_corpus(_clip(), files=3, seconds=1.5, model="dfnet4-lite-v1",
                         runners=(("local", 1), ("local", 2)), echo=lines.append)
    assert [(r.runner, r.workers) for r in results] == [("local", 1), ("local", 2)]
    for r in results:
        assert r.files == 3 and r.failed == 0 and r.same_outputs and r.startup_seconds is None
        assert r.audio_seconds == pytest.approx(4.5) and r.throughput == pytest.approx(4.5 / r.wall_seconds)
    table = to_markdown(results, "clip.flac", 1.5, "dfnet4-lite-v1", "load")
    rows = [line for line in table.splitlines() if line.startswith("| local")]
    assert rows[0].startswith("| local | 1 | 3 | 0.1 |") and "| 1.00x |" in rows[0] and rows[1].endswith("| 0 | yes |")
    assert lines[0] == "corpus: 3 files, 0.1 min of audio"


def test_corpus_bench_on_ray_gives_the_local_outputs():
    pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'dfnet4-sdk[ray]'")
    from dfnet4_sdk.bench_corpus import run_corpus

    results = run_corpus(_clip(), files=2, seconds=1.0, model="dfnet4-lite-v1", runners=(("local", 1), ("ray", 1)),
                         echo=lambda line: None)
    ray_row = results[1]
    assert ray_row.runner == "ray" and ray_row.same_outputs and ray_row.failed == 0
    assert ray_row.startup_seconds is not None and ray_row.startup_seconds > 0


def test_report_sections_replace_their_own_block_only(tmp_path):
    from dfnet4_sdk.bench import write_section

    report = tmp_path / "BENCH.md"
    report.write_text("# Benchmarks\n\n<!-- streams:start -->\nold streams\n<!-- streams:end -->\n\ntail\n")
    write_section(report, "<!-- corpus:start -->\ncorpus 1\n<!-- corpus:end -->\n")
    write_section(report, "<!-- streams:start -->\nnew streams\n<!-- streams:end -->\n")
    write_section(report, "<!-- corpus:start -->\ncorpus 2\n<!-- corpus:end -->\n")
    text = report.read_text()
    assert "old streams" not in text and "corpus 1" not in text
    assert text.index("new streams") < text.index("tail") < text.index("corpus 2")
    with pytest.raises(ValueError, match="marker"):
        write_section(report, "no markers")
