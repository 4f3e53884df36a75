"""Checks of a manifest, each appending to one list so that a bad manifest is reported whole:

- ``structure_problems``: the JSON's shape and types, before anything is built from it (a
  manifest that passes builds without error);
- ``consistency_problems``: the built manifest agrees with itself: the three component
  graphs, the tensors the stream feeds and reads (shapes from the DSP and streaming sections),
  every state read by a graph is declared once with the graph's shape, and written back;
- ``declaration_problems``: a graph file agrees with its manifest entry: its tensors (names
  and shapes) and the DSP facts the exporter wrote into its metadata.

Over 400 lines: the three checks share the JSON helpers (``_keys``, ``_fields``, ``_object``)
and one contract (collect every problem, never raise midway); split, each part would import the
other's helpers.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, fields
from typing import Any, Callable, Mapping

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.manifest import (
    ANY_STREAMS, GRAPH_KINDS, STATE_ROLES, TENSOR_ROLES, WINDOWS, DspTables, GraphSpec, Manifest, RuntimeSpec,
    StreamingSpec, TensorSpec,
)
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.states import (
    StateSpec, is_state_input, is_state_output, state_input_name, state_name, state_output_name,
)

COMPONENTS = ("enc", "erb_dec", "df_dec")
FRAME_GRAPH = "frame"
FRAME_GRAPHS = (FRAME_GRAPH, "frame_streams")  # kind "frame": one stream, and the batched form
# Manifest fields that are not top-level JSON keys (``tables`` is written inside ``dsp``), and
# the v2 keys that are required although the dataclass derives them when built in memory.
_NOT_JSON_KEYS = ("tables",)
_REQUIRED_V2_KEYS = ("runtime",)
FIXTURE_KEYS = ("file", "sha256", "source", "cases")
# Non-state inputs of block graphs that come from the features, not from another graph.
BLOCK_FEATURES = ("feat_erb", "feat_spec", "frame_samples")
TENSOR_DTYPES = ("float32",)
MAX_RANK = 8


# -- structure ------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _is_str_map(v: Any) -> bool:
    return isinstance(v, Mapping) and all(isinstance(k, str) and isinstance(x, str) for k, x in v.items())


def _is_shape(v: Any) -> bool:
    """1 to MAX_RANK positive ints; the first may be -1 (the stream axis of a batched graph)."""
    return (isinstance(v, (list, tuple)) and 1 <= len(v) <= MAX_RANK and all(_is_int(d) for d in v)
            and all(d > 0 or (i == 0 and d == ANY_STREAMS) for i, d in enumerate(v)))


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


_Check = tuple[Callable[[Any], bool], str]
_STR: _Check = (lambda v: isinstance(v, str) and v != "", "a non-empty string")
_OPT_STR: _Check = (lambda v: v is None or isinstance(v, str), "a string or null")
_MAP: _Check = (lambda v: isinstance(v, Mapping), "an object")
_STR_MAP: _Check = (_is_str_map, "an object of strings")
_POS_INT: _Check = (lambda v: _is_int(v) and v > 0, "a positive integer")
_NONNEG_INT: _Check = (lambda v: _is_int(v) and v >= 0, "a non-negative integer")
_POS_NUMBER: _Check = (lambda v: _is_number(v) and v > 0, "a positive finite number")
_NUMBER: _Check = (_is_number, "a finite number")
_SHAPE: _Check = (_is_shape, f"a list of 1 to {MAX_RANK} positive integers")
_LIST: _Check = (lambda v: isinstance(v, (list, tuple)), "a list")


def _keys(data: Mapping[str, Any], cls: type | tuple[type, ...], what: str, problems: list[str],
          not_keys: tuple[str, ...] = (), also_required: tuple[str, ...] = ()) -> None:
    classes = cls if isinstance(cls, tuple) else (cls,)
    known = {f.name for c in classes for f in fields(c)} - set(not_keys)
    required = {f.name for c in classes for f in fields(c)
                if f.default is MISSING and f.default_factory is MISSING} - set(not_keys) | set(also_required)
    unknown = sorted(str(k) for k in set(data) - known)
    missing = sorted(required - set(data))
    if unknown:
        problems.append(f"{what}: unknown keys {unknown}")
    if missing:
        problems.append(f"{what}: missing keys {missing}")


def _fields(data: Mapping[str, Any], checks: Mapping[str, _Check], what: str, problems: list[str]) -> None:
    for key, (ok, expected) in checks.items():
        if key in data and not ok(data[key]):
            problems.append(f"{what}.{key}: expected {expected}, found {_show(data[key])}")


def _object(data: Any, cls: type | tuple[type, ...], what: str, checks: Mapping[str, _Check], problems: list[str],
            also_required: tuple[str, ...] = ()) -> bool:
    """Keys and field types of one JSON object; False when it is not an object at all."""
    if not isinstance(data, Mapping):
        problems.append(f"{what}: expected an object, found {_show(data)}")
        return False
    _keys(data, cls, what, problems, also_required=also_required)
    _fields(data, checks, what, problems)
    return True


def structure_problems(data: Any) -> list[str]:
    """Everything wrong with the JSON value ``data`` as a manifest, before building it."""
    if not isinstance(data, Mapping):
        return [f"expected a JSON object with keys such as 'graphs' and 'states', found {type(data).__name__} "
                f"{_show(data)}; re-export the bundle with `dfsdk export`"]
    problems: list[str] = []
    _keys(data, Manifest, "manifest", problems, not_keys=_NOT_JSON_KEYS, also_required=_REQUIRED_V2_KEYS)
    _fields(data, {"model_family": _STR, "sdk_version": _STR, "backend": _STR, "precision": _STR,
                   "model_config": _MAP, "quantization": _MAP, "validation": _MAP, "fixtures": _MAP,
                   "source_model": _STR_MAP}, "manifest", problems)
    dsp_checks = {f.name: (_POS_NUMBER if f.type in (float, "float") else _POS_INT) for f in fields(DspParams)}
    dsp_checks.update(_TABLE_CHECKS)
    before = len(problems)
    dsp = data.get("dsp", {})
    if _object(dsp, (DspParams, DspTables), "dsp", dsp_checks, problems, also_required=("window",)) \
            and len(problems) == before:
        try:
            DspParams.from_dict({k: v for k, v in dsp.items() if k not in _TABLE_CHECKS})
        except ConfigError as e:
            problems.append(f"dsp: {e}")
    if "runtime" in data:
        _object(data["runtime"], RuntimeSpec, "runtime", {
        "silent_hop_mean_square": (lambda v: _is_number(v) and v >= 0, "a finite number >= 0"),
            "options": _MAP, "output_delay_samples": _NONNEG_INT}, problems)
    _fixtures_structure(data.get("fixtures", {}), problems)
    streaming = data.get("streaming", {})
    if _object(streaming, StreamingSpec, "streaming", {"df_order": _POS_INT, "df_lookahead_frames": _NONNEG_INT,
                                                        "conv_lookahead_frames": _NONNEG_INT}, problems):
        order, la, conv_la = (streaming.get(k) for k in ("df_order", "df_lookahead_frames", "conv_lookahead_frames"))
        if _is_int(order) and _is_int(la) and order > 0 and not 0 <= la < order:
            problems.append(f"streaming.df_lookahead_frames must be in 0..df_order-1 = 0..{order - 1}, found {la}")
        if _is_int(la) and _is_int(conv_la) and la > conv_la:
            problems.append(f"streaming.df_lookahead_frames ({la}) cannot exceed conv_lookahead_frames ({conv_la})")
    graphs = data.get("graphs", [])
    if not isinstance(graphs, (list, tuple)) or not graphs:
        problems.append(f"graphs: expected a non-empty list of graphs ({', '.join(COMPONENTS)} at least), "
                        f"found {_show(graphs)}")
        graphs = []
    for i, g in enumerate(graphs):
        what = f"graph {g.get('name')!r}" if isinstance(g, Mapping) else f"graphs[{i}]"
        checks = {"name": _STR, "inputs": _LIST, "outputs": _LIST, "file": _OPT_STR, "sha256": _OPT_STR,
                  "precision": _STR, "tensor_names": _STR_MAP,
                  "kind": (lambda v: v in GRAPH_KINDS, f"one of {list(GRAPH_KINDS)}"), "frames": _POS_INT,
                  "streams": (lambda v: _is_int(v) and (v >= 1 or v == ANY_STREAMS),
                              f"a positive integer or {ANY_STREAMS} (any number of streams)")}
        if not _object(g, GraphSpec, what, checks, problems, also_required=("frames", "streams")):
            continue
        for side in ("inputs", "outputs"):
            for j, t in enumerate(g.get(side) if isinstance(g.get(side), (list, tuple)) else []):
                name = t.get("name") if isinstance(t, Mapping) else None
                _object(t, TensorSpec, f"{what} {side}[{j}]" + (f" {name!r}" if name else ""),
                        {"name": _STR, "shape": _SHAPE, "role": (lambda v: v in TENSOR_ROLES, f"one of {list(TENSOR_ROLES)}"),
                         "dtype": (lambda v: v in TENSOR_DTYPES, f"one of {list(TENSOR_DTYPES)}")}, problems)
    states = data.get("states", [])
    if not isinstance(states, (list, tuple)):
        problems.append(f"states: expected a list, found {_show(states)}")
        states = []
    for i, s in enumerate(states):
        what = f"state {s.get('name')!r}" if isinstance(s, Mapping) else f"states[{i}]"
        init_values = (lambda v: isinstance(v, (list, tuple)) and all(_is_number(x) for x in v),
                       "a list of finite numbers")
        if _object(s, StateSpec, what, {"name": _STR, "graph": _STR, "shape": _SHAPE, "init_value": _NUMBER,
                                             "init_values": init_values,
                                             "role": (lambda v: v in STATE_ROLES, f"one of {list(STATE_ROLES)}")},
                   problems, also_required=("graph", "role")) and ("init_value" in s) == ("init_values" in s):
            problems.append(f"{what}: expected exactly one of init_value (one number for every element) or "
                            f"init_values (one per element), found {'both' if 'init_value' in s else 'neither'}")
    return problems


def _numbers(kind: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, (list, tuple)) and len(v) > 0 and all(kind(x) for x in v)


_TABLE_CHECKS: dict[str, _Check] = {
    "window": (lambda v: v in WINDOWS, f"one of {list(WINDOWS)}"),
    "erb_widths": (_numbers(lambda x: _is_int(x) and x > 0), "a list of positive integers (bins per ERB band)"),
    "norm_alpha": (lambda v: _is_number(v) and 0 < v < 1, "a number between 0 and 1 (exclusive)"),
    "erb_norm_init": (_numbers(_is_number), "a list of finite numbers (dB)"),
    "spec_norm_init": (_numbers(lambda x: _is_number(x) and x > 0), "a list of positive finite numbers"),
}


def _fixtures_structure(fixtures: Any, problems: list[str]) -> None:
    if not isinstance(fixtures, Mapping) or not fixtures:
        return  # the type is checked with the manifest's fields; absent fixtures are allowed
    unknown, missing = sorted(set(fixtures) - set(FIXTURE_KEYS)), sorted(set(FIXTURE_KEYS) - set(fixtures))
    if unknown:
        problems.append(f"fixtures: unknown keys {unknown}")
    if missing:
        problems.append(f"fixtures: missing keys {missing}")
    _fields(fixtures, {"file": _STR, "sha256": _STR, "source": _STR, "cases": _LIST}, "fixtures", problems)
    for i, case in enumerate(fixtures.get("cases") if isinstance(fixtures.get("cases"), (list, tuple)) else []):
        what = f"fixtures.cases[{i}]"
        if not isinstance(case, Mapping):
            problems.append(f"{what}: expected an object, found {_show(case)}")
            continue
        if set(case) != {"name", "options", "samples"}:
            problems.append(f"{what}: expected the keys ['name', 'options', 'samples'], found {sorted(map(str, case))}")
        _fields(case, {"name": _STR, "options": _MAP, "samples": _POS_INT}, what, problems)


# -- consistency ----------------------------------------------------------------------------------
def _numel(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def consistency_problems(m: Manifest) -> list[str]:
    """Everything in a built manifest that disagrees with the rest of it."""
    problems: list[str] = []
    names = [g.name for g in m.graphs]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"graph {name!r} appears {names.count(name)} times")
    by_name = {g.name: g for g in m.graphs}
    for c in COMPONENTS:
        if c not in by_name:
            problems.append(f"graph {c!r} is missing (every bundle has the component graphs {list(COMPONENTS)})")
        elif by_name[c].kind != "component":
            problems.append(f"graph {c!r} has kind {by_name[c].kind!r}, expected 'component'")
    for g in m.graphs:
        expected = {"component": COMPONENTS, "frame": FRAME_GRAPHS, "block": tuple(f"{c}_block" for c in COMPONENTS)}[g.kind]
        if g.name not in expected:
            problems.append(f"graph {g.name!r} of kind {g.kind!r}: expected a name in {list(expected)}")
    blocks = [g.name for g in m.block_graphs]
    if blocks and blocks != [f"{c}_block" for c in COMPONENTS]:
        problems.append(f"block graphs {blocks}: expected none or {[f'{c}_block' for c in COMPONENTS]} in that order")
    for g in m.graphs:
        problems += _graph_io_problems(g)
    problems += _state_problems(m, by_name)
    problems += _dsp_shape_problems(m, by_name)
    from dfnet4_sdk.manifest_tables import v2_problems

    problems += v2_problems(m)
    return problems


def _graph_io_problems(g: GraphSpec) -> list[str]:
    problems = []
    for side, tensors, allowed in (("input", g.inputs, ("feature", "intermediate", "state_in")),
                                   ("output", g.outputs, ("intermediate", "output", "state_out"))):
        seen = [t.name for t in tensors]
        for name in sorted({n for n in seen if seen.count(n) > 1}):
            problems.append(f"graph {g.name!r}: {side} {name!r} appears {seen.count(name)} times")
        for t in tensors:
            if t.role not in allowed:
                problems.append(f"graph {g.name!r}: {side} {t.name!r} has role {t.role!r}, expected one of {list(allowed)}")
            named_as = {"state_in": is_state_input, "state_out": is_state_output}.get(t.role)
            if named_as and not named_as(t.name):
                problems.append(f"graph {g.name!r}: {t.role} tensor {t.name!r} must be named {t.role}.<state>")
            if not named_as and (is_state_input(t.name) or is_state_output(t.name)):
                problems.append(f"graph {g.name!r}: {t.name!r} has role {t.role!r} but a state's name")
    state_in = {state_name(t.name): t.shape for t in g.inputs if t.role == "state_in"}
    state_out = {state_name(t.name): t.shape for t in g.outputs if t.role == "state_out"}
    for name in sorted(set(state_in) ^ set(state_out)):
        has, lacks = ("state_in", "state_out") if name in state_in else ("state_out", "state_in")
        problems.append(f"graph {g.name!r} has {has}.{name} but no {lacks}.{name}")
    for name in sorted(set(state_in) & set(state_out)):
        if state_in[name] != state_out[name]:
            problems.append(f"graph {g.name!r}: {state_input_name(name)} has shape {state_in[name]}, "
                            f"{state_output_name(name)} {state_out[name]}")
    unknown = sorted(set(g.tensor_names) - {*g.input_names, *g.output_names})
    if unknown:
        problems.append(f"graph {g.name!r}: tensor_names names tensors it does not have: {unknown}")
    return problems


def _state_problems(m: Manifest, by_name: Mapping[str, GraphSpec]) -> list[str]:
    problems = []
    entries: dict[str, StateSpec] = {}
    for s in m.states:
        if s.name in entries:
            problems.append(f"state {s.name!r} is declared twice")
        entries[s.name] = s
        if s.init_values is not None and len(s.init_values) != _numel(s.shape):
            problems.append(f"state {s.name!r}: init_values has {len(s.init_values)} values, its shape {s.shape} "
                            f"needs {_numel(s.shape)}")
        g = by_name.get(s.graph)
        if g is None:
            problems.append(f"state {s.name!r} belongs to graph {s.graph!r}, which the manifest does not have")
        elif s.input_name not in g.input_names:
            problems.append(f"state {s.name!r} belongs to graph {s.graph!r}, which has no input {s.input_name!r}")
    for g in m.graphs:
        for t in g.state_inputs:
            s = entries.get(state_name(t.name))
            if s is None:
                problems.append(f"graph {g.name!r} reads {t.name!r} but states has no entry {state_name(t.name)!r} "
                                "(its shape and initial value)")
            elif g.streams != 1 and s.shape[1:] != t.shape[1:]:
                problems.append(f"state {s.name!r} has shape {s.shape}, but graph {g.name!r} declares {t.name} as "
                                f"{t.shape} (the stream axis first, then the state's other axes)")
            elif g.streams == 1 and s.shape != t.shape:
                problems.append(f"state {s.name!r} has shape {s.shape}, but graph {g.name!r} declares {t.name} as {t.shape}")
    return problems


def _dsp_shape_problems(m: Manifest, by_name: Mapping[str, GraphSpec]) -> list[str]:
    """The tensors the stream builds and reads, against the DSP and streaming sections."""
    d, s = m.dsp, m.streaming
    problems = []

    def need(graph: str, side: str, tensor: str, ok: Callable[[tuple[int, ...]], bool] | None, expected: str) -> None:
        g = by_name.get(graph)
        if g is None:
            return
        specs = {t.name: t.shape for t in (g.inputs if side == "input" else g.outputs)}
        if tensor not in specs:
            problems.append(f"graph {graph!r} has no {side} {tensor!r}")
        elif ok is not None and not ok(specs[tensor]):
            problems.append(f"graph {graph!r}: {side} {tensor!r} has shape {specs[tensor]}, expected {expected}")

    def numel(n: int) -> Callable[[tuple[int, ...]], bool]:
        return lambda shape: _numel(shape) == n

    coefs = d.nb_df * s.df_order * 2
    need("enc", "input", "feat_erb", lambda sh: sh == (1, 1, 1, d.nb_erb), f"(1, 1, 1, nb_erb={d.nb_erb})")
    need("enc", "input", "feat_spec", lambda sh: sh == (1, 2, 1, d.nb_df), f"(1, 2, 1, nb_df={d.nb_df})")
    need("enc", "output", "lsnr", numel(1), "one value")
    need("erb_dec", "output", "erb_mask", numel(d.nb_erb), f"nb_erb={d.nb_erb} values")
    need("df_dec", "output", "df_coefs", numel(coefs), f"nb_df x df_order x 2 = {coefs} values")
    if "enc" in by_name:
        enc_out = {t.name: t.shape for t in by_name["enc"].outputs}
        for name in ("erb_dec", "df_dec"):
            for t in by_name[name].inputs if name in by_name else ():
                if t.role != "state_in" and enc_out.get(t.name) != t.shape:
                    problems.append(f"graph {name!r}: input {t.name!r} {t.shape} is not an output of 'enc' of that shape")
    for graph, fed in (("enc", ("feat_erb", "feat_spec", "frame_samples")),
                       (FRAME_GRAPH, ("spec", "gating_thresholds_db", "frame_samples"))):
        for t in by_name[graph].inputs if graph in by_name else ():
            if t.role != "state_in" and t.name not in fed:
                problems.append(f"graph {graph!r}: input {t.name!r} is not one the stream provides ({', '.join(fed)})")
    if FRAME_GRAPH in by_name and "enc" in by_name and (
            ("frame_samples" in by_name["enc"].input_names) != ("frame_samples" in by_name[FRAME_GRAPH].input_names)):
        problems.append("graphs 'enc' and 'frame' must both take 'frame_samples' or neither")
    hop = (1, 1, 1, d.hop_size_samples)
    for g in m.graphs:
        if g.kind != "block" and "frame_samples" in g.input_names:
            need(g.name, "input", "frame_samples", lambda sh: sh == hop, f"{hop} (one hop of hop_size_samples)")
    spec = (1, d.freq_bins, 2)
    if FRAME_GRAPH in by_name:
        need(FRAME_GRAPH, "input", "spec", lambda sh: sh == spec, f"{spec} (fft_size / 2 + 1 bins)")
        need(FRAME_GRAPH, "input", "gating_thresholds_db", lambda sh: sh == (3,), "(3,)")
        need(FRAME_GRAPH, "output", "spec_enhanced", lambda sh: sh == spec, str(spec))
        need(FRAME_GRAPH, "output", "spec_noisy", lambda sh: sh == spec, str(spec))
        need(FRAME_GRAPH, "output", "lsnr", numel(1), "one value")
    if m.block_graphs and m.block_graphs[0].name == "enc_block":
        problems += _block_problems(m, by_name, need, numel)
    return problems


def _block_problems(m: Manifest, by_name, need, numel) -> list[str]:
    d, s = m.dsp, m.streaming
    problems = []
    enc = {t.name: t.shape for t in by_name["enc_block"].inputs}
    block = enc.get("feat_erb", (0, 0, 0))[2] if len(enc.get("feat_erb", ())) == 4 else 0
    need("enc_block", "input", "feat_erb", lambda sh: len(sh) == 4 and sh == (1, 1, sh[2], d.nb_erb),
         f"(1, 1, frames, nb_erb={d.nb_erb})")
    if block:
        need("enc_block", "input", "feat_spec", lambda sh: sh == (1, 2, block, d.nb_df), f"(1, 2, {block}, {d.nb_df})")
        if "frame_samples" in enc:
            need("enc_block", "input", "frame_samples", lambda sh: sh == (1, 1, block, d.hop_size_samples),
                 f"(1, 1, {block}, hop_size_samples={d.hop_size_samples})")
        need("erb_dec_block", "output", "erb_mask", numel(block * d.nb_erb), f"{block} x nb_erb values")
        need("df_dec_block", "output", "df_coefs", numel(block * d.nb_df * s.df_order * 2),
             f"{block} x nb_df x df_order x 2 values")
    need("enc_block", "output", "lsnr", None, "")
    available = {t.name: t.shape for t in by_name["enc_block"].inputs if t.name in BLOCK_FEATURES}
    for g in m.block_graphs:
        for t in g.inputs:
            if t.role == "state_in" or g.name == "enc_block" and t.name in BLOCK_FEATURES:
                continue
            if t.name not in available:
                problems.append(f"graph {g.name!r}: input {t.name!r} is neither a feature nor an output of an earlier block graph")
            elif available[t.name] != t.shape:
                problems.append(f"graph {g.name!r}: input {t.name!r} has shape {t.shape}, but the graph that makes it "
                                f"declares {available[t.name]}")
        available.update((t.name, t.shape) for t in g.outputs)
    return problems


# -- a graph file against its manifest entry ------------------------------------------------------
# Metadata keys the exporters write (exporters/base.py _graph_metadata), read back as text.
_METADATA_FACTS: dict[str, Callable[[Manifest], str]] = {
    "model_family": lambda m: m.model_family,
    "sample_rate_hz": lambda m: str(m.dsp.sample_rate_hz),
    "fft_size": lambda m: str(m.dsp.fft_size),
    "hop_size_samples": lambda m: str(m.dsp.hop_size_samples),
    "nb_erb": lambda m: str(m.dsp.nb_erb),
    "nb_df": lambda m: str(m.dsp.nb_df),
    "df_order": lambda m: str(m.streaming.df_order),
    "conv_lookahead_frames": lambda m: str(m.streaming.conv_lookahead_frames),
    "df_lookahead_frames": lambda m: str(m.streaming.df_lookahead_frames),
}


def declaration_problems(
    m: Manifest,
    spec: GraphSpec,
    metadata: Mapping[str, str],
    inputs: Mapping[str, tuple[Any, ...]] | None = None,
    outputs: Mapping[str, tuple[Any, ...]] | None = None,
) -> list[str]:
    """What a graph file declares (its metadata, and its input/output names -> shapes, a
    dimension that is not an int counting as free; None: not checked here) against the
    manifest's entry ``spec``. Metadata keys the file lacks are not checked: a graph from
    another exporter may have none."""
    problems = []
    facts = dict(_METADATA_FACTS)
    if "dsp_params_json" in metadata:  # every DSP parameter at once: the single keys are not needed
        facts = {k: v for k, v in facts.items() if k not in m.dsp.to_dict()}
        try:
            declared = json.loads(metadata["dsp_params_json"])
        except ValueError:
            declared = None
        if not isinstance(declared, dict):
            problems.append(f"its metadata's dsp_params_json is not a JSON object: {_show(metadata['dsp_params_json'])}")
        else:
            for key, value in m.dsp.to_dict().items():
                if declared.get(key) != value:
                    problems.append(f"dsp.{key} is {declared.get(key)} in the graph's metadata, {value} in the manifest")
    for key, fact in facts.items():
        if key in metadata and metadata[key] != fact(m):
            problems.append(f"{key} is {metadata[key]} in the graph's metadata, {fact(m)} in the manifest")
    if "graph" in metadata and metadata["graph"] != spec.name:
        problems.append(f"the file is graph {metadata['graph']!r}, the manifest entry {spec.name!r}")
    for side, tensors, found in (("input", spec.inputs, inputs), ("output", spec.outputs, outputs)):
        if found is None:
            continue
        wanted = {spec.tensor_names.get(t.name, t.name): t for t in tensors}
        for file_name in sorted(set(wanted) - set(found)):
            problems.append(f"{side} {wanted[file_name].name!r} is in the manifest but not in the file")
        for file_name in sorted(set(found) - set(wanted)):
            problems.append(f"{side} {file_name!r} is in the file but not in the manifest")
        for file_name in sorted(set(wanted) & set(found)):
            shape, t = tuple(found[file_name]), wanted[file_name]
            if len(shape) != len(t.shape) or any(_is_int(a) and a != b for a, b in zip(shape, t.shape)):
                problems.append(f"{side} {t.name!r} has shape {shape} in the file, {t.shape} in the manifest")
    return problems
