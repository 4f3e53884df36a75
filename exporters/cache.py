"""Exports made on demand (``Runtime(model, backend="onnx")``) are cached per model weights,
target, precision, SDK version and the source of the code that builds graphs, so the first run
pays the export and later runs do not, and a changed exporter never serves a stale bundle.

Processes share the cache safely: an entry is exported under a lock beside it (the second process
that wants it waits, then loads what the first wrote) and appears whole (``export_bundle`` writes
into a staging folder and renames it into place), so ``dfsdk run --jobs N`` or two test workers
never export the same bundle twice nor read one half-written."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from dfnet4_sdk import __version__
from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.errors import BundleError
from dfnet4_sdk.models import cache_dir
from dfnet4_sdk.models.base import EnhancementModel

log = logging.getLogger(__name__)


def model_digest(model: EnhancementModel) -> str:
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buf)
    h = hashlib.sha256(buf.getvalue())
    h.update(repr(sorted(model.config_dict().items())).encode())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def graph_code_digest() -> str:
    """Hash of the modules whose code decides what an exported bundle contains (models,
    exporters, DSP constants, manifest format)."""
    import dfnet4_sdk
    import dfnet4_sdk.exporters
    import dfnet4_sdk.models

    core = Path(dfnet4_sdk.__file__).parent
    files = sorted(Path(dfnet4_sdk.models.__file__).parent.glob("*.py")) + sorted(
        Path(dfnet4_sdk.exporters.__file__).parent.glob("*.py")) + [core / n for n in ("dsp.py", "params.py", "manifest.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:8]


def fixture_digest(audio: np.ndarray, source: str | None) -> str:
    """Hash of the fixture audio (samples and dtype) and its recorded source: a bundle's golden
    fixtures, its export-time validation and what it leaves out depend on them."""
    audio = np.ascontiguousarray(audio)
    h = hashlib.sha256(str(audio.dtype).encode() + audio.tobytes())
    h.update((source or "").encode())
    return h.hexdigest()[:12]


def cached_export(model: EnhancementModel, target: str, precision: str = "fp32", streams: bool = False,
                  fixture_audio: np.ndarray | None = None, fixture_source: str | None = None,
                  root: str | Path | None = None) -> Bundle:
    """``streams``: with the batched frame graph (``export_bundle(streams=True)``, for ``StreamPool``).
    ``fixture_audio`` / ``fixture_source``: as for ``export_bundle`` (default: its synthetic
    fixture), part of the key. ``root``: the cache folder (default: the user cache's ``bundles``)."""
    from dfnet4_sdk.exporters.base import converter_for, export_bundle

    kind = f"{target}-{precision}" + ("-streams" if streams else "")
    if fixture_audio is not None:
        kind += f"-fx{fixture_digest(fixture_audio, fixture_source)}"
    parent = Path(root) if root is not None else cache_dir() / "bundles"
    entry = parent / f"{model.family}-{model_digest(model)}-{kind}-sdk{__version__}-{graph_code_digest()}"
    bundle = _load(entry)  # no lock to read: an entry is renamed into place whole
    if bundle is not None:
        return bundle
    parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry) + ".lock"):
        bundle = _load(entry)  # exported by another process while this one waited
        if bundle is not None:
            return bundle
        log.info("exporting %s for %s %s (first use, cached in %s)", model.family, target, precision, entry)
        return export_bundle(model, converter_for(target), entry, precision=precision, overwrite=True, streams=streams,
                             fixture_audio=fixture_audio, fixture_source=fixture_source)


def _load(entry: Path) -> Bundle | None:
    if entry.is_dir():
        try:
            return Bundle.load(entry)
        except BundleError as e:
            log.warning("cached bundle %s is unusable (%s); exporting again", entry, e)
    return None
