"""``dfsdk run``: enhance one file to -o, or a corpus (files, folders, globs, list files) into
--output-dir, locally or on Ray. Options are parsed and results printed here; the work is
dfnet4_sdk.files (one file), dfnet4_sdk.batch and dfnet4_sdk.ray_batch (a corpus)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dfnet4_sdk.cli_errors import EXIT_SIGINT, EXIT_SIGTERM, Terminated, fail_on_sdk_errors
from dfnet4_sdk.shipped import DEFAULT_MODEL


@click.command()
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
@click.option("-m", "--model", default=None, help=f"Model: a shipped model (default {DEFAULT_MODEL}; `dfsdk models` lists them), a DfNet4 preset, a checkpoint .pt, a DFN3 archive or a bundle.")
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
@fail_on_sdk_errors
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

    from dfnet4_sdk.batch_inputs import is_batch
    from dfnet4_sdk.files import check_new_file, default_output_path, enhance_file
    from dfnet4_sdk.runtime import Runtime

    beta = post_filter_beta if post_filter_beta is not None else (0.02 if post_filter else 0.0)
    if is_batch(inputs, output_dir, list_files, ray_address):
        _run_batch(inputs, output_path, output_dir, list_files, jobs, ray_address, plot_path, quiet, overwrite, subtype,
                   model=model, backend=backend, atten_lim_db=atten_lim_db, post_filter_beta=beta,
                   min_db_thresh=min_db_thresh, max_db_erb_thresh=max_db_erb_thresh, max_db_df_thresh=max_db_df_thresh,
                   num_threads=threads, offline_threads=offline_threads)
        return
    input_path = Path(inputs[0])
    output_path = output_path or default_output_path(input_path)
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
    except (KeyboardInterrupt, Terminated) as e:
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
