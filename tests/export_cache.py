"""Module-scoped export cache shared by the per-target export tests."""

from __future__ import annotations

import time

from audio_data import load_clip

from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.exporters.base import converter_for, export_bundle
from dfnet4_sdk.models import load_model

CLIP = "noisy_real/dns5_blind_street_48k.flac"
FIXTURE_SECONDS, FIXTURE_OFFSET_S = 1.0, 2.0


class BundleCache:
    """Each (model, precision) is exported once per module; a failed export is re-raised."""

    def __init__(self, root, dfn3, target: str):
        self.root, self.target, self.models, self.results = root, target, {"dfn3": dfn3}, {}

    def model(self, name: str):
        if name not in self.models:
            self.models[name] = load_model(name)
        return self.models[name]

    def get(self, name: str, precision: str) -> Bundle:
        key = (name, precision)
        if key not in self.results:
            model = self.model(name)
            audio = load_clip(CLIP, model.dsp.sample_rate_hz, seconds=FIXTURE_SECONDS, offset_s=FIXTURE_OFFSET_S)
            t0 = time.perf_counter()
            try:
                self.results[key] = export_bundle(
                    model, converter_for(self.target), self.root / f"{name}-{precision}", precision=precision,
                    fixture_audio=audio, fixture_source=f"{CLIP} from {FIXTURE_OFFSET_S} s, {FIXTURE_SECONDS} s",
                )
                print(f"\nexported {self.target}-{precision}-{name} in {time.perf_counter() - t0:.1f} s")
            except Exception as e:  # noqa: BLE001 -- any conversion error: remembered, re-raised to each test
                self.results[key] = e
        result = self.results[key]
        if isinstance(result, Exception):
            raise result
        return result
