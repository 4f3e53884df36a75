"""Exports made on demand (``Runtime(model, backend="onnx")``) are cached per model weights,
target, precision and SDK version, so the first run pays the export and later runs do not."""

from __future__ import annotations

import hashlib
import io
import logging

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


def cached_export(model: EnhancementModel, target: str, precision: str = "fp32") -> Bundle:
    from dfnet4_sdk.exporters.base import converter_for, export_bundle

    root = cache_dir() / "bundles" / f"{model.family}-{model_digest(model)}-{target}-{precision}-sdk{__version__}"
    if root.is_dir():
        try:
            return Bundle.load(root)
        except BundleError as e:
            log.warning("cached bundle %s is unusable (%s); exporting again", root, e)
    log.info("exporting %s for %s %s (first use, cached in %s)", model.family, target, precision, root)
    return export_bundle(model, converter_for(target), root, precision=precision, overwrite=True)
