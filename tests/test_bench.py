"""`dfsdk bench` end to end on one short cell (the numbers themselves go to BENCHMARKS.md, not here)."""

from __future__ import annotations

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
