"""Golden fixtures (``fixtures.npz``), written by the export's finalize pass.

Two parts, both documented in docs/BUNDLE.md ("Golden fixtures"):

- per-frame: every component graph's features, outputs and final states while the fixture clip
  streams through PyTorch with every stage on (``make_fixtures``): a port checks its graph calls;
- audio cases (``fixture_cases`` + ``record_cases``): short signals with the runtime options
  that exercise each stage a per-hop client applies outside the graphs (defaults, every stage
  on, digital silence, gating, post-filter, attenuation limit, both, a final partial hop), with
  this bundle's output from the SDK's stream over its component graphs: a port that leaves a
  stage out fails the case that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dfnet4_sdk.manifest import Manifest
from dfnet4_sdk.stream import EnhancementStream, StreamOptions

CASE_SECONDS = 1.0  # audio of each case (the clip's start); longer clips are cut
LEAD_SILENCE_S, INNER_SILENCE_HOPS = 0.25, 3.5  # the silence case: zeros before and inside the clip
POST_FILTER_BETA, ATTEN_LIM_DB = 0.02, 12.0  # upstream's suggested beta; a limit that changes the output
# Thresholds for the gating case: the clip's local-SNR quartiles (all-stages run), so that each
# of libDF's four branches (zero mask, ERB + DF, ERB only, nothing) holds about a quarter of the frames.
GATING_QUANTILES = (0.25, 0.75, 0.5)  # min_db_thresh, max_db_erb_thresh, max_db_df_thresh


@dataclass(frozen=True)
class FixtureCase:
    name: str
    options: dict[str, Any]  # StreamOptions overrides (JSON values)
    audio: np.ndarray


def make_fixtures(manifest: Manifest, recorder, audio: np.ndarray, enhanced: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame fixtures: each component graph's feature inputs and outputs per frame, its final
    states, and the clip in and out (``recorder``: ``validate.RecordingBackend`` of the run)."""
    fixtures: dict[str, np.ndarray] = {"audio_in": audio, "audio_out": enhanced}
    for g in manifest.component_graphs:
        calls = recorder.calls[g.name]
        for t in g.inputs:
            if t.role == "feature":
                fixtures[f"{g.name}/{t.name}"] = np.stack([c[0][t.name] for c in calls])
        for t in g.outputs:
            if t.role == "output":
                fixtures[f"{g.name}/{t.name}"] = np.stack([c[1][t.name] for c in calls])
        for s in manifest.states_of(g.name):
            fixtures[f"{g.name}/final.{s.output_name}"] = calls[-1][1][s.output_name]
    return fixtures


def fixture_cases(audio: np.ndarray, sample_rate: int, hop: int, lsnr_db: np.ndarray) -> list[FixtureCase]:
    """The audio cases for a fixture clip at the model rate; ``lsnr_db``: the clip's per-frame
    local SNR with every stage on (places the gating thresholds)."""
    hops = max(4, min(len(audio) // hop, round(CASE_SECONDS * sample_rate / hop)))
    clip = np.zeros(hops * hop, np.float32)
    clip[: min(len(audio), len(clip))] = audio[: len(clip)]
    half = hops // 2 * hop
    silence = np.concatenate([np.zeros(round(LEAD_SILENCE_S * sample_rate), np.float32), clip[:half],
                              np.zeros(round(INNER_SILENCE_HOPS * hop), np.float32), clip[half:]])
    low, max_erb, max_df = (round(float(np.quantile(lsnr_db, q)), 1) for q in GATING_QUANTILES)
    if max_erb - low < 1.0:  # a local SNR that hardly varies (an untrained model): ERB mask only, DF off
        centre = round(float(np.median(lsnr_db)), 1)
        low, max_erb, max_df = centre - 10.0, centre + 10.0, centre - 5.0
    every_stage = {"min_db_thresh": -1000.0, "max_db_erb_thresh": 1000.0, "max_db_df_thresh": 1000.0,
                   "skip_silent_hops": False}
    return [
        FixtureCase("default", {}, clip),
        FixtureCase("every_stage", every_stage, clip),
        FixtureCase("silence", {}, silence),
        FixtureCase("gating", {"min_db_thresh": low, "max_db_erb_thresh": max_erb, "max_db_df_thresh": max_df}, clip),
        FixtureCase("post_filter", {"post_filter_beta": POST_FILTER_BETA}, clip),
        FixtureCase("atten_lim", {"atten_lim_db": ATTEN_LIM_DB}, clip),
        FixtureCase("post_filter_atten_lim", {"post_filter_beta": POST_FILTER_BETA, "atten_lim_db": ATTEN_LIM_DB}, clip),
        FixtureCase("partial_hop", {}, clip[: len(clip) - hop // 2 - 7]),
    ]


def record_cases(backend, cases: list[FixtureCase]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """Each case streamed through ``backend``'s component graphs by the SDK's stream (what a
    per-hop client does): (npz arrays ``cases/<name>/audio_in|audio_out``, manifest entries)."""
    arrays, entries = {}, []
    defaults = StreamOptions(**backend.manifest.runtime.options)
    for case in cases:
        options = StreamOptions(**{**defaults.__dict__, **case.options})
        stream = EnhancementStream(backend, options, fused=False)
        out = np.concatenate([stream.process(case.audio), stream.flush()])
        assert len(out) == len(case.audio) and np.all(np.isfinite(out)), case.name
        arrays[f"cases/{case.name}/audio_in"] = case.audio.astype(np.float32)
        arrays[f"cases/{case.name}/audio_out"] = out.astype(np.float32)
        entries.append({"name": case.name, "options": dict(case.options), "samples": int(len(case.audio))})
    return arrays, entries


def frame_lsnr(recorder) -> np.ndarray:
    """The per-frame local SNR the recorded all-stages run of the fixture clip produced."""
    calls = recorder.calls.get("enc", [])
    values = np.array([float(np.asarray(c[1]["lsnr"]).reshape(-1)[0]) for c in calls], np.float64)
    return values[np.isfinite(values)] if len(values) else np.array([0.0])

