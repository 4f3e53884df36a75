"""The order xdist hands test files out in (tests/xdist_order.py, applied by tests/conftest.py):
the long files first, each file whole and in its own order, so the last file to start is short."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from xdist_order import LONG_FILES, schedule_order

REPO = Path(__file__).resolve().parents[1]


def test_long_files_exist():
    missing = [f for f in LONG_FILES if not (REPO / f).is_file()]
    assert not missing, f"LONG_FILES names files that are gone (rename them there): {missing}"


def test_long_files_first_longest_first_then_by_number_of_tests():
    ids = ["tests/test_a.py::x", "tests/test_readme.py::b1", "tests/test_a.py::y", "tests/test_b.py::z",
           "conformance/test_conformance.py::c", "tests/test_readme.py::b2", "tests/test_a.py::w"]
    items = [SimpleNamespace(nodeid=i) for i in ids]
    schedule_order(items)
    assert [i.nodeid for i in items] == [
        "conformance/test_conformance.py::c", "tests/test_readme.py::b1", "tests/test_readme.py::b2",
        "tests/test_a.py::x", "tests/test_a.py::y", "tests/test_a.py::w", "tests/test_b.py::z"]
    assert LONG_FILES["conformance/test_conformance.py"] > LONG_FILES["tests/test_readme.py"]
