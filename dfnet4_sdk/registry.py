"""Lazy registries: a name -> (module, class, pip extra). Importing a backend or exporter pulls
in its toolchain only when it is used, and a missing toolchain becomes a typed error that
names the extra to install."""

from __future__ import annotations

import importlib
from typing import Mapping

from dfnet4_sdk.errors import DfSdkError


def load_registered(
    registry: Mapping[str, tuple[str, str, str]], name: str, what: str, error: type[DfSdkError]
) -> type:
    """The class registered as ``name``; ``error`` says what is unknown or missing and how to fix it."""
    if name not in registry:
        raise error(f"unknown {what} {name!r}; choose one of {list(registry)}")
    module_name, class_name, extra = registry[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise error(
            f"{what} {name!r} needs a package that is not installed ({e.name or e}); "
            f'install it with: pip install "dfnet4-sdk[{extra}]"'
        ) from e
    return getattr(module, class_name)
