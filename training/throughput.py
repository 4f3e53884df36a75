"""Training throughput: seconds of audio trained per second of wall time, old vs new settings.

    python -m dfnet4_sdk.training.throughput --config training/configs/dfnet4_lite_distill.toml \\
        --rounds 3 --steps 6 --write BENCHMARKS.md

Every setting runs ``Trainer.fit`` (the real loop, real data, the config's losses) for
``warmup + steps`` steps in a scratch directory; the clock runs from the end of the last warm-up
step to the end of the last step, so worker start-up and first-batch latency are excluded (a
real run amortises them over thousands of steps). The settings are measured in turn within
each round, rounds repeated, and medians reported: the machine may be shared, and interleaving
spreads its load over every setting alike. Every audio file is decoded once before the first
round (a long run has them all in its cache), so no setting pays for cold reads.

The ``old`` setting is the recipe as it ran before this measurement existed: one thread, no
worker, batch 4, and the loss code of commit ``BASELINE_REV`` (loaded from git and swapped into
the objective for that setting only), so old and new are measured by the same process on the
same machine in the same minutes.

``--write`` puts a Markdown "Training" section between ``<!-- training:start -->`` and
``<!-- training:end -->`` in the given file (appended at the end when the markers are absent).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from dfnet4_sdk.bench import write_section  # the report's marked sections, one home
from dfnet4_sdk.models import mamba
from dfnet4_sdk.training.config import OptimConfig, TrainConfig
from dfnet4_sdk.training.data import build_lists, load_mono
from dfnet4_sdk.training.trainer import Callback, Trainer

log = logging.getLogger(__name__)

BASELINE_REV = "cafb778"  # the last commit before the training speed-ups (issue 13, item 2)
START, END = "<!-- training:start -->", "<!-- training:end -->"
GPU_START, GPU_END = "<!-- training-gpu:start -->", "<!-- training-gpu:end -->"
PHASES = ("t_data", "t_teacher", "t_forward", "t_backward", "t_optimizer")


@dataclass(frozen=True)
class Setting:
    name: str
    num_threads: int
    data_workers: int
    batch_size: int
    baseline_losses: bool = False  # the loss code of BASELINE_REV
    scan_gradient: bool = True  # the Mamba scan's gradient written out (models/scan_training.py); False: autograd through it
    teacher_cache: bool = False  # mixtures and teacher outputs read from a cache built before the clock (teacher_cache.py)
    processes: int = 1  # data-parallel training processes (data_parallel.py), each on batch_size items
    compile: bool = False  # the scan and the spectral errors compiled (training/compiled.py); compiled in warm-up

    def apply(self, cfg: TrainConfig, steps: int, cache_dir: str = "") -> TrainConfig:
        """The config with this setting; lr scaled by sqrt(batch / config batch) (Adam). With the
        teacher cache, a pool of ``steps`` batches under ``cache_dir``: every step reads a different one."""
        if self.teacher_cache:  # every process of every step reads a different batch
            cfg = replace(cfg, data=replace(cfg.data, teacher_cache_batches=steps * self.processes, teacher_cache_dir=cache_dir))
        o = cfg.optim
        lr = o.lr * math.sqrt(self.processes * self.batch_size / o.batch_size)
        optim = replace(o, num_threads=self.num_threads, data_workers=self.data_workers, batch_size=self.batch_size,
                        processes=self.processes, compile=self.compile, lr=lr, steps=steps, valid_every=0, checkpoint_every=10**9, log_every=10**9)
        return replace(cfg, optim=optim)


SETTINGS = (
    Setting("old", 1, 0, 4, baseline_losses=True, scan_gradient=False),
    Setting("new losses", 1, 0, 4, scan_gradient=False),
    Setting("+ scan gradient", 1, 0, 4),
    Setting("2 threads", 2, 0, 4),
    Setting("+ worker", 1, 1, 4),
    Setting("+ batch 16", 1, 1, 16),
    Setting("+ teacher cache", 1, 1, 4, teacher_cache=True),
    Setting("+ cache, 2 threads", 2, 1, 4, teacher_cache=True),
    Setting("+ cache, 2 processes", 1, 0, 4, teacher_cache=True, processes=2),
    Setting("+ compile", 1, 0, 4, teacher_cache=True, processes=2, compile=True),
)


class _Clock(Callback):
    def __init__(self):
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []  # CPU seconds of the training process (all its threads, no worker)
        self.terms: list[dict[str, float]] = []

    def on_step(self, trainer, step, terms):
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
        self.terms.append(dict(terms))


@functools.cache
def _losses_module(rev: str):
    """training/losses.py as of git ``rev``, loaded as its own module (for one objective's ``L``)."""
    repo = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "show", f"{rev}:training/losses.py"], cwd=repo, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "losses_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("dfnet4_sdk_losses_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _AutogradScan:
    """The chunked scan with autograd through it, as before the scan's gradient was written out
    (a ``train_scan`` for ``mamba.use_train_scan``)."""

    apply = staticmethod(mamba._chunk_scan)


def build_cache(cfg: TrainConfig, setting: Setting, batches: int, cache_dir: str, mode: str = "distill") -> float:
    """Fills the teacher cache of ``setting`` (pool of ``batches``); returns seconds per batch."""
    with tempfile.TemporaryDirectory() as out:
        applied = setting.apply(cfg, batches, cache_dir)
        batches = applied.data.teacher_cache_batches
        applied = replace(applied, optim=replace(applied.optim, data_workers=0, processes=1, steps=batches))  # here, one core
        trainer = Trainer(applied, out, mode=mode, device="cpu")
        torch.set_num_threads(1)
        start = time.perf_counter()
        for batch, teacher, _ in trainer._batches():
            pass
        return (time.perf_counter() - start) / batches


def measure(cfg: TrainConfig, setting: Setting, steps: int, warmup: int, mode: str = "distill", cache_dir: str = "") -> dict[str, float]:
    """One run of ``setting``: audio s / wall s, samples / s, mean phase seconds per step."""
    clock = _Clock()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(setting.apply(cfg, warmup + steps, cache_dir), out, mode=mode, device="cpu", callbacks=[clock])
        if setting.baseline_losses:
            trainer.objective.L = _losses_module(BASELINE_REV)
        if not setting.scan_gradient:
            mamba.use_train_scan(trainer.model, _AutogradScan)
        trainer.fit(resume=False)
    wall = clock.ends[-1] - clock.ends[warmup - 1]
    audio_s = steps * setting.processes * setting.batch_size * cfg.data.segment_s
    measured = clock.terms[warmup:]
    phases = {k: statistics.fmean(t.get(k, 0.0) for t in measured) for k in PHASES}
    return {"audio_per_s": audio_s / wall, "samples_per_s": steps * setting.processes * setting.batch_size / wall,
            "s_per_step": wall / steps, "cpu_per_step": (clock.cpu_ends[-1] - clock.cpu_ends[warmup - 1]) / steps, **phases, "loss": statistics.fmean(t["loss"] for t in measured)}


def run(cfg: TrainConfig, settings=SETTINGS, rounds: int = 3, steps: int = 6, warmup: int = 2) -> dict:
    """Interleaved rounds; returns the raw results and the machine description."""
    results: dict[str, list[dict[str, float]]] = {s.name: [] for s in settings}
    lists = build_lists(cfg.data)  # decode every file once: no setting pays the cold file cache
    for entry in lists.speech + lists.noise + lists.rir:
        load_mono(entry.path)
    cache_dir = tempfile.mkdtemp(prefix="teacher_cache_")
    try:
        build_s = {s.name: build_cache(cfg, s, warmup + steps, cache_dir) for s in settings if s.teacher_cache}
        load_before = os.getloadavg()
        for r in range(rounds):
            for s in settings:
                results[s.name].append(measure(cfg, s, steps, warmup, cache_dir=cache_dir))
                log.info("round %d %s: %.2f s audio / s", r + 1, s.name, results[s.name][-1]["audio_per_s"])
    finally:
        torch.set_num_threads(1)
        shutil.rmtree(cache_dir, ignore_errors=True)
    return {"results": results, "settings": settings, "rounds": rounds, "steps": steps, "warmup": warmup,
            "cache_build_s": max(build_s.values(), default=0.0),
            "load": (load_before, os.getloadavg()), "date": datetime.date.today().isoformat()}


def to_markdown(report: dict, cfg: TrainConfig, config_path: str) -> str:
    res, settings = report["results"], report["settings"]
    med = {name: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for name, rows in res.items()}
    base_rows = res[settings[0].name]
    # speed-up: median over rounds of the ratio to `old` in the same round (load drifts between rounds)
    ratio = {name: statistics.median(r["audio_per_s"] / b["audio_per_s"] for r, b in zip(rows, base_rows))
             for name, rows in res.items()}
    cpu = _cpu_name()
    (l1, _, _), (l2, _, _) = report["load"]
    lines = [
        START,
        "## Training",
        "",
        f"Written by `python -m dfnet4_sdk.training.throughput --config {config_path}` on {report['date']}.",
        f"Machine: {cpu}, {os.cpu_count()} cores, load average {l1:.1f} at the start and {l2:.1f} at the end "
        f"(other processes were running: read ratios, not absolute figures). Python {platform.python_version()}, "
        f"torch {torch.__version__}.",
        f"Real config ({config_path}: DfNet4Lite distilled from DFN3, every loss term of the config), real data "
        f"(`{cfg.data.data_root}`), segments of {cfg.data.segment_s} s at 48 kHz. Each setting ran "
        f"{report['warmup']} warm-up + {report['steps']} timed steps of `Trainer.fit`, in turn, {report['rounds']} rounds; "
        "medians over rounds (min-max in brackets); the speed-up is the median of each round's ratio to `old`. "
        "`old`: one thread, no worker, batch 4, the losses of "
        f"commit {BASELINE_REV} (the code before the speed-ups). Larger batches scale the learning rate by "
        "sqrt(batch / 4); the data, the losses and their weights are the same in every setting.",
        "",
        "| setting | threads | workers | batch | audio s per wall s | samples / s | speed-up | s / step | "
        "CPU s / step | wait for data | teacher | forward + losses | backward | optimizer |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in settings:
        m, rows = med[s.name], res[s.name]
        lo, hi = min(r["audio_per_s"] for r in rows), max(r["audio_per_s"] for r in rows)
        phases = " | ".join(f"{m[k]:.3f}" for k in PHASES)
        lines.append(f"| {s.name} | {s.num_threads} | {s.data_workers} | {s.batch_size} | {m['audio_per_s']:.1f} "
                     f"({lo:.1f}-{hi:.1f}) | {m['samples_per_s']:.2f} | {ratio[s.name]:.2f}x | "
                     f"{m['s_per_step']:.2f} | {m['cpu_per_step']:.2f} | {phases} |")
    lines += [
        "",
        "Phases are seconds per step in the training process; `CPU s / step` is that process's CPU time (all "
        "its threads, not the worker's): on a loaded machine it is the steadier figure of the step's own cost. With a worker, the mixtures, DFN3's outputs and "
        "the losses' targets (compressed target spectra, ideal mask, local SNR) are made in the worker process "
        "while the step runs, so `teacher` drops to 0 and `wait for data` is only the time the step waited for "
        "them; without one, `wait for data` is the mixing itself. `+ scan gradient`: the Mamba scan's gradient "
        "written out (`models/scan_training.py`) instead of autograd through the chunked scan (the rows above "
        "it train through the old one). `+ teacher cache`: the run trains on a pool of batches whose mixtures "
        "and DFN3 outputs were made once and are read from disk every epoch (`[data] teacher_cache_batches`, "
        "`training/teacher_cache.py`); the worker then only reads them and makes the targets. Making the pool "
        f"cost {report.get('cache_build_s', 0.0):.2f} s per batch on one core, before the clock (paid once per "
        "pool, then amortised over every epoch and every run with the same data config). `+ cache, 2 processes`: "
        "two training processes (`[optim] processes = 2`, `training/data_parallel.py`), each on its own batch of "
        "4 read from the cache, the gradients averaged (an effective batch of 8, learning rate x sqrt 2); its audio "
        "counts both processes' batches, its phases and CPU are process 0's. `+ compile`: the same with `[optim] compile = true` "
        "(`training/compiled.py`: the Mamba scan and the compressed spectral errors run as torch.compile'd kernels); "
        "each run compiles in its first warm-up step, before the clock (paid once per run; torch caches the compiled "
        "code on disk, so later runs compile in seconds).",
        END,
    ]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def chunk_row(folder: Path) -> dict:
    """Throughput of one GPU chunk (training/remote_chunk.sh) from what it brought back: the
    trainer's log.jsonl, the run's config.toml and chunk.json (its device and last step).
    Only logged steps count: the first logged row includes start-up (workers, cuDNN), so it is left out."""
    import json

    import tomllib

    rows = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines() if line.strip()]
    cfg = tomllib.loads((folder / "config.toml").read_text())
    audio_per_step = cfg["optim"]["batch_size"] * cfg["data"]["segment_s"]
    timed = rows[1:]
    every = cfg["optim"].get("log_every", OptimConfig.log_every)  # steps per logged row
    steps = every * len(timed)
    wall = sum(r["s_per_step"] * every for r in timed)
    extra = json.loads((folder / "chunk.json").read_text())
    return {"chunk": folder.name, "device": extra.get("device", "?"), "steps": extra.get("step", rows[-1]["step"]),
            # a grown init checkpoint is not its config's preset: chunk.json may name the student
            "student": extra.get("student", cfg.get("model", {}).get("preset", "?")),
            "workers": cfg["optim"].get("data_workers", 0),
            "batch": cfg["optim"]["batch_size"], "segment_s": cfg["data"]["segment_s"],
            "audio_h": extra.get("step", rows[-1]["step"]) * audio_per_step / 3600,
            "s_per_step": wall / steps, "audio_per_s": steps * audio_per_step / wall,
            "data_wait": statistics.median(r["t_data"] for r in timed), "held_out": extra.get("held_out", {})}


def gpu_markdown(folders: list[Path]) -> str:
    rows = [chunk_row(Path(f)) for f in folders]
    lines = [
        GPU_START,
        "## Training on a lent GPU",
        "",
        f"Written by `python -m dfnet4_sdk.training.throughput --chunks {' '.join(str(f) for f in folders)}` "
        f"on {datetime.date.today().isoformat()}, from what each chunk of `training/remote_chunk.sh` brought back "
        "(its log, config and chunk.json). Same code path as the CPU rows above (`Trainer.fit`, `--device cuda`), "
        "data from `training/pack.py` (Opus copy of the config's data), DFN3 teacher on the GPU, data workers on "
        "the machine's 16 cores (chunks run side by side share them and the GPU). Steps after the first 10 (start-up) are timed. Held-out scores: "
        "`training.learning_curve.HeldOut` here on the chunk's weights, stored in its chunk.json.",
        "",
        "| chunk | student | device | data workers | steps | batch x segment | audio seen | s / step | audio s per wall s | wait for data (median) "
        "| held-out after: OVRL noisy_real / PESQ EARS |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['chunk']} | {r['student']} | {r['device']} | {r['workers']} | {r['steps']} | {r['batch']} x {r['segment_s']:g} s | "
                     f"{r['audio_h']:.1f} h | {r['s_per_step']:.3f} | {r['audio_per_s']:.0f} | {r['data_wait']:.3f} s | "
                     + (f"{r['held_out']['ovrl_noisy_real']:.3f} / {r['held_out']['pesq_ears']:.3f} |" if r["held_out"] else "not scored |"))
    lines.append(GPU_END)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="training/configs/dfnet4_lite_distill.toml")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="names of the settings to run (default: all)")
    parser.add_argument("--write", help="file that receives the Training section (e.g. BENCHMARKS.md)")
    parser.add_argument("--chunks", nargs="+", type=Path,
                        help="instead of measuring here: tabulate GPU chunks (folders that training/remote_chunk.sh filled)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.chunks:
        section = gpu_markdown(args.chunks)
        sys.stdout.write(section)
        if args.write:
            write_section(args.write, section)
        return
    cfg = TrainConfig.load(args.config)
    settings = tuple(s for s in SETTINGS if not args.only or s.name in args.only or s.name == "old")
    report = run(cfg, settings, args.rounds, args.steps, args.warmup)
    section = to_markdown(report, cfg, args.config)
    sys.stdout.write(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
