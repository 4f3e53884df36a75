"""A compact copy of a config's training data, for a machine that gets only a small upload.

A GPU lent for minutes receives the working tree plus at most a few tens of MB; the speech and
noise under ``../shared/data`` are about 210 MB of FLAC. ``pack`` writes what the config would
train on (``build_lists``: licence rules, held-out sets and the DNSMOS screen already applied)
as Ogg Opus at about 25 kbit/s, with a manifest.csv in the data_root format, so the same config
with ``data_root`` pointed at the pack trains with the same code path on the remote machine:

    python -m dfnet4_sdk.training.pack --config training/configs/dfnet4_dfn3conv_continue.toml \
        --out .devdata --speech-mb 20

Speech files are taken group by group in a seeded order until ``speech_mb`` is spent (every
group keeps its share of the original minutes); noises and RIRs are always packed whole.
What changes: Opus only stores 8/12/16/24/48 kHz, so 22.05 kHz material is stored at 24 kHz and
32/44.1 kHz at 48 kHz (the manifest says the stored rate, so a 22.05 kHz file's band limit reads
12 kHz instead of 11.025 kHz), and the codec adds its own (perceptually small) error to the clean
targets. A pack is a transport format for short remote runs, not a replacement for the data.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from dfnet4_sdk.audio_io import resample
from dfnet4_sdk.training.config import TrainConfig
from dfnet4_sdk.training.data import AudioEntry, build_lists

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_LEVEL = 0.92  # libsndfile's compression level: about 25 kbit/s for 16 kHz speech


def opus_rate(rate: int) -> int:
    """The lowest rate Opus stores that keeps everything below ``rate`` / 2."""
    return next(r for r in OPUS_RATES if r >= rate) if rate <= OPUS_RATES[-1] else OPUS_RATES[-1]


def _encode(job: tuple[str, str, str]) -> tuple[int, float, int]:
    """(source, destination, kind) -> (stored rate, seconds, bytes written)."""
    src, dst, kind = job
    audio, rate = sf.read(src, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    if kind == "rir":  # tiny, and a codec must not smear an impulse response
        sf.write(dst, mono, rate, format="FLAC")
    else:
        stored = opus_rate(rate)
        if stored != rate:
            mono, rate = resample(mono, rate, stored), stored
        peak = float(np.max(np.abs(mono))) if len(mono) else 0.0
        if peak > 1.0:  # Opus clips; the mixer rescales levels anyway
            mono = mono / peak
        sf.write(dst, mono, rate, format="OGG", subtype="OPUS", compression_level=OPUS_LEVEL)
    return rate, len(mono) / rate, os.path.getsize(dst)


def _choose_speech(speech: tuple[AudioEntry, ...], budget_bytes: float, seed: int) -> list[AudioEntry]:
    """Files of every group in a seeded order, in proportion to each group's minutes, until the
    estimated packed size reaches the budget (estimate: bytes per second of a 16 kHz Opus file)."""
    per_second = 25_600 / 8 * 1.05
    groups: dict[str, list[AudioEntry]] = defaultdict(list)
    for e in speech:
        groups[e.group].append(e)
    rng = np.random.default_rng(seed)
    total = sum(e.seconds for e in speech)
    share = min(1.0, budget_bytes / per_second / max(total, 1e-9))
    chosen = []
    for name in sorted(groups):
        entries = [groups[name][i] for i in rng.permutation(len(groups[name]))]
        want, have = share * sum(e.seconds for e in entries), 0.0
        for e in entries:
            if have >= want:
                break
            chosen.append(e)
            have += e.seconds
    return chosen


def pack(cfg: TrainConfig, out: str | Path, speech_mb: float, workers: int = 2) -> dict:
    """Write the pack; returns its summary (also written to ``out/pack.json``)."""
    out = Path(out)
    root = Path(cfg.data.data_root).resolve()
    lists = build_lists(cfg.data)
    speech = _choose_speech(lists.speech, speech_mb * 1e6, cfg.data.seed)
    rows = {}
    with (root / "manifest.csv").open(newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames
        for row in reader:
            rows[row["path"]] = row
    jobs = []  # (manifest path, kind, group, source, destination)
    for kind, entries in (("speech", speech), ("noise", lists.noise), ("rir", lists.rir)):
        for e in entries:
            rel = e.path.resolve().relative_to(root).as_posix()
            suffix = ".flac" if kind == "rir" else ".ogg"
            group = f"speech/{e.group}" if kind == "speech" else kind
            jobs.append((rel, kind, group, str(e.path), str(out / Path(rel).with_suffix(suffix))))
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"source": str(root), "opus_level": OPUS_LEVEL, "groups": {}}
    written = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(_encode, [(src, dst, kind) for _, kind, _, src, dst in jobs], chunksize=8)
        for (rel, _, group, _, dst), (rate, seconds, size) in zip(jobs, results):
            row = dict(rows[rel])
            row.update(path=Path(dst).relative_to(out).as_posix(), sample_rate=str(rate), seconds=f"{seconds:.3f}")
            written.append(row)
            g = summary["groups"].setdefault(group, {"files": 0, "minutes": 0.0, "mb": 0.0})
            g["files"] += 1
            g["minutes"] += seconds / 60
            g["mb"] += size / 1e6
    with (out / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(written)
    summary["speech_minutes_of_source"] = round(sum(e.seconds for e in lists.speech) / 60, 1)
    summary["mb"] = round(sum(g["mb"] for g in summary["groups"].values()), 2)
    for g in summary["groups"].values():
        g["minutes"], g["mb"] = round(g["minutes"], 1), round(g["mb"], 2)
    (out / "pack.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training config whose [data] is packed")
    ap.add_argument("--out", required=True, help="folder to write (a data_root)")
    ap.add_argument("--speech-mb", type=float, default=20.0, help="size budget for the speech files")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    summary = pack(TrainConfig.load(args.config), args.out, args.speech_mb, args.workers)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
