"""exporters/cache.py: an entry is exported once even when processes (two test workers, `dfsdk run
--jobs`) ask for it at the same time, and the fixture audio is part of its key."""

from __future__ import annotations

import shutil
import threading
import time
from importlib import resources

import numpy as np
import pytest

from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.exporters import base, cache
from dfnet4_sdk.models import load_model

SHIPPED_ONNX = resources.files("dfnet4_sdk") / "assets" / "dfnet4-lite-v1-onnx"


@pytest.fixture()
def counted_exports(monkeypatch):
    """export_bundle replaced by a slow copy of a shipped bundle that records each call."""
    calls = []

    def slow_export(model, converter, out_dir, **options):
        calls.append(options)
        time.sleep(0.5)  # long enough for the other thread to arrive while this one exports
        staging = out_dir.with_name(out_dir.name + ".staging")
        shutil.copytree(SHIPPED_ONNX, staging)
        staging.rename(out_dir)
        return Bundle.load(out_dir)

    monkeypatch.setattr(base, "export_bundle", slow_export)
    monkeypatch.setattr(base, "converter_for", lambda target: target)
    return calls


def test_two_concurrent_requests_export_once(counted_exports, tmp_path):
    model = load_model("dfnet4-lite-v1")
    roots, errors = [], []

    def ask():
        try:
            roots.append(cache.cached_export(model, "onnx", root=tmp_path).root)
        except Exception as e:  # noqa: BLE001 -- reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(counted_exports) == 1, f"{len(counted_exports)} exports of one entry"
    assert len(roots) == 2 and roots[0] == roots[1]


def test_the_fixture_audio_is_part_of_the_key(counted_exports, tmp_path):
    model = load_model("dfnet4-lite-v1")
    a = np.zeros(48000, np.float32)
    b = a.copy()
    b[100] = 0.5
    first = cache.cached_export(model, "onnx", fixture_audio=a, fixture_source="clip", root=tmp_path).root
    again = cache.cached_export(model, "onnx", fixture_audio=a.copy(), fixture_source="clip", root=tmp_path)
    assert again.root == first
    others = {cache.cached_export(model, "onnx", fixture_audio=b, fixture_source="clip", root=tmp_path).root,
              cache.cached_export(model, "onnx", fixture_audio=a, fixture_source="other", root=tmp_path).root,
              cache.cached_export(model, "onnx", root=tmp_path).root}
    assert first not in others and len(others) == 3
    assert len(counted_exports) == 4
    assert counted_exports[0]["fixture_audio"] is a and counted_exports[0]["fixture_source"] == "clip"
