"""Quantization shared by the targets: calibration from real audio, the ONNX int8 schemes,
per-layer sensitivity and the greedy choice of what stays float.

Calibration streams real noisy speech through the PyTorch model (every stage on) and records
every graph call, so each graph sees the inputs it gets in deployment, recurrent states
included (``calibration_frames``). A scheme is then measured the way the exporter validates:
each graph over held-out frames with its own states fed back, worst output error relative to
the output's range (``graph_error``), and its latency (``frame_latency_ms``); the audio-level
comparison of every scheme is ``quantize_report.py``.

ONNX schemes (``quantize_onnx``):
    nbits:    Gemm and 2-D MatMul as ORT's ``MatMulNBits`` (com.microsoft) with 8-bit symmetric
              block-wise weights (``BLOCK_SIZE_DEFAULT`` inputs per scale); ``accuracy_level`` 4
              lets the kernel quantize the activation row to int8 per block on the fly (int8 dot
              products); the other weights float (``other_weights``: as in ``weights``). States,
              I/O and every other op float. The shipped int8 (``choose_onnx_int8``).
    weights:  int8 symmetric per-channel weights of MatMul / Gemm / Conv stored as
              DequantizeLinear on initializers; activations, states and compute float.
    static:   QDQ from ``onnxruntime.quantization.quantize_static``: the same weights, plus
              calibrated int8 activations; ``exclude`` lists nodes left float.
    dynamic:  ``quantize_dynamic`` of MatMul / Gemm (the old default; misses the tolerance).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SCHEMES = ("nbits", "weights", "static", "dynamic")
WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose")
# Weights smaller than this stay float (biases, depthwise kernels, the lsnr head's 512 weights):
# they cost no size and carry the least redundancy.
MIN_QUANT_WEIGHTS = 1024
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
BLOCK_SIZE_DEFAULT = 64  # MatMulNBits inputs per scale (32 and 128 measured no better on DFN3)


# -- calibration data ---------------------------------------------------------------------------

def calibration_audio(data_dir: str | Path, sample_rate: int, seconds: float = 24.0, seed: int = 0) -> list[np.ndarray]:
    """Real noisy speech for calibration, ``seconds`` in all. From a folder laid out as
    ../shared/data: ``noisy_real/gtcrn_mix_16k.flac`` plus speech + noise mixtures (speech from
    ``speech/synthetic``, real noise from ``noise``, SNR 0..15 dB); ``dev_eval`` and the street
    clip the conformance suite streams are never read. Any other folder: its audio files as is."""
    from dfnet4_sdk.audio_io import read_audio, resample

    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration folder {root} does not exist")

    def load(path: Path) -> np.ndarray:
        audio, sr = read_audio(path)
        return resample(audio.mean(axis=1), sr, sample_rate).astype(np.float32)

    rng = np.random.default_rng(seed)
    speech_dir, noise_dir = root / "speech" / "synthetic", root / "noise"
    clips: list[np.ndarray] = []
    if speech_dir.is_dir() and noise_dir.is_dir():
        speech = sorted(speech_dir.glob("*.flac"))
        noise = sorted(noise_dir.glob("*.flac"))
        real = root / "noisy_real" / "gtcrn_mix_16k.flac"
        if real.is_file():
            clips.append(load(real))
        while sum(len(c) for c in clips) < seconds * sample_rate:
            s = load(speech[rng.integers(len(speech))])
            n = load(noise[rng.integers(len(noise))])
            n = np.tile(n, math.ceil(len(s) / len(n)))[: len(s)]
            snr = rng.uniform(0.0, 15.0)
            gain = np.sqrt(np.sum(s**2) / (np.sum(n**2) * 10 ** (snr / 10) + 1e-12))
            clips.append((s + gain * n).astype(np.float32))
    else:
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg", ".mp3"))
        if not files:
            raise FileNotFoundError(f"no audio files (.wav/.flac/.ogg/.mp3) in calibration folder {root}")
        for p in files:
            clips.append(load(p))
            if sum(len(c) for c in clips) >= seconds * sample_rate:
                break
    total, out = int(seconds * sample_rate), []
    for c in clips:
        take = min(len(c), total - sum(len(o) for o in out))
        if take <= 0:
            break
        out.append(c[:take])
    return out


def calibration_frames(model, clips: Iterable[np.ndarray]) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component graph's per-frame inputs (features, intermediates, states) while the
    clips stream through the PyTorch model, each clip from fresh state."""
    from dfnet4_sdk.exporters.base import ALL_STAGES, RecordingBackend
    from dfnet4_sdk.runtimes.torch_backend import TorchBackend

    from dfnet4_sdk.stream import EnhancementStream

    recorder = RecordingBackend(TorchBackend(model.eval()))
    for clip in clips:
        stream = EnhancementStream(recorder, ALL_STAGES, fused=False)
        stream.process(clip)
        stream.flush()
    return {g: [inputs for inputs, _ in calls] for g, calls in recorder.calls.items() if calls}


# -- ONNX schemes -------------------------------------------------------------------------------

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


# -- measuring ----------------------------------------------------------------------------------

def session(path: str | Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class FilesBackend:
    """An onnxruntime backend over loose graph files (manifest of the float bundle), so a
    candidate scheme is measured without writing a bundle."""

    name = "onnx"

    def __init__(self, manifest, paths: Mapping[str, Path]):
        self.manifest = manifest
        self._sessions = {g: session(p) for g, p in paths.items()}
        self._inputs = {g.name: g.input_names for g in manifest.graphs}
        self._outputs = {g.name: list(g.output_names) for g in manifest.graphs}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self._inputs[graph]}
        return dict(zip(self._outputs[graph], self._sessions[graph].run(self._outputs[graph], feed)))


def graph_error(sess, spec, states0: Mapping[str, np.ndarray], calls) -> dict[str, float]:
    """One graph over recorded calls, its own states fed back: each output's worst error
    relative to the reference's range."""
    state_pairs = [(t.name, t.name.replace("state_in.", "state_out.", 1)) for t in spec.inputs if t.role == "state_in"]
    outputs = [t.name for t in spec.outputs if t.role != "state_out"]
    names = list(spec.output_names)
    states = dict(states0)
    worst = {n: 0.0 for n in outputs}
    scale = {n: 0.0 for n in outputs}
    for inputs, ref in calls:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items() if not k.startswith("state_in.")}
        out = dict(zip(names, sess.run(names, {**feed, **states})))
        for n in outputs:
            worst[n] = max(worst[n], float(np.max(np.abs(out[n].reshape(ref[n].shape) - ref[n]))))
            scale[n] = max(scale[n], float(np.max(np.abs(ref[n]))))
        states = {i: out[o] for i, o in state_pairs}
    return {n: worst[n] / max(scale[n], 1e-6) for n in outputs}


LATENCY_ROUNDS = 3  # the machine is shared: the best of a few medians is the steady figure


def frame_latency_ms(sess, calls, repeats: int = 100) -> float:
    """ms per call over recorded inputs (states from the recording), one thread: the lowest of
    LATENCY_ROUNDS medians, so a burst of load on a shared machine does not decide a choice."""
    names = [o.name for o in sess.get_outputs()]
    feeds = [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in c[0].items()} for c in calls[:repeats]]
    return lowest_median_ms(lambda f: sess.run(names, f), feeds, LATENCY_ROUNDS, warmup=20)


def lowest_median_ms(call, items: Sequence, rounds: int, warmup: int) -> float:
    """ms per ``call(item)``: ``warmup`` calls first, then the lowest of ``rounds`` medians over
    ``items`` (a burst of load on a shared machine must not decide a figure)."""
    for item in items[:warmup]:
        call(item)
    medians = []
    for _ in range(rounds):
        times = []
        for item in items:
            t = time.perf_counter()
            call(item)
            times.append(time.perf_counter() - t)
        medians.append(float(np.median(times)))
    return 1e3 * min(medians)


# -- choosing a scheme per graph ----------------------------------------------------------------

# Candidates for ONNX int8, in order of preference (fastest first); each graph gets the first
# whose measured error is within ERROR_MARGIN of the int8 tolerance and which is not slower
# than the float graph (SLOWER_OK), else the smallest one within the error margin.
ONNX_CANDIDATES = (
    OnnxScheme("nbits", block_size=BLOCK_SIZE_DEFAULT),
    OnnxScheme("nbits", block_size=BLOCK_SIZE_DEFAULT, other_weights=True),
    OnnxScheme("nbits", block_size=128, other_weights=True),
)
ERROR_MARGIN = 0.5  # a graph may use half the declared relative-error tolerance
SLOWER_OK = 1.10  # latency ratio to float still counted as "not slower" (timing noise)
HELD_OUT = 0.3  # share of the calibration frames (the last ones) used to measure candidates


def reference_calls(src: Path, spec, held: Sequence[Mapping[str, np.ndarray]]):
    """The float graph over ``held`` frames, its states fed back from the recorded state at the
    first frame: (session, [(inputs, outputs)], initial states) to measure candidates against."""
    ref_sess = session(src)
    names = list(spec.output_names)
    pairs = [(t.name, t.name.replace("state_in.", "state_out.", 1)) for t in spec.inputs if t.role == "state_in"]
    states0 = {k: np.asarray(v, dtype=np.float32) for k, v in held[0].items() if k.startswith("state_in.")}
    calls, states = [], dict(states0)
    for f in held:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in f.items() if not k.startswith("state_in.")}
        out = dict(zip(names, ref_sess.run(names, {**feed, **states})))
        calls.append(({**feed, **states}, out))
        states = {i: out[o] for i, o in pairs}
    return ref_sess, calls, states0


def choose_onnx_int8(src: Path, dst: Path, frames: Sequence[Mapping[str, np.ndarray]], spec,
                     tolerance: float, candidates: Sequence[OnnxScheme] = ONNX_CANDIDATES) -> dict[str, Any]:
    """Quantize graph ``src`` with each candidate, measure it on the held-out calibration
    frames (states fed back from the recorded state at the first held-out frame; reference =
    the float graph), write the chosen one to ``dst`` and return the measurements and choice."""
    import shutil

    split = int(len(frames) * (1 - HELD_OUT))
    ref_sess, calls, states0 = reference_calls(src, spec, frames[split:])
    float_ms = frame_latency_ms(ref_sess, calls)
    float_size = Path(src).stat().st_size
    tried, chosen = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i, scheme in enumerate(candidates):
            path = Path(tmp) / f"candidate{i}.onnx"
            quantize_onnx(src, path, scheme, frames[:split])
            sess = session(path)
            err = graph_error(sess, spec, states0, calls)
            row = {**scheme.describe(), "graph_rel_error": {k: round(v, 5) for k, v in err.items()},
                   "size_ratio": round(path.stat().st_size / float_size, 4),
                   "latency_ms": round(frame_latency_ms(sess, calls), 4)}
            row["ok"] = max(err.values()) <= ERROR_MARGIN * tolerance
            tried.append((row, path))
            log.debug("int8 candidate %s for %s: %s", scheme, spec.name, row)
            if row["ok"] and row["latency_ms"] <= SLOWER_OK * float_ms:
                chosen = (row, path)
                break
        if chosen is None:
            passing = [t for t in tried if t[0]["ok"]]
            if not passing:
                worst = min(tried, key=lambda t: max(t[0]["graph_rel_error"].values()))
                passing = [worst]  # the exporter's validation reports the failure
            chosen = min(passing, key=lambda t: t[0]["size_ratio"])
        shutil.copyfile(chosen[1], dst)
    return {**{k: v for k, v in chosen[0].items() if k != "ok"},
            "float_latency_ms": round(float_ms, 4),
            "measured_on": f"{len(calls)} held-out calibration frames, states fed back",
            "candidates": [{k: v for k, v in r.items()} for r, _ in tried]}


# -- static QDQ: per-node sensitivity and greedy exclusion --------------------------------------

SENSITIVITY_FRAMES = 300  # held-out frames per sensitivity measurement


def node_groups(graph) -> dict[str, list[str]]:
    """Nodes in groups for the sensitivity search: ``state_path`` (every node on a path from a
    state input to a state output: the recurrent cells), then the other nodes by op type."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    forward, todo = set(), [i.name for i in graph.input if i.name.startswith("state_in.")]
    while todo:
        for n in consumers.get(todo.pop(), []):
            if n.name not in forward:
                forward.add(n.name)
                todo.extend(n.output)
    backward, todo = set(), [o.name for o in graph.output if o.name.startswith("state_out.")]
    while todo:
        n = producers.get(todo.pop())
        if n is not None and n.name not in backward:
            backward.add(n.name)
            todo.extend(n.input)
    groups: dict[str, list[str]] = {"state_path": [n.name for n in graph.node if n.name in forward & backward]}
    for n in graph.node:
        if n.name not in forward & backward and n.op_type not in ("Constant", "Shape"):
            groups.setdefault(n.op_type, []).append(n.name)
    return {k: v for k, v in groups.items() if v}


def static_sensitivity(src: Path, frames: Sequence[Mapping[str, np.ndarray]], spec, tolerance: float,
                       method: str = "minmax", dst: Path | None = None) -> dict[str, Any]:
    """Static QDQ of one graph, deciding per node group (``node_groups``) what stays float:
    start with everything quantized; each round, try leaving each remaining group float too
    and keep the one that lowers the worst relative error most; stop once it is within
    ERROR_MARGIN * ``tolerance`` (or nothing helps). Writes the result to ``dst`` if given;
    returns the errors of every round and the chosen float groups."""
    import shutil

    import onnx

    split = int(len(frames) * (1 - HELD_OUT))
    _, calls, states0 = reference_calls(src, spec, frames[split: split + SENSITIVITY_FRAMES])
    groups = node_groups(onnx.load(str(src), load_external_data=False).graph)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "ranges.json"
        counter = iter(range(10**6))

        def worst(chosen: Sequence[str]) -> tuple[float, Path]:
            path = Path(tmp) / f"q{next(counter)}.onnx"
            exclude = tuple(n for g in chosen for n in groups[g])
            quantize_onnx(src, path, OnnxScheme("static", calibration=method, exclude=exclude), frames[:split], cache)
            return max(graph_error(session(path), spec, states0, calls).values()), path

        err, path = worst(())
        rounds = [{"float_groups": [], "error": err}]
        chosen: list[str] = []
        while err > ERROR_MARGIN * tolerance and len(chosen) < len(groups):
            tried = {g: worst([*chosen, g]) for g in groups if g not in chosen}
            best = min(tried, key=lambda g: tried[g][0])
            if tried[best][0] >= err:
                break
            chosen.append(best)
            err, path = tried[best]
            rounds.append({"float_groups": list(chosen), "error": err,
                           "tried": {g: round(e, 4) for g, (e, _) in tried.items()}})
        if dst is not None:
            shutil.copyfile(path, dst)
    return {"method": method, "float_groups": chosen, "float_nodes": [n for g in chosen for n in groups[g]],
            "error": err, "rounds": rounds, "groups": {g: len(v) for g, v in groups.items()}}
