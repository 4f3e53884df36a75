"""Applying an ONNX int8 scheme to a float graph (``quantize_onnx``); the schemes are described
in ``exporters/quantize.py``, which chooses one per graph."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEMES = ("nbits", "weights", "static", "dynamic")
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Weights smaller than this stay float (biases, depthwise kernels, the lsnr head's 512 weights):
# they cost no size and carry the least redundancy.
MIN_QUANT_WEIGHTS = 1024
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
BLOCK_SIZE_DEFAULT = 64  # MatMulNBits inputs per scale (32 and 128 measured no better on DFN3)


@dataclass(frozen=True)
class OnnxScheme:
    """How one ONNX graph is quantized; ``describe`` goes into the manifest."""

    kind: str = "nbits"  # one of SCHEMES
    block_size: int = BLOCK_SIZE_DEFAULT  # nbits only
    accuracy_level: int = 4  # nbits: 4 = int8 activations per block, 0 = float compute
    other_weights: bool = False  # nbits: also store the other weights as int8 + DequantizeLinear
    calibration: str = "minmax"  # static only
    exclude: tuple[str, ...] = ()  # nodes left float
    activation_type: str = "QInt8"

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"scheme": self.kind}
        if self.kind == "nbits":
            d["weights"] = (f"Gemm/MatMul: MatMulNBits 8-bit symmetric, block {self.block_size}; GRU/LSTM/RNN ops "
                            "(block graphs): the same int8 grid, dequantized at load; other weights: "
                            + (f"int8 per-channel DequantizeLinear (>= {MIN_QUANT_WEIGHTS} elements)" if self.other_weights
                               else "float32 (conv, grouped linear: a DequantizeLinear per frame costs more than it saves)"))
            d["activations"] = ("int8 per block, quantized on the fly (accuracy_level 4)" if self.accuracy_level == 4
                                else f"float (accuracy_level {self.accuracy_level})")
            if self.exclude:
                d["float_nodes"] = list(self.exclude)
        elif self.kind == "weights":
            d["weights"] = f"int8 symmetric per-channel ({'/'.join(WEIGHT_OPS)}, >= {MIN_QUANT_WEIGHTS} elements)"
            d["activations"] = "float32"
        elif self.kind == "static":
            d.update(weights="int8 symmetric per-channel", activations=f"{self.activation_type} per-tensor, "
                     f"{self.calibration} calibration", float_nodes=list(self.exclude))
        else:
            d.update(weights="int8 per-tensor (MatMul/Gemm)", activations="uint8 dynamic per-tensor")
        d["state_io"] = "float32"
        return d


def quantize_onnx(src: Path, dst: Path, scheme: OnnxScheme, calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
                  cache: Path | None = None) -> None:
    """Write ``src`` quantized with ``scheme`` to ``dst`` (static: ``cache`` keeps the
    calibrated ranges, so variants that differ only in ``exclude`` calibrate once)."""
    import onnx

    if scheme.kind == "nbits":
        model = matmul_nbits_int8(onnx.load(str(src)), scheme.block_size, scheme.accuracy_level, scheme.exclude)
        model = recurrent_weights_int8(model, scheme.block_size, scheme.exclude)
        onnx.save(weight_only_int8(model) if scheme.other_weights else model, str(dst))
    elif scheme.kind == "weights":
        onnx.save(weight_only_int8(onnx.load(str(src))), str(dst))
    elif scheme.kind == "dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    elif scheme.kind == "static":
        if not calibration:
            raise ValueError("static int8 needs calibration frames")
        _quantize_static(src, dst, scheme, calibration, cache)
    else:
        raise ValueError(f"unknown ONNX int8 scheme {scheme.kind!r}; choose one of {SCHEMES}")


def weight_only_int8(model):
    """Replace each large MatMul / Gemm / Conv weight initializer by int8 + per-channel scale
    + DequantizeLinear (symmetric, zero point 0): a quarter of the bytes, float compute."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, done = [], {}
    for node in graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            name = node.input[1]
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            if w.size >= MIN_QUANT_WEIGHTS and name not in done:
                axis = _channel_axis(node, w)
                q, scale = symmetric_int8(w, axis)
                qname, sname, zname = f"{name}_int8", f"{name}_scale", f"{name}_zero"
                graph.initializer.extend([
                    numpy_helper.from_array(q, qname), numpy_helper.from_array(scale, sname),
                    numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), zname),
                ])
                new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [f"{name}_dq"],
                                                  name=f"{name}_DequantizeLinear", axis=axis))
                done[name] = f"{name}_dq"
            if name in done:
                node.input[1] = done[name]
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    for name in set(done) - still_used:
        graph.initializer.remove(inits[name])
    onnx.checker.check_model(model)
    return model


def matmul_nbits_int8(model, block_size: int = BLOCK_SIZE_DEFAULT, accuracy_level: int = 4,
                      skip: Sequence[str] = ()):
    """Gemm (alpha = beta = 1, no transA) and MatMul with a 2-D weight initializer ->
    ``com.microsoft.MatMulNBits`` with bits 8, symmetric block-wise scales along K; nodes named
    in ``skip`` stay float."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, dropped = [], set()
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        ok = (weight is not None and node.name not in skip and len(weight.dims) == 2 and np.prod(weight.dims) >= MIN_QUANT_WEIGHTS
              and (node.op_type == "MatMul" or (node.op_type == "Gemm" and not attrs.get("transA", 0)
                                                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0)))
        if not ok:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(weight).astype(np.float32)
        if node.op_type == "Gemm" and attrs.get("transB", 0):
            w = w.T
        w = np.ascontiguousarray(w)  # [K, N]
        bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
        if bias is not None and (bias not in inits or numpy_helper.to_array(inits[bias]).size != w.shape[1]):
            new_nodes.append(node)  # broadcast bias forms are left alone
            continue
        packed, scales = pack_int8_blocks(w, block_size)
        base = f"{node.name or node.output[0]}".replace("/", "_").strip("_")
        graph.initializer.extend([numpy_helper.from_array(packed, f"{base}_q8"),
                                  numpy_helper.from_array(scales, f"{base}_scales")])
        inputs = [node.input[0], f"{base}_q8", f"{base}_scales"] + (["", "", bias] if bias else [])
        extra = {"accuracy_level": accuracy_level} if accuracy_level else {}
        new_nodes.append(helper.make_node("MatMulNBits", inputs, list(node.output), name=f"{base}_MatMulNBits",
                                          domain="com.microsoft", K=w.shape[0], N=w.shape[1], bits=8,
                                          block_size=block_size, **extra))
        dropped.add(weight.name)
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {i for n in graph.node for i in n.input}
    for name in dropped - still_used:
        graph.initializer.remove(inits[name])
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


RECURRENT_OPS = ("GRU", "LSTM", "RNN")


def recurrent_weights_int8(model, block_size: int = BLOCK_SIZE_DEFAULT, skip: Sequence[str] = ()):
    """The weights ``W`` and ``R`` of ONNX GRU / LSTM / RNN nodes (the sequence form of a
    recurrent layer, in the offline block graphs) stored as int8 in MatMulNBits' grid
    (``pack_int8_blocks``: per output row, symmetric scales per ``block_size`` inputs) and
    dequantized by constant ops that onnxruntime folds at load. The step graphs compute the
    same layer as Gemm -> MatMulNBits; each row is quantized on its own, so the gate order of
    the ONNX op does not matter and both forms use the same int8 weights. Compute stays
    float: ONNX has no int8 recurrent op."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    prefix, dropped = [], set()
    done: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in RECURRENT_OPS or node.name in skip:
            continue
        for slot in (1, 2):  # W [dirs, gates*H, K], R [dirs, gates*H, H]
            name = node.input[slot] if len(node.input) > slot else ""
            if name in done:
                node.input[slot] = done[name]
                continue
            if name not in inits or np.prod(inits[name].dims) < MIN_QUANT_WEIGHTS:
                continue
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            dirs, rows, k = w.shape
            packed = [pack_int8_blocks(np.ascontiguousarray(w[d].T), block_size) for d in range(dirs)]
            q = np.stack([(p.astype(np.int16) - 128).astype(np.int8) for p, _ in packed])  # [dirs, rows, blocks, block]
            scales = np.stack([sc.reshape(rows, -1, 1) for _, sc in packed])  # [dirs, rows, blocks, 1]
            base = name.replace("/", "_").strip("_")
            graph.initializer.extend([
                numpy_helper.from_array(q, f"{base}_q8"), numpy_helper.from_array(scales, f"{base}_scales"),
                numpy_helper.from_array(np.array([dirs, rows, -1], np.int64), f"{base}_shape"),
                numpy_helper.from_array(np.array([0], np.int64), f"{base}_start"),
                numpy_helper.from_array(np.array([k], np.int64), f"{base}_end"),
                numpy_helper.from_array(np.array([2], np.int64), f"{base}_axis"),
            ])
            prefix += [
                helper.make_node("Cast", [f"{base}_q8"], [f"{base}_qf"], name=f"{base}_Cast", to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{base}_qf", f"{base}_scales"], [f"{base}_blocks"], name=f"{base}_Scale"),
                helper.make_node("Reshape", [f"{base}_blocks", f"{base}_shape"], [f"{base}_padded"], name=f"{base}_Reshape"),
                helper.make_node("Slice", [f"{base}_padded", f"{base}_start", f"{base}_end", f"{base}_axis"],
                                 [f"{base}_dq"], name=f"{base}_Unpad"),
            ]
            done[name] = f"{base}_dq"
            node.input[slot] = done[name]
            dropped.add(name)
    if prefix:
        nodes = prefix + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        still_used = {i for n in graph.node for i in n.input}
        for name in dropped - still_used:
            graph.initializer.remove(inits[name])
    return model


def pack_int8_blocks(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' 8-bit layout of a [K, N] weight: uint8 [N, K/block, block] holding
    q + 128 (its default zero point), q = round(w / s) in [-127, 127], s = max|block| / 127,
    scales [N * K/block]. (onnxruntime's own quantize_matmul_8bits uses max / 128 and clips the
    positive maximum; this grid is the one QAT trains on, see training/qat.py.)"""
    k, n = w.shape
    pad = (-k) % block_size
    blocks = np.pad(w, ((0, pad), (0, 0))).T.reshape(n, -1, block_size)  # [N, blocks, block]
    scales = np.maximum(np.abs(blocks).max(axis=-1) / 127.0, 1e-12).astype(np.float32)
    q = np.clip(np.round(blocks / scales[..., None]), -127, 127).astype(np.int16)
    return (q + 128).astype(np.uint8), scales.reshape(-1)


def _channel_axis(node, w: np.ndarray) -> int:
    """The output-channel axis of a weight: Conv [O, I, ...] -> 0; ConvTranspose [I, O/g, ...]
    -> 1; Gemm -> 0 with transB else 1; MatMul [..., K, N] -> last."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return w.ndim - 1


def symmetric_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per channel along ``axis``: q = round(w / s), s = max|w| / 127."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.max(np.abs(w), axis=reduce) / 127.0, 1e-12).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


class _FramesReader:
    def __init__(self, frames: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]):
        self._it = iter([{k: np.ascontiguousarray(f[k], dtype=np.float32) for k in names} for f in frames])

    def get_next(self):
        return next(self._it, None)


def _quantize_static(src: Path, dst: Path, scheme: OnnxScheme, frames, cache: Path | None = None) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    names = [i.name for i in onnx.load(str(src), load_external_data=False).graph.input]
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
              "entropy": CalibrationMethod.Entropy}[scheme.calibration]
    with tempfile.TemporaryDirectory() as tmp:
        quantize_static(
            str(src), str(dst), _FramesReader(frames, names),
            quant_format=QuantFormat.QDQ, per_channel=True,
            weight_type=QuantType.QInt8, activation_type=getattr(QuantType, scheme.activation_type),
            calibrate_method=method, nodes_to_exclude=list(scheme.exclude),
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                           "QDQOpTypePerChannelSupportToAxis": {"MatMul": -1},
                           "CalibTensorRangeSymmetric": False, "CalibPercentile": 99.99,
                           "CalibMovingAverage": False},
            calibration_providers=["CPUExecutionProvider"],
            calibration_cache_path=None if cache is None else str(cache),
        )
        del tmp
