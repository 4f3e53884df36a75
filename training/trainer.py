"""The training loop: supervised (`train`) or distillation from a teacher (`distill`).

    trainer = Trainer(TrainConfig.load("training/configs/tiny.toml"), "runs/tiny", mode="distill")
    trainer.fit(resume=True)

Run directory ``out``:
    state.pt       full training state (model, helpers, optimisers, step, RNG, best metric),
                   written atomically every ``checkpoint_every`` steps, on Ctrl-C / SIGTERM, at the end
    best.pt        the student with the best validation DNSMOS OVRL so far (a `save_checkpoint`
                   file: `dfsdk run --model runs/x/best.pt` and `load_model` read it)
    validated/step_<n>.pt  the student at every validation (2 MB each), so a checkpoint can be
                   chosen afterwards by another rule (e.g. best OVRL with PESQ near the teacher's)
    log.jsonl      one line per ``log_every`` steps: mean of each loss term, s/step, lr
    valid.jsonl    one line per validation: DNSMOS SIG/BAK/OVRL and PESQ of the student
    reference.json the same metrics for the noisy input and the teacher (computed once)
    config.toml    the config this run was started with

Batch ``step`` depends only on (seed, step) (see ``data.py``), and the torch RNG state is saved, so
a resumed run continues with exactly the batches and random draws of an uninterrupted one.

Throughput (``[optim]``): ``num_threads`` torch threads in the training process, and
``data_workers`` processes that prepare batches ahead of the step (``BatchPipeline``): the
mixtures, when the teacher runs on the CPU the teacher's outputs, and the losses' targets
(``Objective.targets``: compressed target spectra, ideal mask, local SNR), so all of it overlaps
the student's step on another core. The batches are the same with or without workers. Each
``log.jsonl`` row also says where the time went (``t_data``: waiting for the batch, ``t_teacher``,
``t_forward``: student and losses, ``t_backward``, ``t_optimizer``; seconds per step).

Callbacks (e.g. quantisation-aware training) observe and modify the run; see ``Callback``.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import load_model, save_checkpoint
from dfnet4_sdk.models.dfnet4 import DfNet4
from dfnet4_sdk.training.compiled import require_compiler, use_fused_kernels
from dfnet4_sdk.training.config import TrainConfig
from dfnet4_sdk.training.data import MixtureDataset, build_lists
from dfnet4_sdk.training.distill import check_compatible, run_model, teacher_targets
from dfnet4_sdk.training.losses import istft
from dfnet4_sdk.training.objective import Objective
from dfnet4_sdk.training.pipeline import BatchPipeline
from dfnet4_sdk.training.teacher_cache import TeacherCache
from dfnet4_sdk.training.validation import DevSet

log = logging.getLogger(__name__)

STATE_FORMAT = "dfnet4-sdk-train-state"
MODES = ("train", "distill")


class Callback:
    """Hooks into a run. Subclass and override what you need; every hook may read and modify
    the trainer (``trainer.model``, ``trainer.optimizer``, ``trainer.step``...).

    - ``on_train_start(trainer)``: after the student is built and resumed weights loaded, BEFORE
      the optimiser is created, so a callback may replace ``trainer.model`` (e.g. insert
      fake-quantisation for QAT) and the optimiser will train the replacement.
    - ``on_step(trainer, step, terms)``: after each optimiser step; ``terms`` maps loss names
      to floats.
    - ``on_epoch(trainer, step, metrics)``: after each validation (mixtures are generated on the
      fly, so an "epoch" is one validation interval); ``metrics`` as in valid.jsonl.
    - ``on_train_end(trainer)``: after the final checkpoint is written.
    - ``state_dict()`` / ``load_state_dict(d)``: saved in state.pt under the callback's class
      name, so a resumed run restores it.
    """

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step(self, trainer: Trainer, step: int, terms: dict[str, float]) -> None: ...
    def on_epoch(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
    def state_dict(self) -> dict[str, Any]:
        return {}
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class _Meter:
    sums: dict[str, float] = field(default_factory=dict)
    count: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, terms: dict[str, float]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.count += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no GPU; use --device auto or cpu")
    return torch.device(device)


class Trainer:
    def __init__(self, cfg: TrainConfig, out: str | Path, mode: str = "train", device: str = "auto",
                 callbacks: list[Callback] | None = None):
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        self.cfg, self.mode, self.out = cfg, mode, Path(out)
        self.device = pick_device(device)
        if cfg.optim.compile:
            require_compiler(self.device)
        self.callbacks = list(callbacks or [])
        self.step = 0
        self._dp, self._rank = None, 0  # data-parallel processes (data_parallel.py), this one's rank
        self.best_metric = -math.inf
        self.best_step = -1
        self._stop = False
        torch.manual_seed(cfg.data.seed)
        self.model = self._build_student().to(self.device)
        self.teacher = None
        if mode == "distill":
            self.teacher = load_model(cfg.model.teacher).to(self.device).eval().requires_grad_(False)
            problems = check_compatible(self.model, self.teacher)
            if problems:
                raise ConfigError("cannot distill: " + "; ".join(problems))
        self.objective = Objective(cfg.loss, self.model, self.teacher).to(self.device)
        if cfg.optim.compile:
            use_fused_kernels(self.model, self.objective)  # training/compiled.py
        lists = build_lists(cfg.data)
        log.info("training data: %s", json.dumps(lists.summary()))
        self.data = MixtureDataset(cfg.data, self.model.dsp, lists, "train")
        self.devset = DevSet(Path(cfg.data.data_root), cfg.optim.valid_clips) if cfg.optim.valid_every else None

    def _build_student(self):
        m = self.cfg.model
        if m.init_checkpoint:
            return load_model(m.init_checkpoint).train()
        return DfNet4.from_preset(m.preset).train()

    # -- state -----------------------------------------------------------------------------------

    def _make_optimizers(self) -> None:
        o = self.cfg.optim
        params = list(self.model.parameters()) + self.objective.generator_parameters()
        self.optimizer = torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
        self.disc_optimizer = None
        if self.objective.discriminator is not None:
            self.disc_optimizer = torch.optim.AdamW(self.objective.discriminator.parameters(), lr=o.disc_lr, betas=(0.8, 0.99))

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "mode": self.mode,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "model_config": self.model.config_dict(),
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
            "torch_rng": torch.get_rng_state(),
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "callbacks": {type(c).__name__: c.state_dict() for c in self.callbacks},
        }

    def save_state(self) -> Path:
        path = self.out / "state.pt"
        tmp = path.with_name("state.pt.tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken state.pt
        return path

    def _load_state(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path} is not a training state written by this trainer")
        self.model.load_state_dict(state["model"])
        missing, unexpected = self.objective.load_state_dict(state["objective"], strict=False)
        if missing or unexpected:  # e.g. a fine-tuning phase that adds the GAN
            log.info("objective helpers new in this phase: %s; dropped: %s", missing, unexpected)
        self._resumed = state
        self.step = state["step"]
        self.best_metric, self.best_step = state["best_metric"], state["best_step"]
        torch.set_rng_state(state["torch_rng"])
        for c in self.callbacks:
            c.load_state_dict(state["callbacks"].get(type(c).__name__, {}))

    def _load_optimizers(self) -> None:
        state = getattr(self, "_resumed", None)
        if state is None:
            return
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # a phase with different trainable helpers
            log.warning("optimizer state not restored (%s); starting it fresh", e)
        if self.disc_optimizer is not None and state.get("disc_optimizer"):
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])

    def lr_at(self, step: int) -> float:
        o = self.cfg.optim
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        progress = min(1.0, (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps))
        return o.lr_min + 0.5 * (o.lr - o.lr_min) * (1 + math.cos(math.pi * progress))

    # -- loop ------------------------------------------------------------------------------------

    def train_step(self, batch: dict[str, torch.Tensor], teacher_out: dict[str, torch.Tensor] | None = None,
                   targets: dict[str, Any] | None = None) -> dict[str, float]:
        """One optimiser step. ``teacher_out``: the teacher's outputs for this batch when they were
        computed ahead (``BatchPipeline``), ``targets`` the losses' targets likewise; otherwise they
        are made here. Returns the loss terms and ``t_*`` seconds spent in each phase."""
        clock = [time.perf_counter()]
        lap = lambda: clock.append(time.perf_counter()) or clock[-1] - clock[-2]
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if self.teacher is not None and teacher_out is None:
            teacher_out = teacher_targets(self.teacher, batch)
        elif teacher_out is not None:
            teacher_out = {k: v.to(self.device) for k, v in teacher_out.items()}
        if targets is not None:
            targets = _to_device(targets, self.device)
        timings = {"t_teacher": lap()}
        self.model.train()
        return self._step(batch, teacher_out, targets, timings, lap)

    def _step(self, batch, teacher_out, targets, timings, lap) -> dict[str, float]:
        out = run_model(self.model, batch)
        if self.disc_optimizer is not None:
            d_loss = self.objective.discriminator_loss(out, batch)
            if d_loss is not None:
                self.disc_optimizer.zero_grad(set_to_none=True)
                d_loss.backward()
                self.disc_optimizer.step()
        terms = self.objective.generator_terms(out, batch, teacher_out, targets)
        loss = sum(terms.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {self.step}: {({k: v.item() for k, v in terms.items()})}")
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        timings["t_forward"] = lap()
        loss.backward()
        if self._dp is not None:  # the mean gradient of every process's batch
            self._dp.average_gradients([p for g in self.optimizer.param_groups for p in g["params"]])
        timings["t_backward"] = lap()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        values = {k: float(v.detach()) for k, v in terms.items()}
        values["loss"] = float(loss.detach())
        if self.disc_optimizer is not None and d_loss is not None:
            values["disc"] = float(d_loss.detach())
        timings["t_optimizer"] = lap()
        return {**values, **timings}

    def _batches(self):
        """The run's remaining batches as (batch, teacher outputs or None, loss targets or None),
        in step order. With workers on a CPU run, the workers also make the losses' targets."""
        o = self.cfg.optim
        cpu = self.device.type == "cpu"
        ahead = o.data_workers > 0 and cpu
        cache = None
        if self.teacher is not None and cpu and self.cfg.data.teacher_cache_batches > 0:
            cache = TeacherCache.for_run(self.cfg, o.batch_size, self.model.dsp, self.teacher,
                                         functools.partial(istft, params=self.teacher.dsp))
        teacher = self.teacher if ahead or cache is not None else None
        pipeline = BatchPipeline(self.data, o.batch_size, self.step, o.steps, teacher,
                                 self.objective.targets if ahead else None, cache, o.processes, self._rank)
        for batch in pipeline.iterate(o.data_workers):
            yield batch, batch.pop("teacher", None), batch.pop("targets", None)

    def fit(self, resume: bool = True) -> dict[str, Any]:
        o = self.cfg.optim
        torch.set_num_threads(o.num_threads)
        self.out.mkdir(parents=True, exist_ok=True)
        state_path = self.out / "state.pt"
        if resume and state_path.exists():
            self._load_state(state_path)
            log.info("resumed from %s at step %d (best OVRL %.3f at step %d)", state_path, self.step, self.best_metric, self.best_step)
        (self.out / "config.toml").write_text(_to_toml(self.cfg.to_dict()))
        for c in self.callbacks:
            c.on_train_start(self)
        self._make_optimizers()
        self._load_optimizers()
        previous = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        if o.processes > 1:
            self._start_replicas()
        meter, history = _Meter(), []
        try:
            if self.devset is not None and not (self.out / "reference.json").exists():
                ref = self.devset.reference(self.teacher)
                (self.out / "reference.json").write_text(json.dumps(ref, indent=1))
            batches = self._batches()
            while self.step < o.steps and not self._stop:
                waited = time.perf_counter()
                batch, teacher_out, targets = next(batches)
                waited = time.perf_counter() - waited
                terms = {**self.train_step(batch, teacher_out, targets), "t_data": waited}
                self.step += 1
                if self._dp is not None:
                    self._stop = self._dp.any_stop(self._stop)
                meter.add(terms)
                for c in self.callbacks:
                    c.on_step(self, self.step, terms)
                if self.step % o.log_every == 0 or self.step == o.steps:
                    row = {"step": self.step, **meter.means(), "s_per_step": (time.monotonic() - meter.started) / meter.count,
                           "lr": self.lr_at(self.step - 1)}
                    history.append(row)
                    _append_jsonl(self.out / "log.jsonl", row)
                    log.info("step %d loss %.4f (%.2f s/step)", self.step, row["loss"], row["s_per_step"])
                    meter = _Meter()
                if o.valid_every and (self.step % o.valid_every == 0 or self.step == o.steps):
                    self.validate()
                if self.step % o.checkpoint_every == 0:
                    self.save_state()
        finally:
            batches = None  # stops the pipeline's workers
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.save_state()
            log.info("saved %s at step %d", state_path, self.step)
            if self._dp is not None:
                self._dp.finish(failed=sys.exc_info()[0] is not None)
                self._dp = None
        for c in self.callbacks:
            c.on_train_end(self)
        return {"step": self.step, "history": history, "best_metric": self.best_metric, "best_step": self.best_step}

    def _start_replicas(self) -> None:
        """Forks ``[optim] processes - 1`` replicas (training/data_parallel.py). This process
        returns as process 0; a replica trains its share of batches here and exits."""
        from dfnet4_sdk.training.data_parallel import DataParallel

        if self.device.type != "cpu" or self.disc_optimizer is not None:
            raise ConfigError("[optim] processes > 1 is for CPU training without the GAN discriminators; "
                              "set processes = 1 (on a GPU, one process uses the whole device)")
        self._dp = DataParallel(self.cfg.optim.processes)
        self._rank = self._dp.start()
        if self._rank == 0:
            return
        failed = True
        try:
            batches = self._batches()
            while self.step < self.cfg.optim.steps and not self._stop:
                batch, teacher_out, targets = next(batches)
                self.train_step(batch, teacher_out, targets)
                self.step += 1
                self._stop = self._dp.any_stop(self._stop)
            failed = False
        finally:
            self._dp.finish(failed)  # exits this process

    def _request_stop(self, signum, frame) -> None:
        log.warning("signal %d: stopping after this step and saving %s", signum, self.out / "state.pt")
        self._stop = True

    def validate(self) -> dict[str, float]:
        self.model.eval()
        metrics = {"step": self.step, **self.devset.score(self.model)}
        self.model.train()
        _append_jsonl(self.out / "valid.jsonl", metrics)
        log.info("validation at step %d: %s", self.step, {k: round(v, 3) for k, v in metrics.items()})
        extra = {"step": self.step, "mode": self.mode, **metrics}
        save_checkpoint(self.model, self.out / "validated" / f"step_{self.step:07d}.pt", extra=extra)
        if metrics["ovrl"] > self.best_metric:
            self.best_metric, self.best_step = metrics["ovrl"], self.step
            save_checkpoint(self.model, self.out / "best.pt", extra=extra)
        for c in self.callbacks:
            c.on_epoch(self, self.step, metrics)
        return metrics


def _to_device(x: Any, device: torch.device) -> Any:
    """Tensors inside dicts, tuples and named tuples (``Objective.targets``) moved to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, tuple):
        items = [_to_device(v, device) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return x


def _append_jsonl(path: Path, row: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _to_toml(data: dict) -> str:
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}")
        lines.append("")
    return "\n".join(lines)
