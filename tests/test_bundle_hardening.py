"""Bundles under hostile or careless hands (issue #15): every malformed manifest is a typed
BundleError naming what is wrong; a manifest edited away from its graphs is refused; files
outside the bundle are refused; the .dfbundle extraction cache is private, re-verified on use
and leaves nothing behind; conformance compares a bundle with the weights it was made from."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfnet4_sdk.bundle import ARCHIVE_CACHE, MANIFEST_NAME, Bundle, pack
from dfnet4_sdk.cli import main
from dfnet4_sdk.errors import BundleError, ConfigError
from dfnet4_sdk.manifest import DspTables, Manifest, StreamingSpec
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.runtime import Runtime
from dfnet4_sdk.shipped import SHIPPED_MODELS

LITE = "dfnet4-lite-v1"  # the shipped model this project trained, with its packaged ONNX fp32 bundle
SHIPPED = SHIPPED_MODELS[LITE].onnx_bundle_dir
ORIGINAL = json.loads((SHIPPED / MANIFEST_NAME).read_text())


def copy_bundle(dst: Path) -> Path:
    shutil.copytree(SHIPPED, dst)
    return dst


def edit(root: Path, change) -> Path:
    data = json.loads((root / MANIFEST_NAME).read_text())
    change(data)
    (root / MANIFEST_NAME).write_text(json.dumps(data))
    return root


def state(data: dict, name: str) -> dict:
    return next(s for s in data["states"] if s["name"] == name)


def tensors_named(data: dict, name: str) -> list[dict]:
    return [t for g in data["graphs"] for t in (*g["inputs"], *g["outputs"]) if t["name"] == name]


@pytest.fixture
def bundle_dir(tmp_path) -> Path:
    return copy_bundle(tmp_path / "bundle")


def test_the_shipped_bundle_loads_and_names_its_weights():
    """Control for every refusal below: the untouched bundle passes every check, and, though
    exported before manifests recorded their weights, names the shipped model it is."""
    bundle = Bundle.load(SHIPPED)
    assert bundle.manifest.model_name == LITE
    assert Runtime(SHIPPED).manifest.model_name == LITE


# -- 1. malformed manifests: a BundleError that names the problem -------------------------------
MALFORMED = {
    "a JSON list": (lambda d: [], "expected a JSON object"),
    "no graphs": (lambda d: {**d, "graphs": []}, "graphs: expected a non-empty list"),
    "df_order 0": (lambda d: {**d, "streaming": {**d["streaming"], "df_order": 0}}, "streaming.df_order: expected a positive integer, found 0"),
    "init_values too short": (
        lambda d: {**d, "states": [{**{k: v for k, v in d["states"][0].items() if k != "init_value"},
                                    "init_values": [0.0, 1.0, 2.0]}, *d["states"][1:]]},
        "init_values has 3 values, its shape (1, 1, 2, 32) needs 64"),
    "a state's shape": (
        lambda d: {**d, "states": [{**d["states"][0], "shape": [1, 1, 3, 32]}, *d["states"][1:]]},
        "state 'enc_erb_conv0' has shape (1, 1, 3, 32), but graph 'enc' declares state_in.enc_erb_conv0 as (1, 1, 2, 32)"),
    "a removed state": (lambda d: {**d, "states": d["states"][1:]},
                        "graph 'enc' reads 'state_in.enc_erb_conv0' but states has no entry 'enc_erb_conv0'"),
    "a string sample rate": (lambda d: {**d, "dsp": {**d["dsp"], "sample_rate_hz": "48k"}},
                             "dsp.sample_rate_hz: expected a positive integer, found '48k'"),
    "no enc graph": (lambda d: {**d, "graphs": d["graphs"][1:]}, "graph 'enc' is missing"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_manifest_is_a_bundle_error(bundle_dir, case):
    change, message = MALFORMED[case]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(change(json.loads(json.dumps(ORIGINAL)))))
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_dir)
    assert message in str(err.value)


def test_binary_manifest_is_a_bundle_error(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_bytes(bytes(range(256)) * 4)
    with pytest.raises(BundleError, match="not a manifest: not UTF-8 text"):
        Bundle.load(bundle_dir)


def test_every_problem_is_reported_at_once(bundle_dir):
    def change(d):
        d["streaming"]["df_order"] = 0
        d["dsp"]["nb_erb"] = -1
        d["extra"] = 1
        del d["graphs"][0]["inputs"][0]["role"]

    edit(bundle_dir, change)
    with pytest.raises(BundleError) as err:
        Bundle.load(bundle_dir)
    for part in ("df_order: expected a positive integer", "dsp.nb_erb: expected a positive integer",
                 "unknown keys ['extra']", "missing keys ['role']"):
        assert part in str(err.value)


def test_rehashed_corrupt_graph_is_a_bundle_error(bundle_dir):
    """sha256 updated to match a corrupt file: verification passes, onnxruntime's load fails,
    and that failure must reach the user as a BundleError."""
    graph = bundle_dir / "enc.onnx"
    data = bytearray(graph.read_bytes())
    data[200:400] = bytes(200)
    graph.write_bytes(bytes(data))
    edit(bundle_dir, lambda d: d["graphs"][0].update(sha256=hashlib.sha256(bytes(data)).hexdigest()))
    with pytest.raises(BundleError, match="enc.onnx is not a loadable ONNX graph"):
        Runtime(bundle_dir)


def test_directory_without_manifest_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a bundle")
    with pytest.raises(BundleError, match=f"no manifest.json in {tmp_path}; expected a bundle directory written by"):
        Runtime(tmp_path)


def test_directory_without_manifest_says_so_without_torch(tmp_path, monkeypatch):
    """An app without torch used to be told it needs PyTorch for a folder that is simply no bundle."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    (tmp_path / "notes.txt").write_text("not a bundle")
    with pytest.raises(BundleError, match=f"no manifest.json in {tmp_path}; expected a bundle directory written by"):
        Runtime(tmp_path)


def test_cli_reports_a_bad_state_shape_without_a_traceback(bundle_dir, tmp_path):
    wav = tmp_path / "noise.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(4800).astype(np.float32) * 0.1, 48000)
    edit(bundle_dir, lambda d: state(d, "df_dec_convp").update(shape=[1, 16, 5, 96]))
    result = CliRunner().invoke(main, ["run", str(wav), "--model", str(bundle_dir), "-o", str(tmp_path / "out.wav")])
    assert result.exit_code == 1, result.output
    assert "df_dec_convp" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out.wav").exists()


# -- 2. a manifest edited away from its graphs is refused ----------------------------------------
def _consistent_state_shape(d):
    """A state's shape edited everywhere in the manifest: only the graph files disagree."""
    state(d, "df_dec_convp")["shape"] = [1, 16, 3, 96]
    for t in tensors_named(d, "state_in.df_dec_convp") + tensors_named(d, "state_out.df_dec_convp"):
        t["shape"] = [1, 16, 3, 96]


def rederived(change):
    """``change`` then the schema-2 values an exporter derives from dsp / streaming (the front-end
    tables, the output delay), so that only the graphs' own metadata and shapes can refuse it."""
    def apply(d: dict) -> None:
        change(d)
        dsp = DspParams.from_dict({k: d["dsp"][k] for k in DspParams.__dataclass_fields__})
        d["dsp"].update(dataclasses.asdict(DspTables.derived(dsp)))
        d["runtime"]["output_delay_samples"] = StreamingSpec(**d["streaming"]).latency_samples(dsp)
    return apply


EDITS = {  # each edited as a careful hand would: the derived schema-2 values follow (rederived)
    "sample rate": (lambda d: d["dsp"].update(sample_rate_hz=44100),
                    ["dsp.sample_rate_hz is 48000 in the graph's metadata, 44100 in the manifest"]),
    "look-ahead": (lambda d: d["streaming"].update(conv_lookahead_frames=1, df_lookahead_frames=1),
                   ["conv_lookahead_frames is 2 in the graph's metadata, 1 in the manifest",
                    "df_lookahead_frames is 2 in the graph's metadata, 1 in the manifest"]),
    "hop": (lambda d: d["dsp"].update(hop_size_samples=441, fft_size=882),
            ["input 'spec' has shape (1, 481, 2), expected (1, 442, 2)"]),
    "min ERB band width": (lambda d: d["dsp"].update(min_nb_erb_freqs=1),
                           ["dsp.min_nb_erb_freqs is 2 in the graph's metadata, 1 in the manifest"]),
    "state shape": (_consistent_state_shape,
                    ["input 'state_in.df_dec_convp' has shape (1, 16, 4, 96) in the file, (1, 16, 3, 96) in the manifest",
                     "output 'state_out.df_dec_convp' has shape (1, 16, 4, 96) in the file, (1, 16, 3, 96) in the manifest"]),
}


@pytest.mark.parametrize("case", list(EDITS))
def test_edited_manifest_is_refused(bundle_dir, case):
    change, messages = EDITS[case]
    edit(bundle_dir, rederived(change))
    with pytest.raises(BundleError) as err:
        Runtime(bundle_dir)
    for message in messages:
        assert message in str(err.value)


# -- 3. files outside the bundle -----------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_graph_file_outside_the_bundle_is_refused(bundle_dir, tmp_path, where):
    outside = tmp_path / "x.onnx"
    shutil.copy(bundle_dir / "enc.onnx", outside)  # same bytes: only the location is wrong
    if where == "symlink":
        (bundle_dir / "enc.onnx").unlink()
        (bundle_dir / "enc.onnx").symlink_to(outside)
        expected = "points outside the bundle"
    else:
        file = "../x.onnx" if where == "parent" else str(outside)
        edit(bundle_dir, lambda d: d["graphs"][0].update(file=file))
        expected = "is not a plain path inside the bundle"
    with pytest.raises(BundleError, match=expected):
        Bundle.load(bundle_dir)
    with pytest.raises(BundleError, match=expected):
        Bundle.load(bundle_dir, verify=False).graph_path("enc")


# -- 4. the .dfbundle extraction cache -----------------------------------------------------------
@pytest.fixture
def archive(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("DFNET4_SDK_CACHE", str(tmp_path / "cache"))
    return pack(copy_bundle(tmp_path / "src"), tmp_path / "lite.dfbundle")


def test_archive_extracts_into_a_private_cache(archive, tmp_path):
    bundle = Bundle.load(archive)
    cache = tmp_path / "cache" / ARCHIVE_CACHE
    assert bundle.root.parent == cache
    st_ = os.lstat(cache)
    assert stat.S_IMODE(st_.st_mode) == 0o700 and st_.st_uid == os.getuid()
    assert sorted(p.name for p in cache.iterdir()) == [bundle.root.name]  # no temporary left


def test_cache_directory_open_to_others_is_made_private(archive, tmp_path):
    cache = tmp_path / "cache" / ARCHIVE_CACHE
    cache.mkdir(parents=True)
    cache.chmod(0o777)
    Bundle.load(archive)
    assert stat.S_IMODE(os.lstat(cache).st_mode) == 0o700


def test_tampered_extraction_is_not_used(archive):
    """A cached extraction whose graph and manifest were changed together (self-consistent,
    as a planted directory would be) differs from the archive: it is extracted again."""
    root = Bundle.load(archive).root
    original = (root / "enc.onnx").read_bytes()
    planted = bytearray(original)
    planted[-100:] = bytes(100)
    (root / "enc.onnx").write_bytes(bytes(planted))
    edit(root, lambda d: d["graphs"][0].update(sha256=hashlib.sha256(bytes(planted)).hexdigest()))
    Bundle.load(root)  # the planted directory is consistent in itself
    again = Bundle.load(archive)
    assert again.root == root
    assert (root / "enc.onnx").read_bytes() == original
    assert json.loads((root / MANIFEST_NAME).read_text())["graphs"][0]["sha256"] == ORIGINAL["graphs"][0]["sha256"]


def test_extra_planted_file_is_not_used(archive):
    root = Bundle.load(archive).root
    (root / "extra.onnx").write_bytes(b"planted")
    Bundle.load(archive)
    assert not (root / "extra.onnx").exists()


def test_failed_extraction_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DFNET4_SDK_CACHE", str(tmp_path / "cache"))
    src = copy_bundle(tmp_path / "src")
    bad = tmp_path / "bad.dfbundle"
    with zipfile.ZipFile(bad, "w") as z:  # a graph that does not match the manifest's sha256
        for f in sorted(src.iterdir()):
            z.writestr(f.name, b"corrupt" if f.name == "enc.onnx" else f.read_bytes())
    with pytest.raises(BundleError, match="enc.onnx does not match its sha256"):
        Bundle.load(bad)
    assert list((tmp_path / "cache" / ARCHIVE_CACHE).iterdir()) == []


# -- 5. fuzzing the manifest loader --------------------------------------------------------------
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                         st.text(max_size=8))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                                st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                           max_leaves=6)


def _containers(value, path=()):
    """Every (path, dict or list) in a JSON value."""
    if isinstance(value, (dict, list)):
        yield path, value
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            yield from _containers(child, (*path, key))


@st.composite
def mutated_manifests(draw, numbers_only: bool = False):
    data = json.loads(json.dumps(ORIGINAL))
    for _ in range(draw(st.integers(1, 3))):
        containers = [c for _, c in _containers(data) if c]
        node = draw(st.sampled_from(containers))
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        old = node[key]
        if numbers_only or isinstance(old, (int, float)) and not isinstance(old, bool) and draw(st.booleans()):
            if not isinstance(old, (int, float)) or isinstance(old, bool):
                continue
            node[key] = draw(st.sampled_from([0, -1, 1, old + 1, old - 1, old * 2, 10**9, 0.5, -old]))
            continue
        action = draw(st.sampled_from(["drop", "retype", "add"]))
        if action == "drop":
            del node[key]
        elif action == "retype":
            node[key] = draw(JSON_VALUES)
        elif isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=8))] = draw(JSON_VALUES)
        else:
            node.append(draw(JSON_VALUES))
    return data


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return copy_bundle(tmp_path_factory.mktemp("fuzz") / "bundle")


class ZerosBackend:
    """Runs any graph of a manifest: checks each input's size against the manifest and returns
    zeros of every declared output shape, so a fuzzed manifest that loads drives the stream."""

    name = "zeros"

    def __init__(self, manifest: Manifest):
        self.manifest = manifest

    def run(self, graph: str, inputs) -> dict[str, np.ndarray]:
        g = self.manifest.graph(graph)
        for t in g.inputs:
            assert np.asarray(inputs[t.name]).size == np.prod(t.shape), (graph, t.name)
        return {t.name: np.zeros(t.shape, np.float32) for t in g.outputs}


def _stream_every_path(manifest: Manifest) -> None:
    """A manifest that loads must run: the split and fused streams, and the offline path."""
    from dfnet4_sdk.exporters.base import ALL_STAGES
    from dfnet4_sdk.offline import enhance_offline
    from dfnet4_sdk.stream import EnhancementStream

    backend = ZerosBackend(manifest)
    audio = np.random.default_rng(0).standard_normal(5 * manifest.dsp.hop_size_samples).astype(np.float32)
    for fused in (False, True) if manifest.frame_graph else (False,):
        stream = EnhancementStream(backend, ALL_STAGES, fused=fused)
        assert len(stream.process(audio)) + len(stream.flush()) == len(audio)
    if manifest.block_graphs:
        assert len(enhance_offline(backend, audio, ALL_STAGES)) == len(audio)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated_manifests())
def test_fuzzed_manifest_loads_and_runs_or_is_a_bundle_error(fuzz_dir, data):
    (fuzz_dir / MANIFEST_NAME).write_text(json.dumps(data))
    try:
        bundle = Bundle.load(fuzz_dir)
    except BundleError:
        return
    _stream_every_path(bundle.manifest)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=mutated_manifests(numbers_only=True))
def test_fuzzed_numbers_run_on_the_backend_or_are_a_bundle_error(fuzz_dir, data):
    """Changed numbers are what an edited manifest holds: through the ONNX backend's checks
    against the graph files, each either runs or is refused."""
    (fuzz_dir / MANIFEST_NAME).write_text(json.dumps(data))
    try:
        rt = Runtime(fuzz_dir)
    except BundleError:
        return
    audio = np.random.default_rng(0).standard_normal(4800).astype(np.float32) * 0.1
    assert rt.enhance(audio, rt.sample_rate).shape == audio.shape


# -- 6. the weights a bundle was made from -------------------------------------------------------
@pytest.mark.slow  # ~35 s: describes every model family (exports of each run the same checks too)
def test_every_preset_and_dfn3_manifest_passes_the_checks(dfn3):
    """The new consistency checks accept what describe_model writes for every family."""
    from dfnet4_sdk.models import load_model, preset_names
    from dfnet4_sdk.models.manifest_builder import describe_model

    for model in [dfn3, *(load_model(name) for name in preset_names())]:
        m = describe_model(model, backend="onnx", include_frame=True, block_frames=25)
        assert Manifest.from_json(m.to_json()) == m


def test_source_model_round_trips_and_names_the_model():
    unnamed = {k: v for k, v in ORIGINAL.items() if k != "source_model"}  # (the regenerated shipped one has it)
    m = Manifest.from_dict(unnamed)
    assert "source_model" not in m.to_dict() and m.model_name == "dfnet4-lite"  # unnamed: falls back to the family
    named = Manifest.from_dict({**unnamed, "source_model": {"name": "my.pt", "kind": "checkpoint", "sha256": "ab"}})
    assert named.model_name == "my.pt" and Manifest.from_json(named.to_json()) == named
    assert Manifest.from_dict(named.to_dict()) == named  # tuples (asdict) check as lists do


def test_load_model_records_its_source(tmp_path):
    from dfnet4_sdk.models import load_model, save_checkpoint

    assert load_model(LITE).source_model == {"name": LITE, "kind": "shipped"}
    assert load_model("dfnet4-lite").source_model == {"name": "dfnet4-lite", "kind": "preset"}
    path = save_checkpoint(load_model("dfnet4-lite"), tmp_path / "mine.pt")
    source = load_model(path).source_model
    assert source == {"name": "mine.pt", "kind": "checkpoint", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def test_reference_model_follows_the_manifest(bundle_dir, caplog):
    from dfnet4_sdk.conformance import reference_model

    assert reference_model(Bundle.load(SHIPPED)) == LITE  # shipped (its manifest names it since schema 2)
    edit(bundle_dir, lambda d: d.pop("source_model", None))  # a copy exported before the key existed
    with caplog.at_level(logging.WARNING):
        assert reference_model(Bundle.load(bundle_dir)) == "dfnet4-lite"  # an old copy elsewhere: the family
    assert "records no source_model" in caplog.text
    edit(bundle_dir, lambda d: d.update(source_model={"name": "dfnet4-lite-v1", "kind": "shipped"}))
    assert reference_model(Bundle.load(bundle_dir)) == "dfnet4-lite-v1"
    assert reference_model(Bundle.load(bundle_dir), "dfn3") == "dfn3"
    edit(bundle_dir, lambda d: d.update(source_model={"name": "mine.pt", "kind": "checkpoint", "sha256": "ab" * 32}))
    with pytest.raises(ConfigError, match="pass that file as the PyTorch reference with --model PATH"):
        reference_model(Bundle.load(bundle_dir))


def test_export_records_the_checkpoint_and_conformance_asks_for_it(tmp_path, caplog):
    """A bundle exported from a checkpoint names that file and its sha256; conformance then
    needs the file (--model) and warns when given another one."""
    from dfnet4_sdk.conformance import reference_model
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model, save_checkpoint

    ckpt = save_checkpoint(load_model(LITE), tmp_path / "lite.pt")
    bundle = export_bundle(load_model(ckpt), converter_for("onnx"), tmp_path / "b", fused=False, blocks=False)
    source = Bundle.load(bundle.root).manifest.source_model
    assert source == {"name": "lite.pt", "kind": "checkpoint", "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    assert bundle.manifest.model_name == "lite.pt"
    result = CliRunner().invoke(main, ["conformance", str(bundle.root), "--audio", str(_short_clip(tmp_path))])
    assert result.exit_code == 2 and "pass that file as the PyTorch reference with --model PATH" in result.output
    with caplog.at_level(logging.WARNING):
        assert reference_model(bundle, str(ckpt)) == str(ckpt)
        assert "records" not in caplog.text and "not from" not in caplog.text
        other = save_checkpoint(load_model("dfnet4-lite"), tmp_path / "other.pt")
        assert reference_model(bundle, str(other)) == str(other)
    assert "was exported from lite.pt" in caplog.text and "not from" in caplog.text


def _short_clip(tmp_path: Path) -> Path:
    clip = tmp_path / "short.wav"
    sf.write(clip, np.random.default_rng(0).standard_normal(24000).astype(np.float32) * 0.1, 48000)
    return clip


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give the cache to another user")
def test_cache_directory_of_another_user_is_refused(archive, tmp_path):
    cache = tmp_path / "cache" / ARCHIVE_CACHE
    cache.mkdir(parents=True, mode=0o700)
    os.chown(cache, 65534, 65534)
    with pytest.raises(BundleError, match="belongs to uid 65534, not to you"):
        Bundle.load(archive)


def test_shipped_bundle_passes_conformance_against_its_checkpoint(tmp_path, noisy_real_48k):
    """`dfsdk conformance` on the packaged default bundle compared it with the untrained
    dfnet4-lite preset (-7.2 dB, exit 1); it must compare with dfnet4-lite-v1 and pass."""
    clip = tmp_path / "clip.wav"
    sf.write(clip, noisy_real_48k[48000: 2 * 48000], 48000)
    result = CliRunner().invoke(main, ["conformance", str(SHIPPED), "--audio", str(clip)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("onnx-fp32-"))
    assert line.split()[:2] == ["onnx-fp32-dfnet4-lite-v1", "pass"]
    snr = float(line.split("audio SNR")[1].split("dB")[0])
    assert snr >= 60.0
