"""Shared fixtures: an isolated model cache, the DFN3 model, real clips; without the project's
audio (a bare clone), the tests that need it are skipped (see audio_data)."""

from __future__ import annotations

import inspect
import os
import types
from pathlib import Path

import numpy as np
import pytest
from audio_data import DATA_DIR, MISSING_DATA, REQUIRE_ENV_VAR, data_present, load_clip, mix_at_snr
from xdist_order import schedule_order

from dfnet4_sdk.shared_data import shared_data_required


def _inside_data_dir(value) -> bool:
    if isinstance(value, Path):
        path, root = value.resolve(), DATA_DIR.resolve()
        return path == root or root in path.parents
    return isinstance(value, str) and ("import audio_data" in value or "from audio_data import" in value)


def _references_data(func, seen: set) -> bool:
    """Whether ``func`` (or a function of its own module that it calls) uses a module-level path
    inside the data folder, or holds / names a script that imports audio_data (run in a subprocess,
    where a skip would be a failure)."""
    func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or code in seen:
        return False
    seen.add(code)
    names, stack = set(), [code]
    while stack:  # nested functions and comprehensions have their own code objects
        c = stack.pop()
        names.update(c.co_names)
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                stack.append(const)
            elif _inside_data_dir(const):
                return True
    module_globals = getattr(func, "__globals__", {})
    for name in names:
        value = module_globals.get(name)
        if _inside_data_dir(value):
            return True
        if isinstance(value, types.FunctionType) and value.__module__ == func.__module__:
            if _references_data(value, seen):
                return True
    return False


def _needs_data(item) -> bool:
    funcs = [getattr(item, "obj", None)]
    fixtureinfo = getattr(item, "_fixtureinfo", None)
    if fixtureinfo is not None:
        funcs += [d.func for defs in fixtureinfo.name2fixturedefs.values() for d in defs]
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (any(_inside_data_dir(v) for v in params.values())
            or any(f is not None and _references_data(f, set()) for f in funcs))


def pytest_configure(config):
    if config.getoption("dist", "no") in ("loadfile", "loadscope"):
        config.option.loadscopereorder = False  # hand files out in the order the workers collect


def pytest_collection_modifyitems(config, items):
    """In an xdist worker, the order the controller hands files out in (``schedule_order``).
    Without the data folder, skip the tests that reference it at module level; the others that
    need it skip when they ask ``data_file`` for a file."""
    if hasattr(config, "workerinput"):
        schedule_order(items)
    if data_present():
        return
    if shared_data_required():
        raise pytest.UsageError(f"{REQUIRE_ENV_VAR} is set, but the tests {MISSING_DATA}")
    skip = pytest.mark.skip(reason=MISSING_DATA)
    for item in items:
        if _needs_data(item):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory):
    """Imported models are cached per test session, never in the user's home."""
    os.environ["DFNET4_SDK_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def shared_exports(tmp_path_factory) -> Path:
    """The run's export cache (tests/export_cache.py), shared by the xdist workers: their temporary
    folders are siblings, so each bundle is exported once per run (under a lock) for every file."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-exports"


@pytest.fixture(scope="session")
def dfn3():
    from dfnet4_sdk.models import load_model

    return load_model("dfn3")


@pytest.fixture(scope="session")
def noisy_real_48k() -> np.ndarray:
    """10 s real noisy street recording (DNS5 blind test, CC BY 4.0)."""
    return load_clip("noisy_real/dns5_blind_street_48k.flac")


@pytest.fixture(scope="session")
def speech_mix_48k() -> tuple[np.ndarray, np.ndarray]:
    """(clean, noisy): VCTK p286 speech at 48 kHz with city noise at 5 dB SNR."""
    clean = load_clip("speech/vctk_p286_011_48k.flac")
    noise = load_clip("noise/blanket_city_00.flac", seconds=10.0)
    return clean, mix_at_snr(clean, noise, 5.0)
