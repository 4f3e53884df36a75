"""TFLite export: every model exports, validates against PyTorch, replays its golden fixtures
from the manifest alone, and enhances real audio in the LiteRT interpreter (ai-edge-litert).

Each (model, precision) bundle is exported once per test run (tests/export_cache.py: the conformance
cells of the same model and precision check the same export). Tests print the measured errors,
SNRs, sizes and per-graph interpreter latency (1 thread) so a test log doubles as a report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the [tflite] extra (litert-torch) is not installed")
pytest.importorskip("ai_edge_litert", reason="the [tflite] extra (ai-edge-litert) is not installed")

from ai_edge_litert import schema_py_generated as tfl_schema
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.tools import flatbuffer_utils
from audio_data import load_clip
from dfnet4_sdk.exporters import tflite
from dfnet4_sdk.exporters.base import TOLERANCES, converter_for
from dfnet4_sdk.runtimes.tflite_backend import TfliteBackend

from dfnet4_sdk.bundle import Bundle, write_manifest
from dfnet4_sdk.errors import BundleError
from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.models import preset_names
from dfnet4_sdk.runtime import Runtime

torch.set_num_threads(1)

from export_cache import CLIP, BundleCache
PRECISIONS = converter_for("tflite").precisions
# Every architecture: DFN3 and each DfNet4 preset, dfnet4-lite as the shipped dfnet4-lite-v1 (its
# config with trained weights; the conformance cell tflite-fp32-dfnet4-lite-v1 checks the same export).
LITE = "dfnet4-lite-v1"
PRESETS = tuple(LITE if name == "dfnet4-lite" else name for name in preset_names())
MODELS = ("dfn3", *PRESETS)
# (model, precision): DFN3 at every precision, each DfNet4 preset at fp32. Presets beyond
# dfnet4-lite are marked slow (about 20 s of export each): `-m "not slow"` keeps under a minute.
QUICK_MODELS = ("dfn3", LITE)
CASES = [("dfn3", p) for p in PRECISIONS] + [(name, "fp32") for name in PRESETS]
RUNTIME_FP32_SNR_DB = 60.0


def _params(cases, ids):
    return [pytest.param(*c, id=i, marks=() if c[0] in QUICK_MODELS else pytest.mark.slow) for c, i in zip(cases, ids)]


def us_per_frame(backend: TfliteBackend, frames: int = 300) -> dict[str, float]:
    """Interpreter time of each graph per frame through ``backend.run`` (random inputs, states
    fed back, after a warm-up)."""
    rng = np.random.default_rng(0)
    times = {}
    for g in backend.manifest.graphs:
        states = {s.input_name: s.initial() for s in backend.manifest.states_of(g.name)}
        feeds = [{t.name: rng.standard_normal(t.shape).astype(np.float32) for t in g.inputs if t.role != "state_in"}
                 for _ in range(frames)]
        for feed in feeds[:20]:
            backend.run(g.name, feed | states)
        t0 = time.perf_counter()
        for feed in feeds:
            out = backend.run(g.name, feed | states)
            states = {s.input_name: out[s.output_name] for s in backend.manifest.states_of(g.name)}
        times[g.name] = (time.perf_counter() - t0) * 1e6 / frames
    return times


@pytest.fixture(scope="module")
def bundles(shared_exports, dfn3) -> BundleCache:
    return BundleCache(shared_exports, dfn3, "tflite")


@pytest.fixture(scope="module")
def street_3s() -> np.ndarray:
    return load_clip(CLIP, seconds=3.0, offset_s=4.0)


@pytest.fixture(scope="module")
def torch_reference(dfn3, street_3s) -> np.ndarray:
    return Runtime(dfn3, backend="torch").enhance(street_3s, 48000)


def test_every_precision_has_a_tolerance():
    missing = [p for p in PRECISIONS if ("tflite", p) not in TOLERANCES]
    assert not missing, f"tflite precisions without a TOLERANCES entry: {missing}"


@pytest.mark.parametrize("name, precision", _params(CASES, [f"tflite-{p}-{n}" for n, p in CASES]))
def test_export_validates_against_torch(bundles, name, precision):
    bundle = bundles.get(name, precision)
    v = bundle.manifest.validation
    tol = TOLERANCES[("tflite", precision)]
    worst = max((err, f"{g}.{t}") for g, errs in v["graph_rel_error"].items() for t, err in errs.items())
    sizes = {g.name: bundle.graph_path(g.name).stat().st_size for g in bundle.manifest.graphs}
    latency = us_per_frame(TfliteBackend(bundle, num_threads=1))
    print(f"\ntflite-{precision}-{name}: worst graph error {worst[0]:.2e} ({worst[1]}), "
          f"audio SNR vs torch {v['audio_snr_db']:.1f} dB, graphs {sum(sizes.values()) / 1024:.0f} KiB")
    for g, errs in v["graph_rel_error"].items():
        print(f"  {g}: " + ", ".join(f"{t} {e:.1e}" for t, e in errs.items())
              + f"; {sizes[g] / 1024:.0f} KiB, {latency[g]:.0f} us/frame")
    print(f"  LiteRT interpreter, 1 thread: {sum(latency.values()):.0f} us per frame (all graphs)")
    assert worst[0] <= tol.graph_rel_error
    assert v["audio_snr_db"] >= tol.audio_snr_db
    assert bundle.manifest.backend == "tflite" and bundle.manifest.precision == precision
    blocks = [g.name for g in bundle.manifest.block_graphs]
    print(f"  block graphs: {blocks or v.get('note')}")
    has_gru = any(isinstance(m, torch.nn.GRU) for m in bundles.model(name).modules())
    if precision in converter_for("tflite").capabilities.block_frames and not has_gru:  # or why they were left out
        assert len(blocks) == 3 or "block graphs left out" in v.get("note", "")
    else:  # LiteRT unrolls a GRU frame by frame in a block graph: nothing to gain
        assert not blocks


@pytest.mark.parametrize("name", _params([(m,) for m in MODELS], MODELS))
def test_golden_fixtures_replay_from_the_manifest_alone(bundles, name):
    """A device port's check: chain the graphs frame by frame, feeding only the fixtures' frame
    features, the manifest's initial states and each graph's own outputs (by name)."""
    bundle = Bundle.load(bundles.get(name, "fp32").root)
    m, fixtures = bundle.manifest, bundle.load_fixtures()
    backend = TfliteBackend(bundle)
    tol = TOLERANCES[("tflite", "fp32")].graph_rel_error
    graphs = m.component_graphs
    features = {t.name: fixtures[f"{g.name}/{t.name}"] for g in graphs for t in g.inputs if t.role == "feature"}
    frames = len(next(iter(features.values())))
    states = {s.input_name: s.initial() for s in m.states}
    outputs: dict[str, list[np.ndarray]] = {}
    for i in range(frames):
        values = {k: v[i] for k, v in features.items()}
        for g in graphs:
            out = backend.run(g.name, {t.name: (values | states)[t.name] for t in g.inputs})
            values |= out
            states |= {s.input_name: out[s.output_name] for s in m.states_of(g.name)}
            for t in g.outputs:
                if t.role == "output":
                    outputs.setdefault(f"{g.name}/{t.name}", []).append(out[t.name])
    errors = {}
    for key, expected in fixtures.items():
        tensor = key.partition("/")[2]
        if key in outputs:
            actual = np.stack(outputs[key])
        elif tensor.startswith("final.state_out."):
            actual = states[tensor.removeprefix("final.").replace("state_out.", "state_in.", 1)]
        else:
            continue
        errors[key] = float(np.max(np.abs(actual.reshape(expected.shape) - expected)) / max(np.max(np.abs(expected)), 1e-6))
    print(f"\ntflite-fp32-{name} fixture replay ({frames} frames): "
          + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    assert {f"{g.name}/{t.name}" for g in graphs for t in g.outputs if t.role == "output"} <= set(errors)
    assert all(e <= tol for e in errors.values()), errors


@pytest.mark.parametrize("precision", PRECISIONS)
def test_runtime_on_bundle_enhances_real_audio_like_torch(bundles, street_3s, torch_reference, precision):
    """Runtime(bundle_dir) with default stream options (gating, silence skipping) on 3 s of a
    real street recording, against the PyTorch runtime."""
    bundle = bundles.get("dfn3", precision)
    rt = Runtime(bundle.root)
    t0 = time.perf_counter()
    enhanced = rt.enhance(street_3s, 48000)
    ms_per_hop = (time.perf_counter() - t0) * 1e3 / (len(street_3s) / rt.hop_size_samples)
    snr = snr_db(torch_reference, enhanced)
    print(f"\nRuntime(tflite-{precision}-dfn3) vs torch runtime: {snr:.1f} dB, {ms_per_hop:.2f} ms per 10 ms hop")
    floor = RUNTIME_FP32_SNR_DB if precision == "fp32" else TOLERANCES[("tflite", precision)].audio_snr_db
    assert rt.backend.name == "tflite"
    assert enhanced.shape == street_3s.shape
    assert snr >= floor
    assert np.sum(enhanced**2) < np.sum(street_3s**2)


def test_streams_in_two_threads_share_one_loaded_bundle(bundles, street_3s):
    """Runtime.clone() streams in other threads over the same interpreters (a LiteRT interpreter
    must not be invoked concurrently: the backend locks per graph); each stream's output equals
    the same stream run alone."""
    import threading

    rt = Runtime(bundles.get(LITE, "fp32").root)
    clips = [street_3s[: 2 * 48000], street_3s[48000:]]
    alone = [np.concatenate([rt.process(c), rt.flush()]) for c in clips]
    together: list[np.ndarray | None] = [None, None]

    def run(i: int) -> None:
        clone = rt.clone()
        parts = [clone.process(clips[i][k : k + 480]) for k in range(0, len(clips[i]), 480)]
        together[i] = np.concatenate([*parts, clone.flush()])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)


class _RunOnly:
    """A backend without ``bind``: the stream falls back to one ``run`` per hop."""

    def __init__(self, backend):
        self.name, self.manifest, self.run = backend.name, backend.manifest, backend.run


@pytest.mark.parametrize("views", [True, False], ids=["buffer-views", "set-get-fallback"])
def test_bound_frame_graph_equals_per_call_run(bundles, street_3s, views):
    """``bind`` (views of the interpreter's buffers, or set/get where LiteRT offers no views)
    gives exactly what per-call ``run`` gives, with both kinds of call on one loaded bundle
    (a held view must not make ``run`` refuse to invoke), also across ``flush``/``reset``."""
    from dfnet4_sdk.stream import EnhancementStream

    backend = TfliteBackend(bundles.get(LITE, "fp32"))
    if not views:
        backend._graphs = {k: dataclasses.replace(g, view=None) for k, g in backend._graphs.items()}
    assert backend._graphs["frame"].view is not None or not views
    bound, unbound = EnhancementStream(backend), EnhancementStream(_RunOnly(backend))
    assert bound._frame_calls is not None and unbound._frame_calls is None
    x = street_3s[: 2 * 48000]
    for _ in range(2):
        a = np.concatenate([bound.process(x[:30_001]), bound.process(x[30_001:]), bound.flush()])
        b = np.concatenate([unbound.process(x), unbound.flush()])
        assert a.shape == x.shape and np.sum(a**2) < np.sum(x**2)
        np.testing.assert_array_equal(a, b)


def test_names_map_and_metadata_travel_with_the_graphs(bundles):
    bundle = bundles.get("dfn3", "fp32")
    for g in bundle.manifest.graphs:
        names = dict(g.tensor_names)
        assert set(names) == {*g.input_names, *g.output_names}  # every input and output, by name
        assert all(names[n] == n.replace(".", "__") for n in names)
        meta = tflite.read_metadata(bundle.graph_path(g.name))
        assert meta["graph"] == g.name and meta["precision"] == "fp32" and meta["model_family"] == "dfn3"
        assert meta["sample_rate_hz"] == "48000" and meta["hop_size_samples"] == "480"
        assert json.loads(meta["tensor_names_json"]) == names
        signature = Interpreter(model_path=str(bundle.graph_path(g.name))).get_signature_list()
        assert signature == {g.name: {"inputs": sorted(names[n] for n in g.input_names),
                                      "outputs": sorted(names[n] for n in g.output_names)}}
    assert bundle.manifest.graph("enc").tensor_names["state_out.enc_emb_gru"] == "state_out__enc_emb_gru"


@pytest.mark.parametrize("precision, weight_type", [("fp16", "FLOAT16"), ("int8", "INT8")])
def test_reduced_precision_keeps_io_and_state_fp32(bundles, precision, weight_type):
    bundle = bundles.get("dfn3", precision)
    types = {v: k for k, v in vars(tfl_schema.TensorType).items() if not k.startswith("_")}
    for g in bundle.manifest.graphs:
        model = flatbuffer_utils.read_model(str(bundle.graph_path(g.name)))
        sub = model.subgraphs[0]
        io = [sub.tensors[i] for i in (*sub.inputs, *sub.outputs)]
        assert {types[t.type] for t in io} == {"FLOAT32"}
        assert weight_type in {types[t.type] for t in sub.tensors}, f"{g.name}: no {weight_type} weights"
        assert flatbuffer_utils.count_resource_variables(model) == 0


def test_backend_refuses_a_foreign_or_inconsistent_bundle(bundles, tmp_path):
    bundle = bundles.get("dfn3", "fp32")
    foreign = tmp_path / "foreign"
    shutil.copytree(bundle.root, foreign)
    write_manifest(foreign, dataclasses.replace(bundle.manifest, backend="onnx"))
    with pytest.raises(BundleError, match="exported for 'onnx', not tflite"):
        TfliteBackend(Bundle.load(foreign))

    renamed = tmp_path / "renamed"
    shutil.copytree(bundle.root, renamed)
    enc = bundle.manifest.graph("enc")
    wrong = dataclasses.replace(enc, tensor_names={**enc.tensor_names, "feat_erb": "args_0"})
    graphs = tuple(wrong if g.name == "enc" else g for g in bundle.manifest.graphs)
    write_manifest(renamed, dataclasses.replace(bundle.manifest, graphs=graphs))
    with pytest.raises(BundleError, match="'feat_erb' \\('args_0'\\) is not in the signature"):
        TfliteBackend(Bundle.load(renamed))


@pytest.mark.parametrize("kernel, stride, padding, output_padding, groups", [
    pytest.param((1, 3), (1, 2), (0, 1), (0, 1), 4, id="dfn3-erb-upsampling"),  # depthwise, padded
    pytest.param((3, 3), (2, 2), (1, 1), (1, 1), 1, id="padded-2d"),
    pytest.param((1, 3), (1, 3), (0, 0), (0, 0), 2, id="grouped-kernel-equals-stride"),
])
def test_transposed_convs_are_rewritten_exactly(kernel, stride, padding, output_padding, groups):
    """litert_torch 0.10 mis-lowers these transposed convs; the rewrite must match torch both
    in torch and after conversion."""
    conv = torch.nn.ConvTranspose2d(4, 8, kernel, stride=stride, padding=padding, output_padding=output_padding,
                                    groups=groups).eval()
    x = torch.randn(1, 4, 3, 8)
    rewritten = tflite._with_exact_transposed_convs(torch.nn.Sequential(conv)).eval()
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in rewritten.modules())
    with torch.no_grad():
        expected = conv(x)
        np.testing.assert_allclose(rewritten(x), expected, atol=1e-6)
    content = tflite._convert(rewritten, "g", {"input": x})  # Sequential.forward(input)
    got = Interpreter(model_content=content).get_signature_runner("g")(input=x.numpy())["output_0"]
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
