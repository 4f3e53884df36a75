"""``dfsdk`` command line. Each command parses options and calls the library; no logic here."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dfnet4_sdk import __version__
from dfnet4_sdk.errors import DfSdkError


def _fail_on_sdk_errors(fn):
    """Turn the SDK's typed errors into a one-line message and exit code 2, without a traceback."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DfSdkError as e:
            raise click.ClickException(str(e)) from e

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@click.group()
@click.version_option(__version__, prog_name="dfsdk")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """DeepFilterNet edge SDK: enhance, import, export and verify speech-enhancement models."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("input_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: INPUT_enhanced.<ext> beside the input).")
@click.option("--model", default=None, help="Model name (dfn3, a DfNet4 preset), checkpoint .pt or DFN3 archive.")
@click.option("--backend", type=click.Choice(["torch"]), default=None, help="Backend (default: best available).")
@click.option("--atten-lim-db", type=float, default=100.0, show_default=True, help="Maximum attenuation in dB (100 = none).")
@click.option("--post-filter", is_flag=True, help="Enable libDF's post-filter (beta 0.02).")
@click.option("--post-filter-beta", type=float, default=None, help="Post-filter strength (implies --post-filter).")
@click.option("--threads", type=int, default=1, show_default=True, help="Backend threads.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@_fail_on_sdk_errors
def run(input_path, output_path, model, backend, atten_lim_db, post_filter, post_filter_beta, threads, overwrite, quiet):
    """Enhance INPUT_PATH (any sample rate, mono or multi-channel, wav/flac/...)."""
    from tqdm import tqdm

    from dfnet4_sdk.runtime import Runtime, enhance_file

    if output_path is None:
        output_path = input_path.with_name(f"{input_path.stem}_enhanced{input_path.suffix or '.wav'}")
    beta = post_filter_beta if post_filter_beta is not None else (0.02 if post_filter else 0.0)

    def make_runtime() -> Runtime:
        return Runtime(model, backend=backend, atten_lim_db=atten_lim_db, post_filter_beta=beta, num_threads=threads)

    def bar(total: int):
        return tqdm(total=total, unit="sample", unit_scale=True, desc="enhancing", disable=quiet, file=sys.stderr)

    summary = enhance_file(input_path, output_path, make_runtime, overwrite=overwrite, progress_factory=bar)
    rt = summary["runtime"]
    click.echo(f"wrote {summary['output']} ({summary['seconds']:.2f} s, {summary['channels']} ch, "
               f"{summary['sample_rate']} Hz, model {rt.model_family}, backend {rt.backend.name})")


@main.command("import-dfn3")
@click.argument("archive", required=False, type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--output", "output_path", required=True, type=click.Path(path_type=Path),
              help="Checkpoint to write (model.pt).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@_fail_on_sdk_errors
def import_dfn3(archive, output_path, overwrite):
    """Import the official DeepFilterNet3 weights (ARCHIVE, or the [dfn3] extra's copy)."""
    from dfnet4_sdk.errors import AudioFileError
    from dfnet4_sdk.models import save_checkpoint
    from dfnet4_sdk.models.dfn3_import import find_dfn3_archive, load_dfn3

    if output_path.exists() and not overwrite:
        raise AudioFileError(f"output {output_path} exists; pass --overwrite to replace it")
    if output_path.suffix != ".pt":
        raise click.BadParameter("only .pt checkpoints can be written yet (bundles come with `dfsdk export`)",
                                 param_hint="--output")
    source = archive or find_dfn3_archive()
    model = load_dfn3(source)
    save_checkpoint(model, output_path, extra={"source": str(source)})
    n_params = sum(p.numel() for p in model.parameters())
    click.echo(f"imported {source} -> {output_path} ({n_params:,} parameters)")


if __name__ == "__main__":  # pragma: no cover
    main()
