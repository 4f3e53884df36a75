"""Manifest schema version 2: what a version 1 manifest becomes when loaded (and that it still
runs), versions refused with a message that says what to do, and the cross-checks of the new
data: a manifest edit of the front-end tables or the silence threshold is honoured by the
runtime (and by the spec-only client, which reads the same keys) or refused at load."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from dfnet4_sdk import Runtime
from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.errors import BundleError, ConfigError
from dfnet4_sdk.manifest import SCHEMA_VERSION, DspTables, Manifest, RuntimeSpec
from dfnet4_sdk.metrics import snr_db

sys.path.insert(0, str(Path(__file__).resolve().parent / "clients"))
import spec_client  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "dfnet4_sdk" / "assets" / "dfnet4-lite-v1-onnx"
V1_MANIFEST = Path(__file__).resolve().parent / "data" / "manifest_v1_dfnet4-lite-v1-onnx.json"  # before issue 16


def _audio(seconds: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * 48000)) / 48000
    return (0.1 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


def _copy(tmp_path: Path, edit=None, drop_frame: bool = False) -> Path:
    """A copy of the shipped bundle with its manifest edited (the manifest is not hashed)."""
    root = tmp_path / "bundle"
    shutil.copytree(SHIPPED, root)
    data = json.loads(Manifest.from_json((root / "manifest.json").read_text()).to_json())
    if drop_frame:  # then the front-end runs in numpy from the manifest's tables
        data["graphs"] = [g for g in data["graphs"] if g["kind"] != "frame"]
        data["states"] = [s for s in data["states"] if s["graph"] != "frame"]
    if edit:
        edit(data)
    (root / "manifest.json").write_text(json.dumps(data))
    return root


def test_v1_manifest_is_upgraded_to_what_the_exporter_writes():
    v1 = json.loads(V1_MANIFEST.read_text())
    assert v1["schema_version"] == 1 and "runtime" not in v1
    m = Manifest.from_dict(v1)
    assert m.schema_version == SCHEMA_VERSION == 2
    assert m.tables == DspTables.derived(m.dsp) and m.tables.norm_alpha == 0.99
    assert m.tables.erb_widths[:3] == (2, 2, 2) and sum(m.tables.erb_widths) == 481
    assert m.runtime == RuntimeSpec.derived(m.dsp, m.streaming) and m.runtime.output_delay_samples == 1440
    assert m.runtime.silent_hop_mean_square == 1e-7 and m.runtime.options["skip_silent_hops"] is True
    assert {s.name: s.role for s in m.states if s.graph == "frame"} == {
        "frame_erb_norm": "erb_norm", "frame_unit_norm": "spec_norm", "frame_spec_history": "spectrum_history"}
    assert [(g.name, g.frames) for g in m.block_graphs] == [("enc_block", 100), ("erb_dec_block", 100), ("df_dec_block", 100)]
    written = json.loads(m.to_json())
    assert written["schema_version"] == 2 and written["dsp"]["erb_widths"] == list(m.tables.erb_widths)
    assert all(("init_value" in s) != ("init_values" in s) for s in written["states"])  # exactly one
    assert Manifest.from_dict(written) == m
    # The shipped bundle (regenerated as v2) says the same as its upgraded v1 manifest.
    shipped = Bundle.load(SHIPPED).manifest
    assert (shipped.tables, shipped.runtime, shipped.states) == (m.tables, m.runtime, m.states)


def _as_v1(v2: dict) -> dict:
    """A v2 manifest written as version 1 did: no tables, runtime, frames/streams, roles or cases;
    every state with both init keys, one of them null."""
    v1 = json.loads(json.dumps(v2))
    v1["schema_version"] = 1
    del v1["runtime"]
    for key in ("window", "erb_widths", "norm_alpha", "erb_norm_init", "spec_norm_init"):
        del v1["dsp"][key]
    for g in v1["graphs"]:
        del g["frames"], g["streams"]
    for st in v1["states"]:
        del st["role"]
        st.setdefault("init_value", 0.0)
        st.setdefault("init_values", None)
    v1["fixtures"] = {k: v for k, v in v1["fixtures"].items() if k != "cases"}
    return v1


def test_v1_bundle_still_runs_and_equals_the_v2_bundle(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(SHIPPED, root)
    v2 = json.loads((SHIPPED / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(_as_v1(v2)))
    loaded = Bundle.load(root).manifest
    m2 = Manifest.from_dict(v2)  # the upgrade restores exactly what the exporter wrote
    assert (loaded.tables, loaded.runtime, loaded.graphs, loaded.states) == (m2.tables, m2.runtime, m2.graphs, m2.states)
    assert loaded.fixtures["cases"] == [] and len(m2.fixtures["cases"]) == 8
    x = _audio()
    old, new = Runtime(root).enhance(x, 48000), Runtime(SHIPPED).enhance(x, 48000)
    assert len(old) == len(x) and snr_db(new, old) >= 100.0


def test_hand_edited_v1_manifest_reports_every_problem():
    v1 = json.loads(V1_MANIFEST.read_text())
    v1["states"][0]["init_values"] = [1.0]  # wrong count (and init_value is also there, as v1 wrote it)
    del v1["streaming"]["df_order"]
    v1["surprise"] = True
    with pytest.raises(ConfigError) as e:
        Manifest.from_dict(v1)
    text = str(e.value)
    assert "unknown keys ['surprise']" in text and "streaming: missing keys ['df_order']" in text


@pytest.mark.parametrize("version, hint", [(3, "upgrade dfnet4-sdk"), (0, "re-export the bundle"), ("2", "re-export")])
def test_unknown_versions_are_refused_saying_what_to_do(version, hint):
    data = Bundle.load(SHIPPED).manifest.to_dict()
    with pytest.raises(ConfigError) as e:
        Manifest.from_dict({**data, "schema_version": version})
    assert f"schema_version {version!r} is not supported (this SDK reads schema versions 1 and 2)" in str(e.value)
    assert hint in str(e.value)


def test_v2_states_need_exactly_one_init_key_and_a_role():
    data = Bundle.load(SHIPPED).manifest.to_dict()
    data["states"][0] = {**data["states"][0], "init_values": [0.0]}
    del data["states"][1]["init_value"]
    data["states"][2]["role"] = "cache"
    text = str(pytest.raises(ConfigError, Manifest.from_dict, data).value)
    assert "expected exactly one of init_value" in text and "found both" in text and "found neither" in text
    assert "role: expected one of ['model', 'erb_norm', 'spec_norm', 'spectrum_history']" in text


def test_a_norm_state_whose_init_values_miss_its_shape_is_a_reported_problem():
    """Found by the manifest fuzzer: a norm-role state with too few init_values made the role check
    reshape them and raise ValueError instead of the collected ConfigError."""
    data = Bundle.load(SHIPPED).manifest.to_dict()
    norm = next(s for s in data["states"] if s["role"] == "erb_norm")
    data["states"][data["states"].index(norm)] = {**{k: v for k, v in norm.items() if k != "init_value"},
                                                  "init_values": [0.0] * 5}
    text = str(pytest.raises(ConfigError, Manifest.from_dict, data).value)
    assert f"state {norm['name']!r}: init_values has 5 values" in text


def test_edits_the_frame_graph_cannot_follow_are_refused(tmp_path):
    def edit(d):
        d["dsp"]["erb_widths"] = [3] + d["dsp"]["erb_widths"][1:-1] + [d["dsp"]["erb_widths"][-1] - 1]
        d["dsp"]["norm_alpha"] = 0.98
        d["dsp"]["erb_norm_init"] = [-50.0] * 32
        d["runtime"]["output_delay_samples"] = 960
        d["runtime"]["options"]["atten_lim_db"] = 12.0
    with pytest.raises(BundleError) as e:
        Bundle.load(_copy(tmp_path, edit))
    text = str(e.value)
    for expected in ("dsp.erb_widths is [3, 2", "dsp.norm_alpha is 0.98", "does not start at dsp.erb_norm_init",
                     "output_delay_samples is 960", "runtime.options ['atten_lim_db'] differ"):
        assert expected in text


def test_table_and_silence_edits_are_honoured_without_a_frame_graph(tmp_path):
    """Without a frame graph the runtime reads the manifest's tables and threshold: an edit
    changes the output, and the SDK and the spec-only client (same keys) still agree."""
    x = _audio()
    x[4800:9600] *= 1e-2  # 10 quiet hops: mean square ~1e-6, above the default 1e-7, below the edited 1e-4

    def edit(d):
        d["dsp"]["norm_alpha"] = 0.95
        d["dsp"]["erb_norm_init"] = [-40.0] * 32
        d["dsp"]["spec_norm_init"] = [0.01] * 96
        d["runtime"]["silent_hop_mean_square"] = 1e-4
    plain, edited = _copy(tmp_path / "a", drop_frame=True), _copy(tmp_path / "b", edit, drop_frame=True)
    out_plain = Runtime(plain).enhance(x, 48000)
    out_edited = Runtime(edited).enhance(x, 48000)
    assert snr_db(out_plain, out_edited) < 30.0  # honoured: the output changed
    skipped = slice(4800 - 1440, 9600 - 1440)  # their output slots, after the 1440-sample delay compensation
    assert np.count_nonzero(out_edited[skipped]) == 0 and np.count_nonzero(out_plain[skipped]) > 0
    client = spec_client.enhance(spec_client.Bundle(edited), x)
    assert snr_db(out_edited, client) >= 60.0
    assert asdict(Bundle.load(edited).manifest.runtime)["silent_hop_mean_square"] == 1e-4
