"""``dfsdk`` command line. Each command parses options and calls the library; no logic here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dfnet4_sdk import __version__
from dfnet4_sdk.cli_errors import fail_on_sdk_errors
from dfnet4_sdk.cli_run import run
from dfnet4_sdk.errors import DfSdkError
from dfnet4_sdk.shared_data import shared_data_dir

class _LazyGroup(click.Group):
    """Commands that live in exporters/ and training/ are imported only when invoked, so
    `dfsdk run` on a bundle never imports torch."""

    lazy = {
        "train": "dfnet4_sdk.training.cli:train",
        "distill": "dfnet4_sdk.training.cli:distill",
        "fit-proxy": "dfnet4_sdk.training.cli:fit_proxy_command",
        "quantize": "dfnet4_sdk.exporters.quantize_cli:quantize",
        "qat": "dfnet4_sdk.exporters.quantize_cli:qat",
    }
    summaries = {
        "train": "Train a model from a config file (supervised).",
        "distill": "Distil a student from DFN3 from a config file.",
        "fit-proxy": "Fit the DNSMOS proxy used by the proxy loss.",
        "quantize": "Export a calibrated int8 bundle, or write the quantization report.",
        "qat": "Quantization-aware fine-tuning, then an int8 bundle.",
    }

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            summary = self.summaries.get(name) or click.Group.get_command(self, ctx, name).get_short_help_str(60)
            rows.append((name, summary))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup)
@click.version_option(__version__, prog_name="dfsdk")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """DeepFilterNet edge SDK: enhance, import, export and verify speech-enhancement models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


main.add_command(run)


SHARED_DATA = shared_data_dir()  # ../shared/data beside a source checkout, or $DFNET4_SDK_DATA
DEFAULT_EVAL_DIR = SHARED_DATA / "dev_eval"


def _default_clip() -> Path:
    """Real noisy speech for conformance and benchmarks: the DNS5 clip of ../shared/data, else the
    checkout's demo clip (said on stderr), else an AudioFileError saying to pass --audio."""
    from dfnet4_sdk.shared_data import DEMO_CLIP, default_noisy_clip

    path = default_noisy_clip("--audio")
    if path == DEMO_CLIP:
        click.echo(f"no DNS5 clip in {shared_data_dir()}: using the demo clip {path.name} (pass --audio to choose)",
                   err=True)
    return path


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of objects instead of a table.")
def models_(as_json):
    """List the models that ship inside the package, which one is the default, and what they measure."""
    import json

    from dfnet4_sdk.shipped import listing_lines, model_listing

    rows = model_listing()
    click.echo(json.dumps(rows, indent=2) if as_json else "\n".join(listing_lines(rows)))


@main.command("eval")
@click.argument("source", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("--model", default=None,
              help="Model to enhance with (name, checkpoint, DFN3 archive or bundle; default: the default model).")
@click.option("--backend", type=click.Choice(["torch", "onnx", "tflite", "coreml"]), default=None,
              help="Backend (default: the bundle's, else the best available).")
@click.option("--system", "systems", multiple=True,
              help="Only these systems: noisy, enhanced, clean (DNSMOS only) or a reference label such as "
                   "deepfilternet3 (repeatable; default: noisy, enhanced and every reference found).")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write one row per item and system (every metric) to this CSV.")
@click.option("--markdown", "markdown_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the summary table (Markdown) here.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write one spectrogram PNG per item into this folder.")
@click.option("--threads", type=int, default=1, show_default=True, help="Backend threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@fail_on_sdk_errors
def eval_(source, model, backend, systems, csv_path, markdown_path, plot_dir, threads, quiet):
    """Score noisy, enhanced and reference audio with PESQ, STOI, ESTOI, SI-SDR and DNSMOS.

    SOURCE is a folder of X_noisy.* files with X_clean.* (and X_<label>.* outputs of other
    systems) beside them, searched recursively, or a CSV manifest name,noisy,clean[,label...]
    (default: ../shared/data/dev_eval). Needs the [eval] extra.
    """
    from tqdm import tqdm

    from dfnet4_sdk import evaluation as ev
    from dfnet4_sdk.files import check_new_file, check_output_dir
    from dfnet4_sdk.runtime import Runtime

    for path, suffix, what in ((csv_path, ".csv", "--csv"), (markdown_path, ".md", "--markdown")):
        if path is not None:
            check_new_file(path, suffix, what)
    if plot_dir is not None:
        check_output_dir(plot_dir, overwrite=None, what="--plot folder")
    items = ev.find_eval_items(source or DEFAULT_EVAL_DIR)
    runtime = Runtime(model, backend=backend, num_threads=threads) if not systems or "enhanced" in systems else None
    with tqdm(total=len(items), unit="item", desc="evaluating", disable=quiet, file=sys.stderr) as bar:
        rows = ev.evaluate(items, runtime, systems=systems or None, plot_dir=plot_dir,
                           progress=lambda done, item: bar.update(1))
    table = ev.to_markdown(ev.summarise(rows))
    click.echo(table, nl=False)
    if csv_path:
        ev.to_csv(rows, csv_path)
        click.echo(f"wrote {csv_path}")
    if markdown_path:
        markdown_path.write_text(ev.markdown_report(table, str(source or DEFAULT_EVAL_DIR.name), len(items), runtime))
        click.echo(f"wrote {markdown_path}")
    if plot_dir:
        click.echo(f"wrote {len(items)} spectrograms to {plot_dir}")


@main.command("import-dfn3")
@click.argument("archive", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="model.pt for a checkpoint, or a directory for a streaming bundle.")
@click.option("--target", type=click.Choice(["onnx", "tflite", "coreml"]), default="onnx", show_default=True,
              help="Bundle target when OUTPUT is a directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@fail_on_sdk_errors
def import_dfn3(archive, output_path, target, overwrite):
    """Import the official DeepFilterNet3 weights (ARCHIVE, or the [dfn3] extra's copy)."""
    from dfnet4_sdk.models.dfn3_import import import_dfn3 as import_weights

    source, n_params = import_weights(archive, output_path, target, overwrite)
    click.echo(f"imported {source} -> {output_path} ({n_params:,} parameters)")


@main.command()
@click.option("--model", default=None, help="Model name, checkpoint .pt or DFN3 archive (default: the default model).")
@click.option("--target", type=click.Choice(["onnx", "tflite", "coreml"]), required=True, help="Export target.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("-o", "--output", "output_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Bundle directory to write.")
@click.option("--fixture-audio", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Real clip for the golden fixtures (default: a synthetic voiced signal in noise).")
@click.option("--fixture-seconds", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Real noisy speech for int8 calibration (a ../shared/data-style folder or plain audio files); "
                   "default: the fixture clip.")
@click.option("--calibration-seconds", type=click.FloatRange(min=0, min_open=True), default=24.0, show_default=True)
@click.option("--archive", is_flag=True, help="Also write OUTPUT.dfbundle, a single-file copy.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--streams", is_flag=True,
              help="Also export frame_streams, the frame graph with a stream axis, so StreamPool runs many streams "
                   "per call (onnx fp32).")
@fail_on_sdk_errors
def export(model, target, precision, output_dir, fixture_audio, fixture_seconds, calibration, calibration_seconds,
           archive, overwrite, streams):
    """Export MODEL to a streaming bundle for TARGET, validated against PyTorch."""
    from dfnet4_sdk.files import check_output_dir

    check_output_dir(output_dir, overwrite, what="bundle directory")  # before the (slow) imports

    from dfnet4_sdk.audio_io import read_mono
    from dfnet4_sdk.bundle import pack
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model

    torch_model = load_model(model)
    audio = source = None
    if fixture_audio is not None:
        audio, _ = read_mono(fixture_audio, torch_model.dsp.sample_rate_hz, fixture_seconds)
        source = fixture_audio.name
    clips = None
    if calibration is not None:
        from dfnet4_sdk.exporters.quantize import calibration_audio

        clips = calibration_audio(calibration, torch_model.dsp.sample_rate_hz, seconds=calibration_seconds)
    bundle = export_bundle(torch_model, converter_for(target), output_dir, precision=precision,
                           fixture_audio=audio, fixture_source=source, overwrite=overwrite, calibration=clips,
                           streams=streams)
    from dfnet4_sdk.exporters.validate import worst_graph_error

    v = bundle.manifest.validation
    worst = worst_graph_error(v)
    click.echo(f"exported {bundle.manifest.model_family} -> {bundle.root} ({target} {precision}); "
               f"validated: worst graph error {worst:.1e}, audio SNR vs PyTorch {v['audio_snr_db']:.1f} dB")
    if archive:
        click.echo(f"archive: {pack(bundle.root)}")


@main.command()
@click.argument("bundle_or_model", required=False)
@click.option("--audio", "audio_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Real noisy speech to stream (default: the DNS5 clip of ../shared/data when present).")
@click.option("--model", "reference_model", default=None,
              help="PyTorch reference for a BUNDLE (name, checkpoint or archive; default: the weights its "
                   "manifest records as source_model, else its model family).")
@click.option("--full", is_flag=True, help="Stream 10 s per cell (default 3 s).")
@click.option("--target", "targets", multiple=True, help="Only these targets (repeatable).")
@click.option("--precision", "precisions", multiple=True, help="Only these precisions (repeatable).")
@click.option("--write-docs", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the results table (Markdown) here, e.g. docs/CONFORMANCE.md.")
@click.option("--client", "client", default=None, metavar="CMD",
              help="Instead: check an external client, a command template with {input} and {output} (mono float32 "
                   "WAV at the bundle's rate) and optionally {bundle}, against Runtime(BUNDLE) over the probe set "
                   "(docs/CONFORMANCE.md, Checking a port).")
@click.option("--probes", default=None, help="With --client: probe names or patterns, comma-separated (default "
                                             "all); `list` describes them.")
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="With --client: keep each probe's input, client output and Python output in this folder.")
@fail_on_sdk_errors
def conformance(bundle_or_model, audio_path, reference_model, full, targets, precisions, write_docs, client, probes,
                keep):
    """Check a bundle, or every target x precision of a model (default: all models), against PyTorch;
    with --client, check an external client against Runtime(BUNDLE)."""
    if client is not None or probes is not None or keep is not None:
        from dfnet4_sdk.client_check import conformance_command

        raise SystemExit(conformance_command(bundle_or_model, client, probes, keep, audio_path, echo=click.echo,
                                             not_applicable={"--model": reference_model, "--full": full,
                                                             "--target": targets, "--precision": precisions,
                                                             "--write-docs": write_docs}))
    from dfnet4_sdk import conformance as conf
    from dfnet4_sdk.audio_io import read_audio
    from dfnet4_sdk.files import check_new_file

    if write_docs is not None:
        check_new_file(write_docs, ".md", "--write-docs")  # before minutes of exports, not after
    cells, bundle = conf.cells_for(bundle_or_model, reference_model, targets, precisions)
    audio_path = audio_path or _default_clip()
    audio, sr = read_audio(audio_path)
    seconds = 10.0 if full else 3.0
    results = []
    for r in conf.run_cells(cells, audio, sr, seconds, bundle=bundle):
        results.append(r)
        click.echo(r.summary_line())
    if write_docs:
        write_docs.write_text(conf.markdown_table(results, audio_path.name, seconds))
        click.echo(f"wrote {write_docs}")
    if any(r.status == "fail" for r in results):
        raise SystemExit(1)


@main.command()
@click.option("--model", "models", multiple=True,
              help="Models to measure (repeatable). Default, with no --model/--backend/--precision: every shipped "
                   "bundle (what Runtime(name) runs; the default model first), DFN3 int8 ONNX, DfNet4Lite LiteRT and "
                   "eager PyTorch DFN3; with --soak: the default model.")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["torch", "onnx", "tflite", "coreml"]),
              help="Backends (repeatable; default with --model: torch and onnx; with --soak: the model's best).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Precisions for exported backends (default: fp32).")
@click.option("--audio", "audio_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Clip to process (default: the DNS5 clip of ../shared/data).")
@click.option("--seconds", type=float, default=10.0, show_default=True,
              help="How much of the clip to process (0.1 s up to the clip's length).")
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Markdown report to write (default: BENCHMARKS.md; with --soak: none unless given).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Measure every cell this many times in turn and report the median (a shared machine drifts).")
@click.option("--soak", "soak_hours", type=float, default=None, metavar="HOURS",
              help="Instead: stream the clip, looped, one hop at a time through one model for HOURS of wall-clock "
                   "time (fractions welcome: 0.01 is 36 s); report per-hop latency percentiles and RSS per time "
                   "window, and whether RSS grew after warm-up (exit 1 if it did).")
@click.option("--streams", "streams_text", default=None, metavar="B1,B2,...",
              help="Instead: StreamPool with these stream counts (e.g. 1,8,32,128), one thread: cost per stream-hop, "
                   "real-time streams per core, the graph's share; writes its section of the report.")
@click.option("--corpus", "corpus_files", type=int, default=None, metavar="FILES",
              help="Instead: enhance a corpus of FILES clips of --seconds each (cut from --audio) as `dfsdk run "
                   "--output-dir` does, with 1 and 2 local jobs and 1 and 2 Ray actors (with the [ray] extra): seconds "
                   "of audio per second; writes its section of the report. --model: the model (default: the default).")
@fail_on_sdk_errors
def bench(models, backends, precisions, audio_path, seconds, output_path, rounds, soak_hours, streams_text, corpus_files):
    """Per-frame latency, offline RTF, memory and size, side by side with the official runtime."""
    from dfnet4_sdk import bench as b

    try:
        b.check_models(models)
    except DfSdkError as e:
        raise click.BadParameter(str(e), param_hint="--model") from e
    if corpus_files is not None:
        from dfnet4_sdk import bench_corpus as bc
        from dfnet4_sdk.bench_streams import load_note
        from dfnet4_sdk.shipped import DEFAULT_MODEL

        try:
            bc.check_files(corpus_files)
        except DfSdkError as e:
            raise click.BadParameter(str(e), param_hint="--corpus") from e
        if len(models) > 1 or backends or precisions:
            raise click.UsageError("--corpus enhances with one model: pass at most one --model (no --backend/--precision)")
        if not 0.1 <= seconds <= 3600:
            raise click.BadParameter(f"the corpus's files are 0.1 s to an hour long, got {seconds:g}", param_hint="--seconds")
        audio_path = audio_path or _default_clip()
        model = next(iter(models), None)
        results = bc.run_corpus(audio_path, corpus_files, seconds, model, echo=click.echo)
        output_path = output_path or Path("BENCHMARKS.md")
        b.write_section(output_path, bc.to_markdown(results, audio_path.name, seconds, model or DEFAULT_MODEL, load_note()))
        click.echo(f"wrote {output_path}")
        if not all(r.same_outputs and not r.failed for r in results):
            raise SystemExit(1)
        return
    if streams_text is not None:
        from dfnet4_sdk import bench_streams as bs

        try:
            counts = bs.parse_streams(streams_text)
        except DfSdkError as e:
            raise click.BadParameter(str(e), param_hint="--streams") from e
        audio_path = audio_path or _default_clip()
        cells = bs.cells_for(models, backends)
        official_us = bs.official_hop_us(str(audio_path), min(seconds, 10.0), echo=click.echo)
        results = bs.run_streams(cells, counts, str(audio_path), min(seconds, 10.0), echo=click.echo)
        output_path = output_path or Path("BENCHMARKS.md")
        b.write_section(output_path, bs.to_markdown(results, audio_path.name, min(seconds, 10.0), bs.load_note(), official_us))
        click.echo(f"wrote {output_path}")
        return
    if soak_hours is not None:
        from dfnet4_sdk.soak import check_hours

        if len(models) > 1 or len(backends) > 1:
            raise click.UsageError("--soak streams one model on one backend: pass at most one --model and one --backend")
        try:
            check_hours(soak_hours)
        except DfSdkError as e:
            raise click.BadParameter(str(e), param_hint="--soak") from e
        report = b.soak(soak_hours, audio_path or _default_clip(), model=next(iter(models), None),
                        backend=next(iter(backends), None), echo=click.echo)
        click.echo(report.verdict())
        if output_path is not None:
            output_path.write_text(report.to_markdown())
            click.echo(f"wrote {output_path}")
        if report.rss_grew:
            raise SystemExit(1)
        return
    audio_path = audio_path or _default_clip()
    try:
        b.check_seconds(audio_path, seconds)
    except DfSdkError as e:
        raise click.BadParameter(str(e), param_hint="--seconds") from e
    output_path = output_path or Path("BENCHMARKS.md")
    results = b.run(b.cells_for(models, backends, precisions), str(audio_path), seconds, echo=click.echo, rounds=rounds)
    b.write_report(output_path, b.to_markdown(results, audio_path.name, seconds))
    click.echo(f"wrote {output_path}")


if __name__ == "__main__":  # pragma: no cover
    main()
