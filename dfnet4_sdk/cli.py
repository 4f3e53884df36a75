"""``dfsdk`` command line. Each command parses options and calls the library; no logic here."""

from __future__ import annotations

import functools
import logging
import signal
import sys
import threading
from pathlib import Path

import click

from dfnet4_sdk import __version__
from dfnet4_sdk.errors import ConfigError, DfSdkError, ModelNotAvailableError, PathError
from dfnet4_sdk.shared_data import shared_data_dir

log = logging.getLogger(__name__)

# Exit codes: 1 a failure (corrupt input, failed write), 2 a usage error (a bad option value or
# path), 128 + the signal when interrupted (130 Ctrl-C, 143 SIGTERM), as shells do.
EXIT_FAILURE, EXIT_USAGE, EXIT_SIGINT, EXIT_SIGTERM = 1, 2, 130, 143
_USAGE_ERRORS = (ConfigError, ModelNotAvailableError, PathError)


class _UsageFailure(click.ClickException):
    """A one-line "Error: ..." like any ClickException, with the usage exit code."""

    exit_code = EXIT_USAGE


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup runs as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _fail_on_sdk_errors(fn):
    """Every way a command can fail, as a one-line message and a conventional exit code, never a
    traceback: the SDK's typed errors (usage errors 2, the rest 1), OS errors 1, Ctrl-C 130 and
    SIGTERM 143 (both after the command's own cleanup: no partial output is left). Anything else
    is a bug: 1, with the traceback at -vv."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            return fn(*args, **kwargs)
        except _USAGE_ERRORS as e:
            raise _UsageFailure(str(e)) from e
        except DfSdkError as e:
            raise click.ClickException(str(e)) from e
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            sys.exit(EXIT_SIGINT)
        except _Terminated:
            click.echo("terminated; no output was written", err=True)
            sys.exit(EXIT_SIGTERM)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            raise click.ClickException(f"{e.strerror or e}{where}") from e
        except Exception as e:
            log.debug("unexpected error", exc_info=True)
            raise click.ClickException(
                f"unexpected {type(e).__name__}: {e}. This is a bug; rerun with -vv for the traceback and report it"
            ) from e
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper


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


@main.command()
@click.argument("inputs", nargs=-1)
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file of a single input (default: INPUT_enhanced.<ext> beside the input).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Batch: write every output here, mirroring each input folder's tree (a plain file by its name).")
@click.option("--list", "list_files", multiple=True, type=click.Path(path_type=Path),
              help="Batch: a file naming one input (file, folder or glob) per line (repeatable; also @FILE).")
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Batch: worker processes, each with its own model (about one per core; default 1; "
                   "with --ray: actors, default one per CPU of the cluster).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Batch on a Ray cluster (Ray Data; the [ray] extra): --ray=auto or --ray=ray://HOST:10001, "
                   "--ray alone for a local Ray. Inputs and outputs must be on a filesystem every node sees.")
@click.option("-m", "--model", default=None, help="Model: a shipped model (default dfn3; `dfsdk models` lists them), a DfNet4 preset, a checkpoint .pt, a DFN3 archive or a bundle.")
@click.option("--backend", type=click.Choice(["torch", "onnx", "tflite", "coreml"]), default=None,
              help="Backend (default: a shipped model's packaged bundle, a bundle's own backend, else onnx when "
                   "installed, else torch). A model that is not a bundle is exported once for the backend and cached.")
@click.option("-a", "--atten-lim-db", type=float, default=100.0, show_default=True, help="Maximum attenuation in dB (100 = none).")
@click.option("--post-filter", "--pf", "post_filter", is_flag=True, help="Enable libDF's post-filter (beta 0.02).")
@click.option("--post-filter-beta", "--pf-beta", "post_filter_beta", type=float, default=None,
              help="Post-filter strength (implies --post-filter).")
@click.option("--min-db-thresh", type=float, default=-15.0, show_default=True,
              help="libDF gating: below this local SNR (dB) a hop is taken as noise only (zero mask, no decoder runs).")
@click.option("--max-db-erb-thresh", type=float, default=35.0, show_default=True,
              help="libDF gating: above this local SNR (dB) the ERB decoder is skipped (clean speech).")
@click.option("--max-db-df-thresh", type=float, default=35.0, show_default=True,
              help="libDF gating: above this local SNR (dB) the deep-filter decoder is skipped.")
@click.option("-D", "--compensate-delay", is_flag=True, hidden=False,
              help="Accepted for deep-filter users; always on here: output sample n belongs to input sample n.")
@click.option("--threads", type=int, default=1, show_default=True, help="Backend (intra-op) threads.")
@click.option("--offline-threads", type=int, default=None,
              help="Threads the whole-file path spreads the model's block graphs over (same output, faster); "
                   "default: 2 when the machine has two cores.")
@click.option("--overwrite", is_flag=True,
              help="Replace OUTPUT if it exists (batch: also outputs that no dfsdk run wrote).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--subtype", default=None,
              help="Sample format of OUTPUT, a soundfile subtype such as PCM_16, PCM_24 or FLOAT "
                   "(default: the input's when OUTPUT's format takes it).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write before/after spectrograms of the input and output to this PNG.")
@_fail_on_sdk_errors
def run(inputs, output_path, output_dir, list_files, jobs, ray_address, model, backend, atten_lim_db, post_filter, post_filter_beta,
        min_db_thresh, max_db_erb_thresh, max_db_df_thresh, compensate_delay, threads, offline_threads, overwrite, quiet,
        subtype, plot_path):
    """Enhance INPUTS (any sample rate, mono or multi-channel, wav/flac/...), streaming each from
    disk to disk in blocks. The output keeps the input's sample format unless --subtype says otherwise.

    One file: written to -o (default INPUT_enhanced.<ext>). Many: files, folders (searched
    recursively), quoted globs and list files (--list FILE or @FILE) into --output-dir, mirroring
    the tree; outputs already made with the same model and options are skipped (a killed run
    resumes), a bad file is reported and skipped, exit 1 if any file failed."""
    from tqdm import tqdm

    from dfnet4_sdk.batch_inputs import is_glob
    from dfnet4_sdk.files import check_new_file, enhance_file
    from dfnet4_sdk.runtime import Runtime

    beta = post_filter_beta if post_filter_beta is not None else (0.02 if post_filter else 0.0)
    if (len(inputs) != 1 or output_dir is not None or list_files or ray_address is not None
            or inputs[0].startswith("@") or is_glob(inputs[0]) or Path(inputs[0]).is_dir()):
        _run_batch(inputs, output_path, output_dir, list_files, jobs, ray_address, plot_path, quiet, overwrite, subtype,
                   model=model, backend=backend, atten_lim_db=atten_lim_db, post_filter_beta=beta,
                   min_db_thresh=min_db_thresh, max_db_erb_thresh=max_db_erb_thresh, max_db_df_thresh=max_db_df_thresh,
                   num_threads=threads, offline_threads=offline_threads)
        return
    input_path = Path(inputs[0])
    if output_path is None:
        output_path = input_path.with_name(f"{input_path.stem}_enhanced{input_path.suffix or '.wav'}")
    if plot_path is not None:
        from dfnet4_sdk.plotting import check_plotting_available

        check_new_file(plot_path, ".png", "--plot")
        check_plotting_available()  # fail before enhancing when matplotlib is missing

    def make_runtime() -> Runtime:
        return Runtime(model, backend=backend, atten_lim_db=atten_lim_db, post_filter_beta=beta, min_db_thresh=min_db_thresh,
                       max_db_erb_thresh=max_db_erb_thresh, max_db_df_thresh=max_db_df_thresh, num_threads=threads,
                       offline_threads=offline_threads)

    def bar(total: int):
        return tqdm(total=total, unit="sample", unit_scale=True, desc="enhancing", disable=quiet, file=sys.stderr)

    summary = enhance_file(input_path, output_path, make_runtime, overwrite=overwrite, progress_factory=bar,
                           subtype=subtype)
    rt, clipped = summary["runtime"], summary["clipped_samples"]
    name = getattr(rt.manifest, "model_name", None) or rt.model_family
    if clipped:
        click.echo(f"warning: {clipped} samples beyond full scale were clipped in the {summary['subtype']} output; "
                   "--subtype FLOAT (in .wav) keeps them", err=True)
    click.echo(f"wrote {summary['output']} ({summary['seconds']:.2f} s, {summary['channels']} ch, "
               f"{summary['sample_rate']} Hz, {summary['subtype']}, model {name}, backend {rt.backend.name}"
               + (f", {clipped} samples clipped" if clipped else "") + ")")
    if plot_path is not None:
        from dfnet4_sdk.plotting import plot_spectrogram_files

        plot_spectrogram_files(plot_path, {"input": input_path, "enhanced": output_path}, title=input_path.name)
        click.echo(f"wrote {plot_path}")


def _run_batch(inputs, output_path, output_dir, list_files, jobs, ray_address, plot_path, quiet, overwrite, subtype,
               **runtime):
    """`dfsdk run` with many inputs: dfnet4_sdk.batch (or ray_batch) does the work; a bar over
    the audio, a summary."""
    from tqdm import tqdm

    if ray_address is not None:
        if ray_address and Path(ray_address).exists():
            raise click.UsageError(f"--ray took {ray_address!r} as the cluster address; put --ray after the inputs "
                                   "or write --ray=ADDRESS")
        from dfnet4_sdk.ray_batch import enhance_corpus, quiet_ray_logs

        quiet_ray_logs(logging.getLogger().getEffectiveLevel())

        def enhance_batch(*args, jobs, **kwargs):
            return enhance_corpus(*args, address=ray_address, workers=jobs, **kwargs)
    else:
        from dfnet4_sdk.batch import enhance_batch

        jobs = jobs or 1

    if not inputs and not list_files:
        raise click.UsageError("name the input: a file, or many files, folders, quoted globs or --list FILE")
    if output_path is not None:
        raise click.UsageError("-o names the output of a single input file; with many inputs (or a folder, glob or "
                               "list) use --output-dir DIR")
    if output_dir is None:
        raise click.UsageError("with many inputs (or a folder, glob or list), give --output-dir DIR for the outputs")
    if plot_path is not None:
        raise click.UsageError("--plot draws one file; run it on a single input")
    bars = []  # one bar over the audio to enhance, made once the plan is known

    def on_plan(plan):
        bars.append(tqdm(total=plan.total_seconds, unit="s", desc="enhancing", disable=quiet or not plan.todo,
                         file=sys.stderr,
                         bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]"))

    try:
        report = enhance_batch(inputs, output_dir, jobs=jobs, subtype=subtype, overwrite=overwrite,
                               list_files=list_files, progress=lambda s: bars[0].update(s), on_plan=on_plan,
                               **runtime)
    except (KeyboardInterrupt, _Terminated) as e:
        for bar in bars:
            bar.close()
        click.echo(f"{'interrupted' if isinstance(e, KeyboardInterrupt) else 'terminated'}; finished outputs are kept, "
                   "the files in progress left nothing; run the same command again to resume", err=True)
        sys.exit(EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else EXIT_SIGTERM)
    finally:
        for bar in bars:
            bar.close()
    for line in report.summary_lines():
        click.echo(line, err=line.startswith(("failed:", "warning:")))
    sys.exit(report.exit_code)


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

    from dfnet4_sdk.shipped import model_listing

    rows = model_listing()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from dfnet4_sdk.shipped import describe_quality

    for r in rows:
        flags = ", ".join(f for f, on in (("default", r["default"]), ("trained here", r["trained_here"])) if on)
        runs = ", ".join(f"{b['backend']} {b['precision']}" + ("" if b["runs_here"] else " (runtime not installed)")
                         for b in r["bundles"])
        click.echo(f"{r['name']}  [{r['family']}{'; ' + flags if flags else ''}]")
        click.echo(f"    {r['description']}")
        if r["parameters"] is not None:
            click.echo(f"    {r['parameters']:,} parameters, {r['macs_per_second'] / 1e6:.1f} MMAC/s, "
                       f"latency {r['latency_ms']:g} ms; bundles: {runs}")
        for line in describe_quality(r["quality"]):
            click.echo(f"    {line}")


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
@_fail_on_sdk_errors
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
        import datetime

        who = "" if runtime is None else f" `enhanced` = {runtime.model_family} on the {runtime.backend.name} backend."
        header = (f"# Evaluation\n\nWritten by `dfsdk eval` on {datetime.date.today().isoformat()} over "
                  f"`{source or DEFAULT_EVAL_DIR.name}` ({len(items)} items).{who} Intrusive metrics after delay "
                  "alignment; DNSMOS P.835 (SIG/BAK/OVRL) and P.808 from the models `speechmos` ships.\n\n")
        markdown_path.write_text(header + table)
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
@_fail_on_sdk_errors
def import_dfn3(archive, output_path, target, overwrite):
    """Import the official DeepFilterNet3 weights (ARCHIVE, or the [dfn3] extra's copy)."""
    from dfnet4_sdk.files import check_new_file, check_output_dir
    from dfnet4_sdk.models import save_checkpoint
    from dfnet4_sdk.models.dfn3_import import find_dfn3_archive, load_dfn3

    if output_path.suffix == ".pt":
        if output_path.exists() and not overwrite:
            raise PathError(f"output {output_path} exists; pass --overwrite to replace it")
        check_new_file(output_path, ".pt", "output")
    else:
        check_output_dir(output_path, overwrite)
    source = archive or find_dfn3_archive()
    model = load_dfn3(source)
    n_params = sum(p.numel() for p in model.parameters())
    if output_path.suffix == ".pt":
        save_checkpoint(model, output_path, extra={"source": str(source)})
    else:
        from dfnet4_sdk.exporters.base import converter_for, export_bundle

        export_bundle(model, converter_for(target), output_path, overwrite=overwrite)
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
@_fail_on_sdk_errors
def export(model, target, precision, output_dir, fixture_audio, fixture_seconds, calibration, calibration_seconds,
           archive, overwrite, streams):
    """Export MODEL to a streaming bundle for TARGET, validated against PyTorch."""
    from dfnet4_sdk.files import check_output_dir

    check_output_dir(output_dir, overwrite, what="bundle directory")  # before the (slow) imports

    from dfnet4_sdk.audio_io import read_audio, resample
    from dfnet4_sdk.bundle import pack
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model

    torch_model = load_model(model)
    audio = source = None
    if fixture_audio is not None:
        audio, sr = read_audio(fixture_audio)
        audio = resample(audio.mean(axis=1), sr, torch_model.dsp.sample_rate_hz)
        audio = audio[: int(fixture_seconds * torch_model.dsp.sample_rate_hz)]
        source = fixture_audio.name
    clips = None
    if calibration is not None:
        from dfnet4_sdk.exporters.quantize import calibration_audio

        clips = calibration_audio(calibration, torch_model.dsp.sample_rate_hz, seconds=calibration_seconds)
    bundle = export_bundle(torch_model, converter_for(target), output_dir, precision=precision,
                           fixture_audio=audio, fixture_source=source, overwrite=overwrite, calibration=clips,
                           streams=streams)
    v = bundle.manifest.validation
    worst = max(err for errs in v["graph_rel_error"].values() for err in errs.values())
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
@_fail_on_sdk_errors
def conformance(bundle_or_model, audio_path, reference_model, full, targets, write_docs, client, probes, keep):
    """Check a bundle, or every target x precision of a model (default: all models), against PyTorch;
    with --client, check an external client against Runtime(BUNDLE)."""
    if client is not None or probes is not None or keep is not None:
        from dfnet4_sdk.client_check import conformance_command

        raise SystemExit(conformance_command(bundle_or_model, client, probes, keep, audio_path, echo=click.echo,
                                             not_applicable={"--model": reference_model, "--full": full,
                                                             "--target": targets, "--write-docs": write_docs}))
    from dfnet4_sdk import conformance as conf
    from dfnet4_sdk.audio_io import read_audio
    from dfnet4_sdk.files import check_new_file

    if write_docs is not None:
        check_new_file(write_docs, ".md", "--write-docs")  # before minutes of exports, not after
    cells, bundle = conf.cells_for(bundle_or_model, reference_model, targets)
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
@fail_on_sdk_errors
def bench(models, backends, precisions, audio_path, seconds, output_path, rounds, soak_hours, streams_text):
    """Per-frame latency, offline RTF, memory and size, side by side with the official runtime."""
    from dfnet4_sdk import bench as b

    try:
        b.check_models(models)
    except DfSdkError as e:
        raise click.BadParameter(str(e), param_hint="--model") from e
    if streams_text is not None:
        from dfnet4_sdk import bench_streams as bs

        try:
            counts = bs.parse_streams(streams_text)
        except DfSdkError as e:
            raise click.BadParameter(str(e), param_hint="--streams") from e
        audio_path = audio_path or _default_clip()
        cells = bs.cells_for(models, backends)
        results = bs.run_streams(cells, counts, str(audio_path), min(seconds, 10.0), echo=click.echo)
        output_path = output_path or Path("BENCHMARKS.md")
        bs.write_section(output_path, bs.to_markdown(results, audio_path.name, min(seconds, 10.0), bs.load_note()))
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
