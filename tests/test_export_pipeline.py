"""The export pipeline's named passes: the plan follows what each converter declares, an ONNX
export writes exactly the planned graphs, the one validation function reports names, then
shapes, then values (every problem at once), and `dfsdk conformance` builds its cells in the
library. Needs no audio data: fixtures are the exporter's synthetic clip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from torch import nn

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.exporters import validate
from dfnet4_sdk.exporters.base import converter_for, export_bundle, synthetic_fixture_audio
from dfnet4_sdk.exporters.plan import Capabilities, plan_export
from dfnet4_sdk.exporters.validate import TOLERANCES, Tolerance, record_reference, validate_against_pytorch
from dfnet4_sdk.manifest import Manifest
from dfnet4_sdk.models import load_model
from dfnet4_sdk.models.manifest_builder import BLOCK_FRAMES
from dfnet4_sdk.runtimes.torch_backend import TorchBackend

COMPONENTS = ["enc", "erb_dec", "df_dec"]
BLOCKS = [f"{c}_block" for c in COMPONENTS]


@pytest.fixture(scope="module")
def lite():
    return load_model("dfnet4-lite")  # untrained preset, fixed seed: the same weights in every process


@pytest.fixture(scope="module")
def lite_bundle(lite, tmp_path_factory):
    return export_bundle(lite, converter_for("onnx"), tmp_path_factory.mktemp("pipeline") / "lite-onnx-fp32")


def _block_frames(plan) -> int | None:
    g = next((g for g in plan.manifest.graphs if g.kind == "block"), None)
    return None if g is None else g.inputs[0].shape[2]


def test_onnx_plan_follows_its_declared_capabilities(lite):
    onnx = converter_for("onnx")
    fp32 = plan_export(lite, onnx, "fp32")
    assert list(fp32.graph_names) == [*COMPONENTS, "frame", *BLOCKS]
    assert _block_frames(fp32) == BLOCK_FRAMES == 100
    assert fp32.optional_graphs == tuple(BLOCKS) and not fp32.calibrated and fp32.left_out == ()
    assert set(fp32.graph_precisions.values()) == {"fp32"}
    int8 = plan_export(lite, onnx, "int8")
    assert list(int8.graph_names) == [*COMPONENTS, "frame", *BLOCKS] and int8.calibrated
    assert set(int8.graph_precisions.values()) == {"int8"}
    fp16 = plan_export(lite, onnx, "fp16")
    assert list(fp16.graph_names) == COMPONENTS
    assert "frame graph: not at fp16 for onnx (the fused graph's features take log10" in fp16.left_out[0]
    assert fp16.left_out[1] == "block graphs: not at fp16 for onnx"
    # Asked for: block graphs become mandatory; refused: none, whatever the converter declares.
    assert plan_export(lite, onnx, "fp32", blocks=True).optional_graphs == ()
    assert list(plan_export(lite, onnx, "fp32", fused=False, blocks=False).graph_names) == COMPONENTS


def test_tflite_plan_leaves_block_graphs_out_of_models_with_a_gru(lite):
    pytest.importorskip("litert_torch", reason="the [tflite] extra (litert-torch) is not installed")
    tflite = converter_for("tflite")
    plan = plan_export(lite, tflite, "fp32")
    assert list(plan.graph_names) == [*COMPONENTS, "frame", *BLOCKS] and _block_frames(plan) == 25
    gru_model = load_model("dfnet4-dfn3conv-gru")
    assert any(isinstance(m, nn.GRU) for m in gru_model.modules())
    plan = plan_export(gru_model, tflite, "fp32")
    assert list(plan.graph_names) == [*COMPONENTS, "frame"]
    assert plan.left_out[0].startswith("block graphs: tflite with GRU (LiteRT lowers a GRU's sequence form")
    assert list(plan_export(lite, tflite, "int8").graph_names) == COMPONENTS


def test_a_plan_is_what_the_converter_declares_nothing_target_specific(lite, monkeypatch):
    """A converter the pipeline has never heard of gets exactly the graphs it declares."""

    class Declared:
        target, suffix = "somewhere", ".bin"

        def __init__(self, **capabilities):
            self.capabilities = Capabilities(precisions=("fp32", "fp16"), **capabilities)
            self.precisions = self.capabilities.precisions

        def convert(self, *args, **kwargs):
            raise AssertionError("a plan converts nothing")

    monkeypatch.setitem(TOLERANCES, ("somewhere", "fp32"), Tolerance(1e-4, 60.0))
    monkeypatch.setitem(TOLERANCES, ("somewhere", "fp16"), Tolerance(3e-2, 35.0))
    declared = Declared(frame_graph=("fp16",), block_frames={"fp32": 7}, why={"frame_graph": "measured slower"})
    plan = plan_export(lite, declared, "fp32")
    assert list(plan.graph_names) == [*COMPONENTS, *BLOCKS] and _block_frames(plan) == 7
    assert plan.left_out == ("frame graph: not at fp32 for somewhere (measured slower)",)
    assert list(plan_export(lite, declared, "fp16").graph_names) == [*COMPONENTS, "frame"]
    no_mamba_blocks = Declared(block_frames={"fp32": 7}, no_block_graphs_with=(type(lite.components["enc"]),))
    plan = plan_export(lite, no_mamba_blocks, "fp32")
    assert list(plan.graph_names) == COMPONENTS and plan.left_out[1] == "block graphs: somewhere with Encoder4"
    with pytest.raises(ConfigError, match=r"somewhere export supports precisions \['fp32', 'fp16'\], not 'int8'"):
        plan_export(lite, declared, "int8")
    monkeypatch.delitem(TOLERANCES, ("somewhere", "fp16"))
    with pytest.raises(ConfigError, match="no tolerance is declared for somewhere fp16"):
        plan_export(lite, declared, "fp16")


def test_onnx_export_writes_exactly_the_planned_graphs(lite, lite_bundle):
    plan = plan_export(lite, converter_for("onnx"), "fp32")
    m = lite_bundle.manifest
    # schema unchanged, all written (the front-end tables go inside `dsp`)
    assert set(m.to_dict()) == {f.name for f in dataclasses.fields(Manifest)} - {"tables"}
    assert {"erb_widths", "norm_alpha", "erb_norm_init", "spec_norm_init", "window"} <= set(m.to_dict()["dsp"])
    bare = [dataclasses.replace(g, file=None, sha256=None, tensor_names={}) for g in m.graphs]
    assert bare == list(plan.manifest.graphs)  # names, kinds, tensors and precision, in order
    assert [g.file for g in m.graphs] == [f"{n}.onnx" for n in plan.graph_names]
    assert m.states == plan.manifest.states and m.dsp == plan.manifest.dsp and m.precision == "fp32"
    v = m.validation
    assert set(v) == {"graph_rel_error", "audio_snr_db", "tolerance"}  # no note: every graph kept
    assert list(v["graph_rel_error"]) == [*COMPONENTS, "frame"]  # blocks: checked end to end
    assert max(e for errs in v["graph_rel_error"].values() for e in errs.values()) <= 1e-4
    assert v["audio_snr_db"] >= 60.0 and v["tolerance"] == {"graph_rel_error": 1e-4, "audio_snr_db": 60.0}
    assert m.fixtures["source"].startswith("synthetic voiced signal")


class Faulty:
    """The PyTorch backend with one fault per graph: an output renamed, a shape changed, values
    shifted (the bugs a converter can have), in the opposite order of the graphs."""

    def __init__(self, backend, faults):
        self.backend, self.faults = backend, faults
        self.name, self.manifest = backend.name, backend.manifest

    def run(self, graph, inputs):
        out = dict(self.backend.run(graph, inputs))
        kind = self.faults.get(graph)
        first = next(t.name for t in self.manifest.graph(graph).outputs if t.role != "state_out")
        if kind == "name":
            out["renamed"] = out.pop(first)
        elif kind == "shape":
            out[first] = out[first].reshape(-1)
        elif kind == "values":
            out[first] = out[first] + 0.5 * np.abs(out[first]).max() + 0.1
        return out


@pytest.fixture(scope="module")
def reference(lite):
    audio = synthetic_fixture_audio(lite.dsp.sample_rate_hz, seconds=0.3)
    recorder, enhanced = record_reference(lite, audio)
    return recorder, audio, enhanced


def test_validation_reports_names_then_shapes_then_values_all_at_once(lite, reference):
    recorder, audio, enhanced = reference
    tol = TOLERANCES[("onnx", "fp32")]
    clean = validate_against_pytorch(TorchBackend(lite), recorder, audio, enhanced, tol)
    snr = clean.path_snr_db
    assert clean.passed and set(snr) == {"components", "frame", "blocks"} and snr["components"] == np.inf
    assert clean.audio_snr_db == min(snr.values()) > 100.0  # the fused and block forms: float rounding only
    assert max(e for errs in clean.graph_rel_error.values() for e in errs.values()) == 0.0

    faulty = Faulty(TorchBackend(lite), {"enc": "values", "erb_dec": "shape", "df_dec": "name"})
    v = validate_against_pytorch(faulty, recorder, audio, enhanced, tol)
    assert len(v.problems) == 4, v.problems
    assert v.problems[0].startswith("df_dec: outputs missing [") and "unexpected ['renamed']" in v.problems[0]
    assert v.problems[1].startswith("erb_dec.") and ", spec (" in v.problems[1]
    assert v.problems[2].startswith("enc.") and "relative error" in v.problems[2] and "> 1e-04" in v.problems[2]
    assert v.problems[3] == "enhanced audio not compared: a graph does not match its spec"


def test_block_graphs_that_fail_are_left_out_only_when_optional(lite, reference):
    recorder, audio, enhanced = reference
    tol = TOLERANCES[("onnx", "fp32")]
    broken_blocks = Faulty(TorchBackend(lite), {b: "values" for b in BLOCKS})
    v = validate_against_pytorch(broken_blocks, recorder, audio, enhanced, tol, optional_graphs=tuple(BLOCKS))
    assert v.passed and v.left_out == tuple(BLOCKS)
    assert v.note.startswith("block graphs left out: their offline path gave") and v.path_snr_db["blocks"] < 60.0
    kept = min(v.path_snr_db["components"], v.path_snr_db["frame"])
    assert v.audio_snr_db == kept > 100.0 and v.to_manifest()["note"] == v.note
    v = validate_against_pytorch(broken_blocks, recorder, audio, enhanced, tol)
    assert not v.passed and v.left_out == () and len(v.problems) == 1
    assert v.problems[0].startswith("enhanced audio SNR vs PyTorch") and v.problems[0].endswith("(blocks path)")


def test_conformance_cells_are_built_by_the_library(lite_bundle):
    from dfnet4_sdk import conformance as conf

    cells, bundle = conf.cells_for("dfnet4-lite", targets=("onnx",))
    assert bundle is None and cells == [("dfnet4-lite", "onnx", p) for p in ("fp32", "fp16", "int8")]
    cells, bundle = conf.cells_for(str(lite_bundle.root))
    assert cells == [("dfnet4-lite", "onnx", "fp32")] and bundle.manifest == lite_bundle.manifest
    with pytest.raises(ConfigError, match=r"unknown --target \['tf'\]; choose from \['coreml', 'onnx', 'tflite'\]"):
        conf.cells_for("dfnet4-lite", targets=("tf",))
    audio = np.stack([synthetic_fixture_audio(16000, seconds=6.0)] * 2, axis=1)  # [N, 2] at 16 kHz
    clip, fixture = conf.cell_audio(audio, 16000, 48000, seconds=1.5)
    assert clip.shape == (72000,) and fixture.shape == (48000,)


def test_conformance_cell_uses_the_exporters_validation(lite_bundle):
    """A cell over the exported bundle measures what the exporter measured on the same clip."""
    from dfnet4_sdk import conformance as conf

    audio = synthetic_fixture_audio(48000)  # the exporter's own fixture clip
    r = conf.run_cell("dfnet4-lite", "onnx", "fp32", audio, audio, bundle=lite_bundle)
    assert r.status == "pass" and r.problems == [], r.problems
    v = lite_bundle.manifest.validation
    assert r.graph_rel_error == {f"{g}.{k}": e for g, errs in v["graph_rel_error"].items() for k, e in errs.items()}
    assert r.audio_snr_db == pytest.approx(v["audio_snr_db"], abs=1e-6)
    assert r.summary_line().startswith("onnx-fp32-dfnet4-lite") and " pass " in r.summary_line()


def test_validate_module_is_the_only_home_of_the_tolerances():
    from dfnet4_sdk.exporters import base

    assert base.TOLERANCES is validate.TOLERANCES
