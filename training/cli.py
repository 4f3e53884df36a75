"""Click commands `train` and `distill` (registered on `dfsdk` with ``main.add_command``).

    dfsdk distill --config training/configs/dfnet4_lite_distill.toml --out runs/lite --resume
    dfsdk train --config training/configs/tiny.toml --out runs/tiny --steps 5 --device cpu

Both also run as ``python -m dfnet4_sdk.training.cli distill ...``. The commands hold no logic:
they load the config and call ``Trainer.fit``.
"""

from __future__ import annotations

import json
import logging

import click

from dfnet4_sdk.training.config import TrainConfig
from dfnet4_sdk.training.trainer import Trainer


def _options(f):
    f = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="cuda when a GPU is present (auto), else cpu")(f)
    f = click.option("--steps", type=int, default=None, help="override [optim] steps (total, not additional)")(f)
    f = click.option("--out", "out", type=click.Path(file_okay=False), required=True,
                     help="run directory: state.pt, best.pt, log.jsonl, valid.jsonl")(f)
    f = click.option("--resume/--no-resume", default=True, show_default=True,
                     help="continue from OUT/state.pt when it exists")(f)
    f = click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), required=True,
                     help="TOML training config (see training/configs/)")(f)
    return f


def _run(mode: str, config: str, resume: bool, out: str, steps: int | None, device: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.load(config)
    if steps is not None:
        cfg = cfg.with_steps(steps)
    result = Trainer(cfg, out, mode=mode, device=device).fit(resume=resume)
    last = result["history"][-1] if result["history"] else {}
    click.echo(json.dumps({"step": result["step"], "loss": last.get("loss"), "best_ovrl": result["best_metric"],
                           "best_step": result["best_step"], "out": out}))


@click.command()
@_options
def train(config: str, resume: bool, out: str, steps: int | None, device: str) -> None:
    """Supervised training of a DfNet4 student on on-the-fly mixtures."""
    _run("train", config, resume, out, steps, device)


@click.command()
@_options
def distill(config: str, resume: bool, out: str, steps: int | None, device: str) -> None:
    """Distil a teacher (DFN3 by default) into a DfNet4 / DfNet4Lite student."""
    _run("distill", config, resume, out, steps, device)


@click.command("fit-proxy")
@click.option("--config", "config", type=click.Path(exists=True, dir_okay=False), required=True,
              help="training config whose [data] table makes the mixtures")
@click.option("--mixtures", type=int, default=150, show_default=True, help="mixtures (x4 versions each)")
@click.option("--epochs", type=int, default=150, show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="proxy checkpoint to write")
def fit_proxy_command(config: str, mixtures: int, epochs: int, out: str) -> None:
    """Fit the DNSMOS proxy to real DNSMOS OVRL scores and report its held-out correlation."""
    import torch
    from dfnet4_sdk.training.dnsmos_proxy import fit_proxy, make_fit_clips

    from dfnet4_sdk.models import load_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.load(config)
    torch.set_num_threads(cfg.optim.num_threads)
    teacher = load_model(cfg.model.teacher)
    clips = make_fit_clips(cfg.data, teacher, mixtures)
    proxy, report = fit_proxy(clips, teacher.dsp, epochs=epochs)
    proxy.save(out, report)
    click.echo(json.dumps(report))


@click.group()
def cli() -> None:
    """Training commands (also available as `dfsdk train` / `dfsdk distill`)."""


cli.add_command(train)
cli.add_command(distill)
cli.add_command(fit_proxy_command)

if __name__ == "__main__":
    cli()
