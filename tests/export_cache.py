"""Export cache shared by the per-target export tests and the conformance suite.

Each (model, target, precision) is exported once per test run, into the run's shared export
folder (the ``shared_exports`` fixture: one for every xdist worker) through
``dfnet4_sdk.exporters.cache.cached_export``, which locks an entry while it is exported; the
fixture audio is the conformance cell's (``cell_audio``: 4 s to 5 s of CLIP), so the bundle a
conformance cell checks and the one an export test checks are the same export."""

from __future__ import annotations

import time
from pathlib import Path

from audio_data import data_file

from dfnet4_sdk.audio_io import read_audio
from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.conformance import cell_audio
from dfnet4_sdk.exporters.cache import cached_export
from dfnet4_sdk.models import load_model
from dfnet4_sdk.shared_data import NOISY_CLIP

CLIP = NOISY_CLIP
# The same words as conformance/test_conformance.py's FIXTURE_SOURCE: the source is part of the
# cache key, so a different text would only export twice.
FIXTURE_SOURCE = f"{CLIP}, 4 s to 5 s"


class BundleCache:
    """(model, precision) -> the bundle for ``target`` in the shared folder ``root``; a failed
    export is remembered and re-raised to each test that asks for it."""

    def __init__(self, root: Path, dfn3, target: str):
        self.root, self.target, self.models, self.results = Path(root), target, {"dfn3": dfn3}, {}

    def model(self, name: str):
        if name not in self.models:
            self.models[name] = load_model(name)
        return self.models[name]

    def get(self, name: str, precision: str) -> Bundle:
        key = (name, precision)
        if key not in self.results:
            model = self.model(name)
            audio, rate = read_audio(data_file(CLIP))
            fixture = cell_audio(audio, rate, model.dsp.sample_rate_hz, seconds=0.0)[1]
            t0 = time.perf_counter()
            try:
                self.results[key] = cached_export(model, self.target, precision, fixture_audio=fixture,
                                                  fixture_source=FIXTURE_SOURCE, root=self.root)
                print(f"\n{self.target}-{precision}-{name} ready in {time.perf_counter() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001 -- any conversion error: remembered, re-raised to each test
                self.results[key] = e
        result = self.results[key]
        if isinstance(result, Exception):
            raise result
        return result
