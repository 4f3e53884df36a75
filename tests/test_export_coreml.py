"""Core ML export: every model exports, validates against PyTorch and enhances real audio.

Off macOS Core ML cannot predict, so the bundles run through the numpy MIL reference interpreter
on the program read back from each saved .mlpackage; every test that runs a bundle prints the
backend's ``execution`` so a report says which ran. fp16 there is numpy's emulation (fp16
rounding after every op), not Apple hardware.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import pytest
import torch

ct = pytest.importorskip("coremltools", reason="the [coreml] extra (coremltools) is not installed")

from audio_data import load_clip
from dfnet4_sdk.errors import BackendNotAvailableError, BundleError
from dfnet4_sdk.exporters.base import TOLERANCES, converter_for
from dfnet4_sdk.metrics import snr_db
from dfnet4_sdk.models import preset_names
from dfnet4_sdk.runtime import Runtime
from dfnet4_sdk.runtimes.coreml_backend import INTERPRETER, PREDICT, CoremlBackend

torch.set_num_threads(1)

from export_cache import CLIP, BundleCache
EXPECTED_EXECUTION = PREDICT if sys.platform == "darwin" else INTERPRETER
# (model, precision): DFN3 at every precision, each DfNet4 preset at fp32.
CASES = [("dfn3", p) for p in converter_for("coreml").precisions] + [(name, "fp32") for name in preset_names()]


def ms_per_frame(backend: CoremlBackend, frames: int = 30) -> float:
    """Time of the three graphs per frame (random inputs, states fed back)."""
    rng = np.random.default_rng(0)
    total = 0.0
    for g in backend.manifest.graphs:
        states = {s.input_name: np.full(s.shape, s.init_value, np.float32) for s in backend.manifest.states_of(g.name)}
        feeds = [{t.name: rng.standard_normal(t.shape).astype(np.float32) for t in g.inputs if t.role != "state_in"}
                 for _ in range(frames)]
        t0 = time.perf_counter()
        for feed in feeds:
            out = backend.run(g.name, feed | states)
            states = {s.input_name: out[s.output_name] for s in backend.manifest.states_of(g.name)}
        total += time.perf_counter() - t0
    return total * 1e3 / frames


@pytest.fixture(scope="module")
def bundles(shared_exports, dfn3) -> BundleCache:
    return BundleCache(shared_exports, dfn3, "coreml")


def test_every_precision_has_a_tolerance():
    missing = [p for p in converter_for("coreml").precisions if ("coreml", p) not in TOLERANCES]
    assert not missing, f"coreml precisions without a TOLERANCES entry: {missing}"


@pytest.mark.parametrize("name, precision", CASES, ids=[f"coreml-{p}-{n}" for n, p in CASES])
def test_export_validates_against_torch(bundles, name, precision):
    bundle = bundles.get(name, precision)
    v = bundle.manifest.validation
    tol = TOLERANCES[("coreml", precision)]
    worst = max((err, f"{g}.{t}") for g, errs in v["graph_rel_error"].items() for t, err in errs.items())
    files = [f for g in bundle.manifest.graphs for f in bundle.graph_path(g.name).rglob("*") if f.is_file()]
    size_kb = sum(f.stat().st_size for f in files) / 1024
    backend = CoremlBackend(bundle)
    execution = backend.execution
    print(f"\ncoreml-{precision}-{name} [{execution}]: worst graph error {worst[0]:.2e} ({worst[1]}), "
          f"audio SNR vs torch {v['audio_snr_db']:.1f} dB, graphs {size_kb:.0f} KiB")
    for g, errs in v["graph_rel_error"].items():
        print(f"  {g}: " + ", ".join(f"{t} {e:.1e}" for t, e in errs.items()))
    ops = sorted({op for i in backend.interpreters.values() for op in i.op_types})
    if ops:
        print(f"  MIL ops: {', '.join(ops)}")
    print(f"  {execution}: {ms_per_frame(backend):.2f} ms per frame (enc + erb_dec + df_dec)")
    assert execution == EXPECTED_EXECUTION
    assert worst[0] <= tol.graph_rel_error
    assert v["audio_snr_db"] >= tol.audio_snr_db
    assert bundle.manifest.backend == "coreml" and bundle.manifest.precision == precision


def test_names_map_and_metadata_travel_with_the_graphs(bundles):
    bundle = bundles.get("dfn3", "fp32")
    enc = bundle.manifest.graph("enc")
    assert enc.tensor_names["state_in.enc_emb_gru"] == "state_in__enc_emb_gru"
    assert enc.tensor_names["state_out.enc_emb_gru"] == "state_out__enc_emb_gru"
    assert "feat_erb" not in enc.tensor_names  # identifiers keep their name
    mlmodel = ct.models.MLModel(str(bundle.graph_path("enc")), skip_model_load=True)
    meta = mlmodel.user_defined_metadata
    assert meta["sample_rate_hz"] == "48000" and meta["hop_size_samples"] == "480"
    assert meta["graph"] == "enc" and meta["precision"] == "fp32" and meta["model_family"] == "dfn3"
    assert mlmodel.author == "dfnet4_sdk" and "enc" in mlmodel.short_description
    spec = mlmodel.get_spec()
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert [f.name for f in spec.description.input] == [enc.tensor_names.get(t.name, t.name) for t in enc.inputs]
    assert all(f.type.multiArrayType.dataType == float32 for f in (*spec.description.input, *spec.description.output))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precision_keeps_state_io_fp32(bundles, precision):
    from dfnet4_sdk.runtimes.mil_interpreter import load_program

    bundle = bundles.get("dfn3", precision)
    program = load_program(bundle.graph_path("erb_dec"))
    ops = [op.op_type for op in program.functions["main"].operations]
    fn = program.functions["main"]
    assert all(v.dtype.__name__ == "fp32" for v in (*fn.inputs.values(), *fn.outputs))
    assert "cast" in ops  # computes in fp16 inside
    if precision == "int8":
        assert "constexpr_affine_dequantize" in ops


@pytest.mark.parametrize("precision", converter_for("coreml").precisions)
def test_runtime_on_bundle_enhances_real_audio_like_torch(bundles, dfn3, precision):
    """Runtime(bundle_dir) with default stream options (gating, silence skipping) on 3 s of a
    real street recording, against the PyTorch runtime."""
    bundle = bundles.get("dfn3", precision)
    noisy = load_clip(CLIP, seconds=3.0, offset_s=4.0)
    reference = Runtime(dfn3, backend="torch").enhance(noisy, 48000)
    rt = Runtime(bundle.root)
    t0 = time.perf_counter()
    enhanced = rt.enhance(noisy, 48000)
    ms_per_hop = (time.perf_counter() - t0) * 1e3 / (len(noisy) / rt.hop_size_samples)
    snr = snr_db(reference, enhanced)
    print(f"\nRuntime(coreml-{precision}-dfn3) [{rt.backend.execution}] vs torch runtime: {snr:.1f} dB, "
          f"{ms_per_hop:.2f} ms per 10 ms hop")
    assert rt.backend.execution == EXPECTED_EXECUTION
    assert enhanced.shape == noisy.shape
    assert snr >= TOLERANCES[("coreml", precision)].audio_snr_db
    assert np.sum(enhanced**2) < np.sum(noisy**2)


def test_interpreter_rejects_an_op_it_does_not_implement():
    from coremltools.converters.mil import Builder as mb
    from dfnet4_sdk.runtimes.mil_interpreter import SUPPORTED_OPS, MilInterpreter

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4))], opset_version=ct.target.iOS16)
    def program(x):
        return mb.erf(x=mb.relu(x=x))

    assert "erf" not in SUPPORTED_OPS
    with pytest.raises(NotImplementedError, match="'erf'"):
        MilInterpreter(program)


def test_interpreter_matches_numpy_on_a_small_program():
    """conv (grouped, padded, strided), conv_transpose and the fp16 rounding on a toy program."""
    from coremltools.converters.mil import Builder as mb
    from dfnet4_sdk.runtimes.mil_interpreter import MilInterpreter

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    wt = rng.standard_normal((4, 1, 1, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 3, 8))], opset_version=ct.target.iOS16)
    def program(x):
        y = mb.conv(x=x, weight=w, pad_type="custom", pad=[2, 0, 1, 1], strides=[1, 2], groups=4)  # [1,4,3,4]
        z = mb.conv_transpose(x=y, weight=wt, strides=[1, 2], groups=4, pad_type="valid")  # [1,4,3,9]
        return mb.cast(x=mb.cast(x=z, dtype="fp16"), dtype="fp32")

    x = rng.standard_normal((1, 4, 3, 8)).astype(np.float32)
    out = MilInterpreter(program).run({"x": x})[program.functions["main"].outputs[0].name]
    xt = torch.from_numpy(x)
    F = torch.nn.functional
    ref = F.conv2d(F.pad(xt, (1, 1, 2, 0)), torch.from_numpy(w), stride=(1, 2), groups=4)
    ref = F.conv_transpose2d(ref, torch.from_numpy(wt), stride=(1, 2), groups=4).numpy()
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, out.astype(np.float16).astype(np.float32))  # the fp16 cast rounds
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-3)


def test_backend_refuses_a_bundle_for_another_target(bundles):
    bundle = bundles.get("dfn3", "fp32")
    foreign = dataclasses.replace(bundle, manifest=dataclasses.replace(bundle.manifest, backend="onnx"))
    with pytest.raises(BundleError, match="exported for 'onnx'"):
        CoremlBackend(foreign)


def test_backend_says_which_execution_ran(bundles):
    bundle = bundles.get("dfn3", "fp32")
    backend = CoremlBackend(bundle)
    print(f"\nCoremlBackend.execution on {sys.platform}: {backend.execution}")
    assert backend.execution == EXPECTED_EXECUTION
    if sys.platform != "darwin":
        with pytest.raises(BackendNotAvailableError, match="macOS"):
            CoremlBackend(bundle, execution=PREDICT)


def test_coreml_predict_matches_the_reference_interpreter(bundles):
    """On macOS: Core ML's own prediction against the interpreter on the golden fixture frames."""
    if sys.platform != "darwin":
        pytest.skip(f"Core ML predict needs macOS; on {sys.platform} only the MIL reference interpreter runs")
    bundle = bundles.get("dfn3", "fp32")
    predict, interp = CoremlBackend(bundle), CoremlBackend(bundle, execution=INTERPRETER)
    fixtures = bundle.load_fixtures()
    g = bundle.manifest.graph("enc")
    states = {s.input_name: np.full(s.shape, s.init_value, np.float32) for s in bundle.manifest.states_of("enc")}
    for i in range(10):
        feed = {t.name: fixtures[f"enc/{t.name}"][i] for t in g.inputs if t.role == "feature"} | states
        a, b = predict.run("enc", feed), interp.run("enc", feed)
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4)
        states = {s.input_name: b[s.output_name] for s in bundle.manifest.states_of("enc")}
