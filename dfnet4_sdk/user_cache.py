"""The SDK's per-user cache directory (imported models, exported and extracted bundles).

``DFNET4_SDK_CACHE`` overrides it; otherwise ``$XDG_CACHE_HOME/dfnet4_sdk`` or
``~/.cache/dfnet4_sdk``. This module imports nothing heavy, so the torch-free runtime can use it.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("DFNET4_SDK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dfnet4_sdk"
    return Path(root)
