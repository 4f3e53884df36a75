"""int8 on the batched frame graph (exporters/quantize_streams.py, issue 17 item 3): the checks
behind not shipping it, on DfNet4Lite and real speech. Each stream's rows must not depend on the
other streams: the shipped int8 scheme quantizes activations per row and block, while batch-wide
scales (dynamic quantization) let one stream's level change another's output, which the check
must see."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from audio_data import load_clip

from dfnet4_sdk.exporters import quantize_streams as qs
from dfnet4_sdk.exporters.quantize import OnnxScheme, quantize_onnx

CLIP = "noisy_real/dns5_blind_street_48k.flac"
SLOW = pytest.mark.slow  # an ONNX export with the batched graph, then pools over it: about a minute here


def test_int8_export_with_streams_is_refused_with_the_measured_reason():
    from dfnet4_sdk.errors import ConfigError
    from dfnet4_sdk.exporters.base import converter_for
    from dfnet4_sdk.exporters.plan import plan_export
    from dfnet4_sdk.models import load_model

    with pytest.raises(ConfigError, match=r"int8 measured .* stream-hop .* 60 .*quantize_streams"):
        plan_export(load_model("dfnet4-lite-v1"), converter_for("onnx"), "int8", streams=True)


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """DfNet4Lite's fp32 ONNX bundle with ``frame_streams``, its int8 frame graphs and 3 rows of
    1.5 s (the clip, a shifted copy at -10 dB, the clip reversed at -6 dB)."""
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model

    root = tmp_path_factory.mktemp("int8_streams")
    model = load_model("dfnet4-lite-v1")
    bundle = export_bundle(model, converter_for("onnx"), root / "fp32", blocks=False, streams=True,
                           fixture_audio=load_clip(CLIP, seconds=1.0, offset_s=2.0))
    paths = qs.int8_frame_graphs(bundle, model, root)
    x = load_clip(CLIP, seconds=1.5)
    rows = np.stack([x, np.roll(x, 16000) * np.float32(0.3), x[::-1] * np.float32(0.5)])
    return bundle, paths, np.ascontiguousarray(rows, dtype=np.float32)


@SLOW
def test_int8_graphs_take_the_frame_graphs_scheme(lite):
    """Both graphs: the same MatMulNBits weights, the ERB filterbank and its inverse float."""
    _, paths, _ = lite
    for name in (qs.FRAME, qs.STREAMS):
        nodes = onnx.load(str(paths[name])).graph.node
        assert sum(n.op_type == "MatMulNBits" for n in nodes) == 18, name
        inits = {t.name: t for t in onnx.load(str(paths[name])).graph.initializer}
        erb = [n for n in nodes if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits
               and sorted(inits[n.input[1]].dims) == [32, 481]]
        assert len(erb) == 2, name


@SLOW
def test_int8_rows_are_independent_and_near_fp32(lite):
    bundle, paths, rows = lite
    report = qs.row_report(qs.files_backend(bundle), qs.files_backend(bundle, paths), rows)
    print(f"\nint8 frame_streams, DfNet4Lite: {report}")
    # Another stream 40 dB louder or quieter changes no sample of the others.
    assert report["other_row_louder"] == 0.0 and report["other_row_quieter"] <= 1e-6
    assert report["vs_fp32_db"] >= 35.0  # measured 44.7 dB on 3 s
    assert report["vs_single_stream_db"] >= 40.0  # measured 58.6 dB: below StreamPool's 60 dB, one reason not to ship


@SLOW
def test_batch_wide_activation_scales_are_caught(lite, tmp_path):
    """The same check on ``quantize_dynamic`` (one activation scale per tensor, over every row):
    a louder stream moves the others, which is why the check exists."""
    bundle, _, rows = lite
    paths = {name: tmp_path / f"{name}.dynamic.onnx" for name in (qs.FRAME, qs.STREAMS)}
    for name, path in paths.items():
        quantize_onnx(bundle.graph_path(name), path, OnnxScheme("dynamic"))
    report = qs.row_report(qs.files_backend(bundle), qs.files_backend(bundle, paths), rows)
    print(f"\ndynamic int8 frame_streams, DfNet4Lite: {report}")
    assert report["other_row_louder"] > 1e-4
