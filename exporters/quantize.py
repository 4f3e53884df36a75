"""Quantization shared by the targets, by concept: calibration from real audio
(``quantize_calibrate.py``), applying an ONNX int8 scheme (``quantize_apply.py``), measuring a
graph (``quantize_measure.py``) and, here, choosing a scheme per graph (``choose_onnx_int8``)
and the per-layer sensitivity search of what stays float (``static_sensitivity``). The names of
the other three modules are imported here too, so ``exporters.quantize`` stays the one entry.

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
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dfnet4_sdk.exporters.quantize_apply import (
    BLOCK_SIZE_DEFAULT,
    CALIBRATION_METHODS,
    MIN_QUANT_WEIGHTS,
    RECURRENT_OPS,
    SCHEMES,
    WEIGHT_OPS,
    OnnxScheme,
    matmul_nbits_int8,
    pack_int8_blocks,
    quantize_onnx,
    recurrent_weights_int8,
    symmetric_int8,
    weight_only_int8,
)
from dfnet4_sdk.exporters.quantize_calibrate import calibration_audio, calibration_frames
from dfnet4_sdk.exporters.quantize_measure import (
    LATENCY_ROUNDS,
    FilesBackend,
    frame_latency_ms,
    graph_error,
    lowest_median_ms,
    session,
)
from dfnet4_sdk.states import is_state_input, is_state_output, state_pairs

__all__ = [
    "BLOCK_SIZE_DEFAULT", "CALIBRATION_METHODS", "ERROR_MARGIN", "HELD_OUT", "LATENCY_ROUNDS", "MIN_QUANT_WEIGHTS",
    "ONNX_CANDIDATES", "RECURRENT_OPS", "SCHEMES", "SENSITIVITY_FRAMES", "SLOWER_OK", "WEIGHT_OPS", "FilesBackend",
    "OnnxScheme", "calibration_audio", "calibration_frames", "choose_onnx_int8", "frame_latency_ms", "graph_error",
    "lowest_median_ms", "matmul_nbits_int8", "node_groups", "pack_int8_blocks", "quantize_onnx", "recurrent_weights_int8",
    "reference_calls", "session", "static_sensitivity", "symmetric_int8", "weight_only_int8",
]

log = logging.getLogger(__name__)


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
    pairs = state_pairs(spec.input_names)
    states0 = {k: np.asarray(v, dtype=np.float32) for k, v in held[0].items() if is_state_input(k)}
    calls, states = [], dict(states0)
    for f in held:
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in f.items() if not is_state_input(k)}
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
    forward, todo = set(), [i.name for i in graph.input if is_state_input(i.name)]
    while todo:
        for n in consumers.get(todo.pop(), []):
            if n.name not in forward:
                forward.add(n.name)
                todo.extend(n.output)
    backward, todo = set(), [o.name for o in graph.output if is_state_output(o.name)]
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
