"""Conformance suite options: `--full` streams 10 s per cell (CI uses 3 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="stream 10 s of real noisy speech per cell (default 3 s)")


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory):
    os.environ["DFNET4_SDK_CACHE"] = str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(scope="session")
def shared_exports(tmp_path_factory) -> Path:
    """The run's export cache, shared with tests/ (tests/conftest.py has the same fixture) and by
    the xdist workers: their temporary folders are siblings."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-exports"


@pytest.fixture(scope="session")
def clip_seconds(request) -> float:
    return 10.0 if request.config.getoption("--full") else 3.0
