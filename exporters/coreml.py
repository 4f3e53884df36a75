"""Core ML: ``torch.export`` (decomposed to core ATen) -> ``coremltools.convert`` to an ML Program
(``.mlpackage``), fixed single-frame shapes, fp32 tensors at every input and output.

Why this path (coremltools 9.0, torch 2.13): ``torch.jit.trace`` converts ``enc`` but fails on
``erb_dec`` / ``df_dec`` (coremltools' ``int`` op on traced shape arithmetic), while
``torch.export(...).run_decompositions({})`` converts every graph of DFN3 and DfNet4.

Precisions: fp32 computes in fp32; fp16 computes in fp16 (coremltools casts the fp32 inputs
after entry and the outputs back before exit, so recurrent state crosses frames as fp32);
int8 stores weights of 2048+ elements as per-channel symmetric int8
(``constexpr_affine_dequantize``, iOS 16) and computes in ``INT8_COMPUTE_PRECISION``.

Core ML feature names must be identifiers, so ``state_in.enc_gru`` becomes
``state_in__enc_gru``; the converter returns that map for the manifest's ``tensor_names``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import coremltools as ct
import numpy as np
import torch
from torch import nn

from dfnet4_sdk.errors import ExportError
from dfnet4_sdk.exporters.plan import Capabilities
from dfnet4_sdk.manifest import GraphSpec

log = logging.getLogger(__name__)

DEPLOYMENT_TARGET = ct.target.iOS16  # ML Program with fp16 compute and int8 weight dequantization
# int8 weights with fp16 compute (what lets the Neural Engine run it). DFN3 on 1 s of the street
# clip: worst graph error 4.9e-2, audio 38.6 dB vs PyTorch; fp32 compute measured the same (4.3e-2, 38.0 dB).
INT8_COMPUTE_PRECISION = "fp16"
INT8_WEIGHT_THRESHOLD = 2048  # smaller tensors (biases, depthwise kernels, norms) stay float
_COMPUTE_PRECISION = {"fp32": ct.precision.FLOAT32, "fp16": ct.precision.FLOAT16}


def coreml_name(name: str) -> str:
    """Our tensor name as a Core ML feature name (an identifier): '.' -> '__', others -> '_'."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name.replace(".", "__"))
    return "_" + out if out[:1].isdigit() else out


class CoremlConverter:
    target = "coreml"
    suffix = ".mlpackage"
    capabilities = Capabilities(precisions=("fp32", "fp16", "int8"))  # the three component graphs only
    precisions = capabilities.precisions

    def convert(
        self,
        module: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        spec: GraphSpec,
        path: Path,
        precision: str,
        metadata: Mapping[str, str],
    ) -> dict[str, str]:
        names = _name_map(spec)
        compute = INT8_COMPUTE_PRECISION if precision == "int8" else precision
        with warnings.catch_warnings():
            # coremltools 9.0 warns thousands of times about its own deprecated op registry.
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="coremltools")
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec")
            exported = torch.export.export(module.eval(), tuple(example_inputs)).run_decompositions({})
            mlmodel = ct.convert(
                exported,
                convert_to="mlprogram",
                minimum_deployment_target=DEPLOYMENT_TARGET,
                inputs=[ct.TensorType(name=names[t.name], shape=t.shape, dtype=np.float32) for t in spec.inputs],
                outputs=[ct.TensorType(name=names[t.name], dtype=np.float32) for t in spec.outputs],
                compute_precision=_COMPUTE_PRECISION[compute],
                skip_model_load=True,  # compiling needs macOS; the saved package is all we need
            )
            if precision == "int8":
                mlmodel = _quantize_weights_int8(mlmodel)
        _describe(mlmodel, spec, names, precision, metadata)
        _check_io(mlmodel, spec, names)
        mlmodel.save(str(path))
        return {ours: theirs for ours, theirs in names.items() if ours != theirs}


def _name_map(spec: GraphSpec) -> dict[str, str]:
    names = {t.name: coreml_name(t.name) for t in (*spec.inputs, *spec.outputs)}
    if len(set(names.values())) != len(names):
        raise ExportError(f"graph {spec.name}: tensor names collide once made Core ML identifiers: {names}")
    return names


def _quantize_weights_int8(mlmodel: ct.models.MLModel) -> ct.models.MLModel:
    import coremltools.optimize as cto

    config = cto.coreml.OptimizationConfig(
        global_config=cto.coreml.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=INT8_WEIGHT_THRESHOLD
        )
    )
    return cto.coreml.linear_quantize_weights(mlmodel, config)


def _describe(mlmodel, spec: GraphSpec, names: Mapping[str, str], precision: str, metadata: Mapping[str, str]) -> None:
    from dfnet4_sdk import __version__

    mlmodel.short_description = (
        f"{metadata.get('model_family', '?')} {spec.name}: one {metadata.get('hop_size_samples', '?')}-sample hop "
        f"per call at {metadata.get('sample_rate_hz', '?')} Hz; state_in__* / state_out__* are recurrent state"
    )
    mlmodel.author = "dfnet4_sdk"
    mlmodel.version = __version__
    for key, value in {**metadata, "graph": spec.name, "precision": precision}.items():
        mlmodel.user_defined_metadata[key] = str(value)
    for t in spec.inputs:
        mlmodel.input_description[names[t.name]] = f"{t.name} {list(t.shape)} ({t.role})"
    for t in spec.outputs:
        mlmodel.output_description[names[t.name]] = f"{t.name} {list(t.shape)} ({t.role})"


def _check_io(mlmodel, spec: GraphSpec, names: Mapping[str, str]) -> None:
    desc = mlmodel.get_spec().description
    got_in, got_out = [f.name for f in desc.input], [f.name for f in desc.output]
    want_in, want_out = [names[t.name] for t in spec.inputs], [names[t.name] for t in spec.outputs]
    problems = []
    if got_in != want_in:
        problems.append(f"inputs {got_in} != {want_in}")
    if got_out != want_out:
        problems.append(f"outputs {got_out} != {want_out}")
    float32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    not_fp32 = [f.name for f in (*desc.input, *desc.output) if f.type.multiArrayType.dataType != float32]
    if not_fp32:
        problems.append(f"tensors {not_fp32} are not float32")
    if problems:
        raise ExportError(f"Core ML graph {spec.name}: " + "; ".join(problems))
