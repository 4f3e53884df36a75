"""Exports made on demand (``Runtime(model, backend="onnx")``) are cached per model weights,
target, precision, SDK version and the source of the code that builds graphs, so the first run
pays the export and later runs do not, and a changed exporter never serves a stale bundle."""

from __future__ import annotations

import functools
import hashlib
import io
import logging
from pathlib import Path

import torch

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


def cached_export(model: EnhancementModel, target: str, precision: str = "fp32", streams: bool = False) -> Bundle:
    """``streams``: with the batched frame graph (``export_bundle(streams=True)``, for ``StreamPool``)."""
    from dfnet4_sdk.exporters.base import converter_for, export_bundle

    kind = f"{target}-{precision}" + ("-streams" if streams else "")
    root = cache_dir() / "bundles" / f"{model.family}-{model_digest(model)}-{kind}-sdk{__version__}-{graph_code_digest()}"
    if root.is_dir():
        try:
            return Bundle.load(root)
        except BundleError as e:
            log.warning("cached bundle %s is unusable (%s); exporting again", root, e)
    log.info("exporting %s for %s %s (first use, cached in %s)", model.family, target, precision, root)
    return export_bundle(model, converter_for(target), root, precision=precision, overwrite=True, streams=streams)
