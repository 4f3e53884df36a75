"""Bundles: ONNX export of DFN3, manifest round trip, tamper detection, fixtures replayed from
the manifest alone (as a Swift/Kotlin port would), and Runtime over the exported graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from audio_data import load_clip

from dfnet4_sdk import Runtime
from dfnet4_sdk.bundle import Bundle, pack
from dfnet4_sdk.errors import BundleError, ConfigError, ExportError
from dfnet4_sdk.exporters.base import converter_for, export_bundle
from dfnet4_sdk.manifest import Manifest
from dfnet4_sdk.metrics import snr_db


@pytest.fixture(scope="module")
def onnx_bundle(dfn3, tmp_path_factory) -> Bundle:
    out = tmp_path_factory.mktemp("bundles") / "dfn3-onnx"
    audio = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=1.0, offset_s=2.0)
    return export_bundle(dfn3, converter_for("onnx"), out, fixture_audio=audio, fixture_source="dns5 street")


def test_export_validates_against_pytorch(onnx_bundle):
    v = onnx_bundle.manifest.validation
    worst = max(e for errs in v["graph_rel_error"].values() for e in errs.values())
    print(f"\nDFN3 ONNX fp32: worst per-graph relative error {worst:.2e}, audio SNR {v['audio_snr_db']:.1f} dB")
    assert worst <= 1e-4
    assert v["audio_snr_db"] >= 60.0


def test_manifest_describes_everything_an_app_needs(onnx_bundle):
    m = onnx_bundle.manifest
    single = [g for g in m.graphs if g.streams == 1]  # (a batched frame_streams graph is issue 17's)
    assert [g.name for g in single] == ["enc", "erb_dec", "df_dec", "frame", "enc_block", "erb_dec_block", "df_dec_block"]
    assert [g.kind for g in single] == ["component"] * 3 + ["frame"] + ["block"] * 3
    assert [g.frames for g in single] == [1, 1, 1, 1, 100, 100, 100]
    assert m.graph("enc_block").inputs[0].shape == (1, 1, 100, 32)  # 100 frames per offline call
    assert m.latency_samples == 1440 and m.dsp.sample_rate_hz == 48000
    assert {s.name for s in m.states} == {
        "enc_erb_conv0", "enc_df_conv0", "enc_emb_gru", "erb_dec_emb_gru", "df_dec_convp", "df_dec_gru",
        "frame_erb_norm", "frame_unit_norm", "frame_spec_history",
    }
    # The fused graph reads and writes every state; its DSP states start where libDF's do.
    assert {t.name for t in m.frame_graph.state_inputs} == {s.input_name for s in m.states}
    erb_norm = next(s for s in m.states if s.name == "frame_erb_norm").initial()
    np.testing.assert_allclose(erb_norm[0, [0, -1]], [-60.0, -90.0])
    for g in m.component_graphs:
        model = onnx.load(str(onnx_bundle.graph_path(g.name)))
        assert [i.name for i in model.graph.input] == list(g.input_names)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["sample_rate_hz"] == "48000" and meta["graph"] == g.name
    assert Manifest.from_json(m.to_json()) == m


def test_golden_fixtures_replay_from_the_manifest_alone(onnx_bundle):
    """Only manifest.json, the .onnx files and fixtures.npz: no SDK code on the data path."""
    root = onnx_bundle.root
    manifest = json.loads((root / "manifest.json").read_text())
    fixtures = np.load(root / manifest["fixtures"]["file"])
    sessions = {g["name"]: ort.InferenceSession(str(root / g["file"])) for g in manifest["graphs"]}
    components = [g for g in manifest["graphs"] if g["kind"] == "component"]
    assert manifest["schema_version"] == 2
    # Exactly one of init_value (every element) / init_values (row-major, one per element).
    state = {s["name"]: np.array(s["init_values"], np.float32).reshape(s["shape"]) if "init_values" in s
             else np.full(s["shape"], s["init_value"], np.float32)
             for s in manifest["states"] if s["graph"] in {g["name"] for g in components}}
    n_frames = fixtures["enc/feat_erb"].shape[0]
    worst = 0.0
    for t in range(n_frames):
        values = {"feat_erb": fixtures["enc/feat_erb"][t], "feat_spec": fixtures["enc/feat_spec"][t]}
        for g in components:
            feed = {}
            for tensor in g["inputs"]:
                name = tensor["name"]
                feed[name] = state[name.removeprefix("state_in.")] if tensor["role"] == "state_in" else values[name]
            out = dict(zip([o["name"] for o in g["outputs"]], sessions[g["name"]].run(None, feed)))
            for o in g["outputs"]:
                if o["role"] == "state_out":
                    state[o["name"].removeprefix("state_out.")] = out[o["name"]]
                else:
                    values[o["name"]] = out[o["name"]]
                if o["role"] == "output":
                    worst = max(worst, float(np.abs(out[o["name"]] - fixtures[f"{g['name']}/{o['name']}"][t]).max()))
    assert n_frames == 100 + 3  # 1 s of hops plus the 3 flush hops that push out the 1440-sample delay
    assert worst < 1e-4


def test_runtime_over_bundle_matches_torch(onnx_bundle, dfn3, speech_mix_48k):
    _, noisy = speech_mix_48k
    x = noisy[: 3 * 48000]
    via_onnx = Runtime(onnx_bundle.root).enhance(x, 48000)
    via_torch = Runtime(dfn3).enhance(x, 48000)
    snr = snr_db(via_torch, via_onnx)
    print(f"\nRuntime(onnx bundle) vs Runtime(torch): {snr:.1f} dB")
    assert snr >= 60.0


def test_tampered_graph_is_refused(onnx_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle.root, copy)
    with open(copy / "erb_dec.onnx", "ab") as f:
        f.write(b"\0")
    (copy / "fixtures.npz").unlink()
    with pytest.raises(BundleError) as e:
        Bundle.load(copy)
    assert "erb_dec.onnx does not match its sha256" in str(e.value)
    assert "fixtures.npz is missing" in str(e.value)  # every problem reported at once


def test_foreign_or_newer_manifest_is_refused(onnx_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(onnx_bundle.root, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["schema_version"] = 99
    data["surprise"] = 1
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BundleError) as e:
        Bundle.load(copy)
    assert "schema_version 99 is not supported" in str(e.value) and "unknown keys ['surprise']" in str(e.value)
    with pytest.raises(BundleError, match="no manifest.json in .*; expected a bundle directory"):
        Bundle.load(tmp_path)


def test_single_file_archive_round_trip(onnx_bundle, tmp_path):
    archive = pack(onnx_bundle.root, tmp_path / "dfn3.dfbundle")
    reopened = Bundle.load(archive)
    assert reopened.manifest == onnx_bundle.manifest
    x = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=0.5, offset_s=4.0)
    np.testing.assert_array_equal(Runtime(archive).enhance(x, 48000), Runtime(onnx_bundle.root).enhance(x, 48000))


def test_backend_must_match_the_bundle(onnx_bundle):
    with pytest.raises(ConfigError, match="exported for 'onnx'"):
        Runtime(onnx_bundle.root, backend="tflite")


def test_fp16_export_meets_its_tolerance(dfn3, tmp_path):
    audio = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=0.5, offset_s=2.0)
    b = export_bundle(dfn3, converter_for("onnx"), tmp_path / "fp16", precision="fp16", fixture_audio=audio)
    v = b.manifest.validation
    print(f"\nDFN3 ONNX fp16: audio SNR vs torch fp32 {v['audio_snr_db']:.1f} dB")
    assert v["audio_snr_db"] >= 35.0
    assert b.manifest.precision == "fp16"


def test_export_that_misses_its_tolerance_writes_nothing(dfn3, tmp_path, monkeypatch):
    """A tolerance no export can meet: validation must refuse it and leave no bundle behind."""
    from dfnet4_sdk.exporters import base

    monkeypatch.setitem(base.TOLERANCES, ("onnx", "fp16"), base.Tolerance(graph_rel_error=1e-12, audio_snr_db=400.0))
    audio = load_clip("noisy_real/dns5_blind_street_48k.flac", seconds=0.5, offset_s=2.0)
    out = tmp_path / "fp16"
    with pytest.raises(ExportError, match="failed validation.*audio SNR"):
        export_bundle(dfn3, converter_for("onnx"), out, precision="fp16", fixture_audio=audio)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_running_a_bundle_needs_no_torch(onnx_bundle):
    """Apps that ship a bundle install no PyTorch: the runtime path must not import it."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from dfnet4_sdk import Runtime\n"
        f"rt = Runtime({str(onnx_bundle.root)!r})\n"
        "x = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 0.1\n"
        "y = rt.enhance(x, 48000)\n"
        "z = np.concatenate([rt.process(x), rt.flush()])\n"
        "assert y.shape == z.shape == x.shape\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
