"""Learning curves on held-out material: score every checkpoint a run validated against audio
the project never trains on, as a function of the hours of audio the student has seen.

    python -m dfnet4_sdk.training.learning_curve runs/curve_old runs/curve_new \\
        --labels old new --init - runs/dfn3conv_init.pt -o docs/learning_curves/dfn3_init.csv

Held-out sets (see ../shared/data/README.md):
- ``noisy_real/``: real noisy recordings without a reference: DNSMOS P.835 OVRL;
- ``dev_eval/ears/``: EARS noisy/clean pairs (CC BY-NC: evaluation only): PESQ-wb and OVRL.

Hours of audio seen = step x batch_size x segment_s (from the run's config.toml); wall time is
the sum of the run's logged seconds per step (validation included).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tomllib
from pathlib import Path

import numpy as np
import soundfile as sf

from dfnet4_sdk.evaluation import pesq_wb
from dfnet4_sdk.models import load_model
from dfnet4_sdk.training.data import load_mono
from dfnet4_sdk.training.validation import dnsmos_single_thread, enhance

log = logging.getLogger(__name__)

EARS_RATE_HZ = 16000
COLUMNS = ("recipe", "step", "audio_hours", "train_wall_min", "ovrl_noisy_real", "pesq_ears", "ovrl_ears", "checkpoint")


class HeldOut:
    """The held-out clips, loaded once: noisy_real (any rate) and the first ``ears_pairs`` EARS pairs."""

    def __init__(self, data_root: Path, ears_pairs: int = 12):
        self.real = []
        for p in sorted((data_root / "noisy_real").glob("*.flac")):
            self.real.append((p.name, load_mono(p), sf.info(str(p)).samplerate))
        ears = sorted((data_root / "dev_eval" / "ears").glob("*_noisy.flac"))[:ears_pairs]
        self.ears = [(load_mono(p), load_mono(p.with_name(p.name.replace("_noisy", "_clean")))) for p in ears]

    def score(self, model) -> dict[str, float]:
        dnsmos = dnsmos_single_thread()
        ovrl_real = [dnsmos(enhance(model, a, r), r)["ovrl"] for _, a, r in self.real]
        pesq, ovrl_ears = [], []
        for noisy, clean in self.ears:
            y = enhance(model, noisy, EARS_RATE_HZ)
            pesq.append(pesq_wb(clean, y, EARS_RATE_HZ))
            ovrl_ears.append(dnsmos(y, EARS_RATE_HZ)["ovrl"])
        return {"ovrl_noisy_real": float(np.mean(ovrl_real)), "pesq_ears": float(np.mean(pesq)),
                "ovrl_ears": float(np.mean(ovrl_ears))}

    def score_noisy(self) -> dict[str, float]:
        dnsmos = dnsmos_single_thread()
        return {"ovrl_noisy_real": float(np.mean([dnsmos(a, r)["ovrl"] for _, a, r in self.real])),
                "pesq_ears": float(np.mean([pesq_wb(c, n, EARS_RATE_HZ) for n, c in self.ears])),
                "ovrl_ears": float(np.mean([dnsmos(n, EARS_RATE_HZ)["ovrl"] for n, _ in self.ears]))}


def run_points(run: Path) -> list[tuple[int, float, float, Path]]:
    """(step, audio hours, train wall minutes, checkpoint) for every validated checkpoint of ``run``."""
    cfg = tomllib.loads((run / "config.toml").read_text())
    seconds_per_step = cfg["optim"]["batch_size"] * cfg["data"]["segment_s"]
    wall, last, walls = 0.0, 0, {}
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        wall += row["s_per_step"] * (row["step"] - last)
        last = row["step"]
        walls[last] = wall
    points = []
    for ckpt in sorted((run / "validated").glob("step_*.pt")):
        step = int(ckpt.stem.split("_")[1])
        w = max((v for k, v in walls.items() if k <= step), default=0.0)
        points.append((step, step * seconds_per_step / 3600, w / 60, ckpt))
    return points


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--labels", nargs="*", default=[])
    ap.add_argument("--init", nargs="+", default=None, help="per run: the step-0 checkpoint, or - for none")
    ap.add_argument("--reference", nargs="*", default=["dfn3", "dfnet4-lite-v1"], help="models (names or checkpoints) scored once")
    ap.add_argument("--every", type=int, default=1, help="score every n-th validated checkpoint (and the last)")
    ap.add_argument("--ears-pairs", type=int, default=12)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)
    if len(args.labels) != len(args.runs) or (args.init and len(args.init) != len(args.runs)):
        ap.error(f"give one --labels (and one --init, if any) per run: {len(args.runs)} runs, "
                 f"{len(args.labels)} labels, {len(args.init or [])} inits")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    held = HeldOut(args.data_root, args.ears_pairs)
    rows = [{"recipe": "noisy", "step": 0, "audio_hours": 0, "train_wall_min": 0, **held.score_noisy(), "checkpoint": ""}]
    for name in args.reference:
        rows.append({"recipe": name, "step": "", "audio_hours": "", "train_wall_min": "",
                     **held.score(load_model(name)), "checkpoint": name})
        log.info("%s", rows[-1])
    inits = args.init or ["-"] * len(args.runs)
    for run, label, init in zip(args.runs, args.labels, inits):
        points = run_points(run)
        chosen = points[:: args.every] + ([points[-1]] if points and points[-1] not in points[:: args.every] else [])
        if init != "-":
            chosen = [(0, 0.0, 0.0, Path(init))] + chosen
        for step, hours, wall, ckpt in chosen:
            rows.append({"recipe": label, "step": step, "audio_hours": round(hours, 4), "train_wall_min": round(wall, 2),
                         **held.score(load_model(ckpt)), "checkpoint": str(ckpt)})
            log.info("%s", rows[-1])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    log.info("wrote %s (%d rows)", args.output, len(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
