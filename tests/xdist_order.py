"""The order the test files are handed to pytest-xdist's workers (tests/conftest.py applies it)."""

from __future__ import annotations

from collections import Counter

# Seconds of the files that take minutes (sum of their tests in the slowest 30 of the full run of 27
# Nov 2026, test_export_tflite's less the exports it now shares with the conformance cells). With
# `-n 2 --dist loadfile` a file runs whole on one worker; xdist hands files out by number of tests,
# which started test_readme and test_web last while the other worker had nothing left to do.
LONG_FILES = {
    "conformance/test_conformance.py": 600,
    "tests/test_readme.py": 490,
    "tests/test_export_tflite.py": 300,
    "tests/test_web.py": 205,
    "tests/test_stream_pool.py": 92,
    "tests/test_quantization.py": 69,
    "tests/test_api_hardening.py": 35,
}


def schedule_order(items: list) -> None:
    """Sort ``items`` in place, files whole and in their own order: the long files first, longest
    first, then the others by number of tests (xdist's own order), so the run ends on short files."""
    files = [item.nodeid.partition("::")[0] for item in items]
    tests = Counter(files)
    rank = {f: (-LONG_FILES.get(f, 0), -tests[f], f) for f in tests}
    order = {id(item): rank[f] for item, f in zip(items, files)}
    items.sort(key=lambda item: order[id(item)])
