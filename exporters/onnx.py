"""ONNX: TorchScript-based ``torch.onnx.export`` (opset 17, fixed single-frame shapes),
onnxslim clean-up, ``onnx.checker``, DSP facts in ``metadata_props``.

The dynamo exporter also works with torch 2.13 but names outputs by node and splits weights
into ``.onnx.data``; the TorchScript path keeps our tensor names and one file per graph.
"""

from __future__ import annotations

import logging
from dataclasses import replace
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from dfnet4_sdk.exporters.plan import Capabilities
from dfnet4_sdk.exporters.streams import dynamic_axes
from dfnet4_sdk.manifest import GraphSpec
from dfnet4_sdk.models.manifest_builder import BLOCK_FRAMES

log = logging.getLogger(__name__)
OPSET = 17


class OnnxConverter:
    """int8 (see ``exporters/quantize.py``): each graph's Gemm / MatMul weights become 8-bit
    ``MatMulNBits`` (block-wise symmetric, int8 activations per block at run time), other ops
    and every state stay float; with calibration frames the per-graph variant is chosen by
    measurement (``choose_onnx_int8``) and recorded in ``quantization``. A block graph (offline
    path) takes the scheme chosen for its component's step graph; its GRU ops' weights are
    stored in the same int8 grid (``quantize.recurrent_weights_int8``)."""

    target = "onnx"
    suffix = ".onnx"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"),
        frame_graph=("fp32", "int8"),
        # The batched frame graph (StreamPool) with a dynamic stream axis; fp32 only: int8 measured
        # no cheaper and not row-equal to its Runtime (exporters/quantize_streams.py).
        frame_streams={"fp32": -1},
        # onnxruntime runs the offline path fastest at 100 frames per call (measured end to end,
        # `enhance`, DfNet4Lite, 2-core x86).
        block_frames={"fp32": BLOCK_FRAMES, "int8": BLOCK_FRAMES},
        calibrated=("int8",),
        why={
            "frame_streams": "fp32 only: int8 measured 1.0-1.16x fp32's cost per stream-hop at 8-128 streams (AVX2, "
                             "no VNNI) and its rows 44-59 dB from a Runtime on the same bundle where StreamPool "
                             "promises 60 (python -m dfnet4_sdk.exporters.quantize_streams)",
            "frame_graph": "the fused graph's features take log10 of band powers near 1e-10, which fp16 cannot "
                           "represent; int8 keeps its DSP matmuls (ERB filterbank and inverse) float",
        },
    )
    precisions = capabilities.precisions

    def __init__(self) -> None:
        self.quantization: dict[str, dict[str, Any]] = {}  # graph -> scheme and measurements

    def convert(
        self,
        module: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        spec: GraphSpec,
        path: Path,
        precision: str,
        metadata: Mapping[str, str],
        calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
    ) -> dict[str, str]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False is deprecated, still the better path
            torch.onnx.export(
                module,
                example_inputs,
                str(path),
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                opset_version=OPSET,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes=dynamic_axes(spec),  # frame_streams: any number of streams
            )
        model = onnx.load(str(path))
        model = _slim(model)
        if precision == "fp16":
            model = _to_fp16(model, spec)
        for key, value in {**metadata, "graph": spec.name, "precision": precision}.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(path))
        if precision == "int8":
            keep_float = _dsp_nodes(model, module) if spec.kind == "frame" else ()
            # A block graph (offline path) takes the scheme measured for its component's step graph.
            like = self.quantization.get(spec.name.removesuffix("_block")) if spec.kind == "block" else None
            self.quantization[spec.name] = _quantize_int8(path, spec, calibration, keep_float, like)
        _check_io_names(path, spec)
        return {}


def _slim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    try:
        return onnxslim.slim(model)
    except Exception as e:  # onnxslim is an optimisation; the unslimmed graph is valid
        log.warning("onnxslim failed (%s); keeping the unslimmed graph", e)
        return model


def _to_fp16(model: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """fp16 weights and activations with fp32 graph inputs/outputs, so states stay fp32 between
    frames and the manifest's dtypes do not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return _toposort(model)  # the converter appends its input casts at the end of the node list


def _toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = model.graph
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("ONNX graph has a cycle or a dangling input")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        pending = [n for n in pending if all(n is not r for r in ready)]
    del graph.node[:]
    graph.node.extend(ordered)
    return model


def _dsp_nodes(model: onnx.ModelProto, module: nn.Module) -> tuple[str, ...]:
    """Nodes of a fused frame graph whose weight is one of its DSP constants (the ERB filterbank
    and its inverse, in either orientation): int8 would round the band weights of the features
    and the mask, which are exact in libDF. Found by value, since tracing renames them."""
    from onnx import numpy_helper

    constants = [b.detach().numpy() for name, b in module.named_buffers() if name.rsplit(".", 1)[-1] in ("erb_fb", "erb_inv")]
    inits = {t.name: t for t in model.graph.initializer}
    dsp_inits = set()
    for name, t in inits.items():
        if len(t.dims) == 2 and any(sorted(t.dims) == sorted(c.shape) for c in constants):
            w = numpy_helper.to_array(t)
            if any(w.shape == c.shape and np.array_equal(w, c) or w.shape == c.T.shape and np.array_equal(w, c.T)
                   for c in constants):
                dsp_inits.add(name)
    return tuple(n.name for n in model.graph.node if any(i in dsp_inits for i in n.input[1:]))


def _quantize_int8(path: Path, spec: GraphSpec, calibration, keep_float: tuple[str, ...] = (),
                   like: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Quantize the float graph at ``path`` in place (its ``metadata_props`` gain the scheme);
    nodes named in ``keep_float`` stay float; ``like``: the recorded choice of another graph
    (a block graph's component), whose scheme is used. Return what the manifest records."""
    import json

    from dfnet4_sdk.exporters.quantize import ONNX_CANDIDATES, choose_onnx_int8, quantize_onnx
    from dfnet4_sdk.exporters.validate import TOLERANCES

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    try:
        same = next((c for c in ONNX_CANDIDATES if like and all(like.get(k) == v for k, v in c.describe().items())), None)
        if same is not None:
            quantize_onnx(tmp, path, replace(same, exclude=keep_float))
            info = {**same.describe(), "measured_on": "the scheme chosen for its step graph; validated at export "
                    "(offline path audio SNR)"}
        elif calibration is not None and len(calibration) >= 20 and not keep_float:
            info = choose_onnx_int8(tmp, path, calibration, spec, TOLERANCES[("onnx", "int8")].graph_rel_error)
        else:
            # No calibration frames (the fused frame graph has none: they are recorded per
            # component): the default scheme, checked at export by the enhanced audio.
            scheme = replace(ONNX_CANDIDATES[0], exclude=keep_float)
            quantize_onnx(tmp, path, scheme)
            info = {**scheme.describe(), "measured_on": "nothing (no calibration frames); validated at export only"}
        model = onnx.load(str(path))
        entry = model.metadata_props.add()
        entry.key, entry.value = "quantization", json.dumps({k: v for k, v in info.items() if k != "candidates"})
        onnx.save(model, str(path))
        return info
    finally:
        tmp.unlink(missing_ok=True)


def _check_io_names(path: Path, spec: GraphSpec) -> None:
    model = onnx.load(str(path), load_external_data=False)
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    problems = []
    if sorted(got_in) != sorted(spec.input_names):
        problems.append(f"inputs {got_in} != {list(spec.input_names)}")
    if sorted(got_out) != sorted(spec.output_names):
        problems.append(f"outputs {got_out} != {list(spec.output_names)}")
    if problems:
        from dfnet4_sdk.errors import ExportError

        raise ExportError(f"ONNX graph {spec.name}: " + "; ".join(problems))
