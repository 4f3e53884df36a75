"""Click commands ``quantize`` and ``qat`` (registered on ``dfsdk`` with ``main.add_command``).

    dfsdk quantize --model dfn3 --target onnx --calibration ../shared/data -o bundles/dfn3-onnx-int8
    dfsdk quantize --report docs/QUANTIZATION.md --model dfn3 --model dfnet4-lite
    dfsdk qat --checkpoint runs/lite/best.pt --steps 2000 --out runs/lite-qat

The commands hold no logic: they read audio and call exporters.quantize / quantize_report and
training.qat.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from dfnet4_sdk.shared_data import shared_data_dir

DEFAULT_DATA = shared_data_dir()  # ../shared/data beside the checkout, or $DFNET4_SDK_DATA
STREET_CLIP = "noisy_real/dns5_blind_street_48k.flac"
EVAL_CLIPS = ("0_p102_382", "0_p104_302", "0_p106_813")  # dev_eval/ears, evaluation only


def _clip(path: Path, rate: int, seconds: float | None = None, offset_s: float = 0.0):
    from dfnet4_sdk.audio_io import read_audio, resample

    audio, sr = read_audio(path)
    audio = resample(audio.mean(axis=1), sr, rate)
    start = int(offset_s * rate)
    return audio[start: None if seconds is None else start + int(seconds * rate)]


def _calibration(directory: Path | None, rate: int, seconds: float):
    from dfnet4_sdk.exporters.quantize import calibration_audio

    return None if directory is None else calibration_audio(directory, rate, seconds=seconds)


def _fail_on_sdk_errors(fn):
    import functools

    from dfnet4_sdk.errors import DfSdkError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DfSdkError, FileNotFoundError) as e:
            raise click.ClickException(str(e)) from e

    return wrapper


@click.command()
@click.option("--model", "models", multiple=True, help="Model name or checkpoint (repeatable with --report; default dfn3).")
@click.option("--target", "targets", multiple=True, type=click.Choice(["onnx", "tflite", "coreml"]),
              help="Export target (repeatable with --report; default onnx).")
@click.option("--precision", type=click.Choice(["int8"]), default="int8", show_default=True)
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Folder of real noisy speech (or ../shared/data's layout) for calibration.")
@click.option("--calibration-seconds", type=float, default=24.0, show_default=True)
@click.option("-o", "--output", "output_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Bundle directory to write.")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Instead of one export: measure model x backend x scheme and write this Markdown table.")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Street clip seconds for --report.")
@click.option("--overwrite", is_flag=True)
@_fail_on_sdk_errors
def quantize(models, targets, precision, calibration, calibration_seconds, output_dir, report_path, seconds, overwrite):
    """Export a calibrated int8 bundle, or (--report) the table of docs/QUANTIZATION.md."""
    import torch

    from dfnet4_sdk.models import load_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    if report_path is None:
        from dfnet4_sdk.exporters.base import converter_for, export_bundle

        if output_dir is None or len(models) > 1 or len(targets) > 1:
            raise click.UsageError("one --model, one --target and -o DIR (or --report PATH)")
        model = load_model(models[0] if models else None)
        clips = _calibration(calibration, model.dsp.sample_rate_hz, calibration_seconds)
        bundle = export_bundle(model, converter_for(targets[0] if targets else "onnx"), output_dir,
                               precision=precision, calibration=clips, overwrite=overwrite)
        click.echo(json.dumps({"bundle": str(bundle.root), "validation": bundle.manifest.validation,
                               "quantization": {g: {k: v for k, v in q.items() if k != "candidates"}
                                                for g, q in bundle.manifest.quantization.get("graphs", {}).items()}},
                              indent=1, default=str))
        return

    from dfnet4_sdk.exporters.quantize_report import build_report, to_markdown

    data = calibration or DEFAULT_DATA
    rate = 48000
    street = data / STREET_CLIP
    audio, fixture = _clip(street, rate, seconds), _clip(street, rate, 1.0, offset_s=4.0)
    clips = _calibration(data, rate, calibration_seconds)
    ears = data / "dev_eval" / "ears"
    pairs = [(_clip(ears / f"{n}_noisy.flac", 16000), _clip(ears / f"{n}_clean.flac", 16000)) for n in EVAL_CLIPS]
    rows = build_report(models or ("dfn3",), targets or ("onnx",), audio, fixture, clips, pairs)
    table = to_markdown(rows, STREET_CLIP, seconds, EVAL_CLIPS, calibration_seconds)
    if report_path.exists():
        _replace_table(report_path, table)
    else:
        report_path.write_text(table)
    click.echo(table)


def _replace_table(path: Path, table: str) -> None:
    """Replace the text between the report markers of an existing document (else append)."""
    begin, end = "<!-- quantize-report:begin -->", "<!-- quantize-report:end -->"
    text = path.read_text()
    if begin in text and end in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + text[text.index(end):]
    else:
        text += f"\n{begin}\n{table}{end}\n"
    path.write_text(text)


@click.command()
@click.option("--checkpoint", required=True, help="Trained model to fine-tune (checkpoint .pt or model name).")
@click.option("--steps", type=int, required=True, help="QAT fine-tuning steps.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: state.pt, qat.pt, int8_onnx/ (the bundle).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Training TOML (data, loss, optimiser); default: the trainer's defaults.")
@click.option("--mode", type=click.Choice(["train", "distill"]), default="train", show_default=True)
@click.option("--lr", type=float, default=None, help="Override [optim] lr (QAT usually wants ~1/10 of training).")
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Calibration audio for the int8 export (default: the fixture clip).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--no-export", is_flag=True, help="Only fine-tune (qat.pt), no bundle.")
@_fail_on_sdk_errors
def qat(checkpoint, steps, out, config, mode, lr, calibration, device, no_export):
    """Quantization-aware fine-tuning of CHECKPOINT, then a validated ONNX int8 bundle."""
    from dfnet4_sdk.training.qat import qat_finetune

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    overrides = {"optim": {"lr": lr, "warmup_steps": min(10, steps)}} if lr is not None else {}
    clips = _calibration(calibration, 48000, 24.0)
    result, bundle = qat_finetune(checkpoint, out, steps, config=config, export=not no_export, device=device,
                                  mode=mode, calibration=clips, overrides=overrides)
    click.echo(json.dumps({"step": result["step"], "out": str(out),
                           "bundle": None if bundle is None else str(bundle.root),
                           "audio_snr_db": None if bundle is None else bundle.manifest.validation.get("audio_snr_db")}))
