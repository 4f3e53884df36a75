"""Model family registry, checkpoints, and resolution of ``--model`` arguments.

``load_model`` accepts a model name (``dfn3``, the official weights; a shipped model such as
``dfnet4-lite-v1``; a DfNet4 preset name), a checkpoint written by ``save_checkpoint`` (``.pt``), or an
official DFN3 archive / directory.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from pathlib import Path
from typing import Any

import torch

from dfnet4_sdk.errors import ModelImportError, ModelNotAvailableError
from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.shipped import DEFAULT_MODEL, SHIPPED_MODELS, shipped_model
from dfnet4_sdk.user_cache import cache_dir  # noqa: F401  (its home; re-exported for callers)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "dfnet4-sdk-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1
# Presets are architectures; trained weights come as shipped models or checkpoints. A preset
# named on its own gets these fixed untrained weights, so conformance runs are reproducible.
UNTRAINED_PRESET_SEED = 0

# family -> (module, class)
_FAMILIES = {
    "dfn3": ("dfnet4_sdk.models.dfnet3", "DfNet3"),
    "dfnet4": ("dfnet4_sdk.models.dfnet4", "DfNet4"),
    "dfnet4-lite": ("dfnet4_sdk.models.dfnet4", "DfNet4"),
}


def model_class(family: str) -> type[EnhancementModel]:
    if family not in _FAMILIES:
        raise ModelNotAvailableError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    module, cls = _FAMILIES[family]
    return getattr(importlib.import_module(module), cls)


def preset_names() -> tuple[str, ...]:
    from dfnet4_sdk.models import dfnet4

    return tuple(dfnet4.PRESETS)


def save_checkpoint(model: EnhancementModel, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write weights plus the config that rebuilds the model (loading needs no other file)."""
    from dfnet4_sdk import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "family": model.family,
        "config": model.config_dict(),
        "state_dict": model.state_dict(),
        "sdk_version": __version__,
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> EnhancementModel:
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise ModelImportError(f"{path} is not a readable dfnet4-sdk checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ModelImportError(
            f"{path} is not a dfnet4-sdk checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
            "write checkpoints with dfnet4_sdk.models.save_checkpoint or `dfsdk import-dfn3 -o model.pt`"
        )
    model = model_class(payload["family"]).from_config(payload["config"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()




def load_dfn3_cached() -> EnhancementModel:
    """The official DFN3 weights from the ``[dfn3]`` extra, imported once and cached as a checkpoint."""
    from dfnet4_sdk.models.dfn3_import import find_dfn3_archive, load_dfn3

    archive = find_dfn3_archive()
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()[:16]
    cached = cache_dir() / f"dfn3-{digest}.pt"
    if cached.exists():
        try:
            return load_checkpoint(cached)
        except ModelImportError:
            log.warning("ignoring unreadable cached model %s; importing again", cached)
    model = load_dfn3(archive)
    try:
        save_checkpoint(model, cached, extra={"source": str(archive), "archive_sha256_prefix": digest})
    except OSError as e:  # a read-only home must not stop enhancement
        log.warning("could not cache imported DFN3 at %s: %s", cached, e)
    return model


def load_model(spec: str | Path | EnhancementModel | None = None) -> EnhancementModel:
    """Resolve a model name, checkpoint or DFN3 archive to an eval-mode model.

    The model's ``source_model`` attribute then says which weights these are (recorded in the
    manifest of a bundle exported from it): ``{"name", "kind"}`` and, for files, ``"sha256"``."""
    if isinstance(spec, EnhancementModel):
        return spec.eval()
    spec = DEFAULT_MODEL if spec is None else spec
    text = str(spec)
    path = Path(text)
    if path.exists():
        if path.is_dir() and not any(path.rglob("config.ini")):
            from dfnet4_sdk.errors import BundleError

            raise BundleError(f"no manifest.json in {path}; expected a bundle directory written by `dfsdk export` "
                              "(or an official DeepFilterNet3 export directory, with config.ini)")
        if path.is_dir() or text.endswith((".tar.gz", ".tgz", ".zip")):
            from dfnet4_sdk.models.dfn3_import import load_dfn3

            model = load_dfn3(path)
            kind = "dfn3-archive"
        else:
            model, kind = load_checkpoint(path), "checkpoint"
        digest = {} if path.is_dir() else {"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        return _with_source(model, path.name, kind, **digest)
    if text == "dfn3":
        return _with_source(load_dfn3_cached(), text, "dfn3")
    if (shipped := shipped_model(text)) is not None:
        return _with_source(load_checkpoint(shipped.checkpoint_path), text, "shipped")
    presets = preset_names()
    if text in presets:
        from dfnet4_sdk.models.dfnet4 import DfNet4

        log.warning("model %r is an untrained preset (random weights): output is not enhanced speech; "
                    "the trained models are %s", text, ", ".join(SHIPPED_MODELS))
        with torch.random.fork_rng():  # the same untrained weights every time: reproducible conformance
            torch.manual_seed(UNTRAINED_PRESET_SEED)
            return _with_source(DfNet4.from_preset(text).eval(), text, "preset")
    raise ModelNotAvailableError(
        f"model {text!r} is neither an existing file/directory nor a known name; "
        f"use {', '.join(repr(m) for m in dict.fromkeys(['dfn3', *SHIPPED_MODELS]))}, a preset ({', '.join(presets)}), a checkpoint .pt or a DFN3 .tar.gz"
    )


def _with_source(model: EnhancementModel, name: str, kind: str, **extra: str) -> EnhancementModel:
    model.source_model = {"name": name, "kind": kind, **extra}
    return model
