"""Consistency of the manifest's schema-2 data with the rest of it (``manifest_check`` calls
``v2_problems`` after its own checks, into the same list):

- ``dsp`` tables: one ERB width per band summing to fft_size/2 + 1, one norm initial value per
  band / deep-filtered bin; where a frame graph carries the front-end inside it (its widths and
  decay are constants of the graph), the tables must be the ones it was built with, and its
  norm states must start where the tables say: an edit there is refused, not half-honoured;
- ``runtime``: the option defaults this SDK applies (an edit would describe a run that does
  not happen, so it is refused), the output delay the sections imply;
- graphs' ``frames`` / ``streams``; states' ``role``; fixture cases' names and options.
"""

from __future__ import annotations

import math
from dataclasses import asdict, fields

import numpy as np

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.manifest import ANY_STREAMS, DspTables, Manifest

# Roles held once, by a frame graph, and the table that gives their initial values.
_NORM_ROLES = {"erb_norm": "erb_norm_init", "spec_norm": "spec_norm_init"}


def v2_problems(m: Manifest) -> list[str]:
    return _table_problems(m) + _runtime_problems(m) + _graph_problems(m) + _role_problems(m) + _case_problems(m)


def _table_problems(m: Manifest) -> list[str]:
    d, t = m.dsp, m.tables
    problems = []
    if len(t.erb_widths) != d.nb_erb:
        problems.append(f"dsp.erb_widths has {len(t.erb_widths)} bands, nb_erb is {d.nb_erb}")
    if sum(t.erb_widths) != d.freq_bins:
        problems.append(f"dsp.erb_widths sums to {sum(t.erb_widths)} bins, expected fft_size/2 + 1 = {d.freq_bins}")
    if len(t.erb_norm_init) != d.nb_erb:
        problems.append(f"dsp.erb_norm_init has {len(t.erb_norm_init)} values, expected nb_erb = {d.nb_erb}")
    if len(t.spec_norm_init) != d.nb_df:
        problems.append(f"dsp.spec_norm_init has {len(t.spec_norm_init)} values, expected nb_df = {d.nb_df}")
    if problems or not any(g.kind == "frame" for g in m.graphs):
        return problems
    derived = DspTables.derived(d)
    for key in ("erb_widths", "norm_alpha"):
        if getattr(t, key) != getattr(derived, key):
            problems.append(f"dsp.{key} is {_short(getattr(t, key))}, but the frame graph computes the features "
                            f"with {_short(getattr(derived, key))} (built into it from dsp's other keys); "
                            "re-export the bundle, or remove the frame graph to run other values")
    return problems


def _runtime_problems(m: Manifest) -> list[str]:
    from dfnet4_sdk.stream import StreamOptions

    r = m.runtime
    problems = []
    if r.output_delay_samples != m.latency_samples:
        problems.append(f"runtime.output_delay_samples is {r.output_delay_samples}, but fft_size - hop_size_samples + "
                        f"conv_lookahead_frames * hop_size_samples = {m.latency_samples}")
    known = {f.name for f in fields(StreamOptions)}
    if set(r.options) != known:
        problems.append(f"runtime.options: expected the keys {sorted(known)}, found {sorted(r.options)}")
    else:
        try:
            StreamOptions(**r.options)
        except ConfigError as e:
            problems.append(f"runtime.options: {e}")
        defaults = asdict(StreamOptions())
        changed = sorted(k for k in known if r.options[k] != defaults[k])
        if changed and not any("runtime.options" in p for p in problems):
            problems.append(f"runtime.options {changed} differ from this SDK's defaults "
                            f"{ {k: defaults[k] for k in changed} }, which Runtime and `dfsdk run` use when nothing is "
                            "passed; restore them and pass other values as options (Runtime(..., atten_lim_db=...), "
                            "dfsdk run --atten-lim-db ...)")
    return problems


def _graph_problems(m: Manifest) -> list[str]:
    problems = []
    enc_block = next((g for g in m.graphs if g.name == "enc_block"), None)
    features = enc_block.inputs[0].shape if enc_block is not None and enc_block.inputs else ()
    for g in m.graphs:
        if g.kind == "block":
            if len(features) >= 3 and g.frames != features[2]:
                problems.append(f"graph {g.name!r}: frames is {g.frames}, but the block graphs' features hold "
                                f"{features[2]} frames (axis 2 of enc_block's {enc_block.inputs[0].name!r})")
        elif g.frames != 1:
            problems.append(f"graph {g.name!r} of kind {g.kind!r}: frames must be 1, found {g.frames}")
        if g.streams != 1 and g.name != "frame_streams":
            problems.append(f"graph {g.name!r}: streams must be 1 (only the batched graph 'frame_streams' takes "
                            f"several), found {g.streams}")
        for t in (*g.inputs, *g.outputs):
            first = t.shape[0]
            if g.streams != 1 and first not in (g.streams, ANY_STREAMS):
                problems.append(f"graph {g.name!r}: {t.name!r} has shape {t.shape}; its first axis is the stream axis "
                                f"({g.streams})")
            if g.streams == 1 and first == ANY_STREAMS:
                problems.append(f"graph {g.name!r}: {t.name!r} has a stream axis ({ANY_STREAMS}) but streams is 1")
    return problems


def _role_problems(m: Manifest) -> list[str]:
    problems = []
    kinds = {g.name: g.kind for g in m.graphs}
    for role, table in _NORM_ROLES.items():
        held = [s for s in m.states if s.role == role]
        if len(held) > 1:
            problems.append(f"states {[s.name for s in held]} all have role {role!r}; at most one may")
        for s in held:
            want = np.asarray(getattr(m.tables, table), np.float32)
            if kinds.get(s.graph) != "frame":
                problems.append(f"state {s.name!r} has role {role!r} but belongs to graph {s.graph!r}, not a frame graph")
            elif _fits(s) and (s.initial().size != want.size or not np.array_equal(s.initial().reshape(-1), want)):
                problems.append(f"state {s.name!r} (role {role!r}) does not start at dsp.{table}: both are the "
                                "same norm at t = 0; make them equal or re-export the bundle")
    history = [s for s in m.states if s.role == "spectrum_history"]
    if len(history) > 1:
        problems.append(f"states {[s.name for s in history]} all have role 'spectrum_history'; at most one may")
    return problems


def _fits(s) -> bool:
    """Whether a state's initial value can be built: its shape has no negative axis and its
    init_values (if any) fill it; what does not fit is reported by manifest_check's state checks."""
    return all(d >= 0 for d in s.shape) and (s.init_values is None or len(s.init_values) == math.prod(s.shape))


def _case_problems(m: Manifest) -> list[str]:
    from dfnet4_sdk.stream import StreamOptions

    problems = []
    cases = m.fixtures.get("cases", []) if m.fixtures else []
    names = [c.get("name") for c in cases]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"fixtures: case {name!r} appears {names.count(name)} times")
    known = {f.name for f in fields(StreamOptions)}
    for c in cases:
        unknown = sorted(set(c.get("options", {})) - known)
        if unknown:
            problems.append(f"fixtures case {c.get('name')!r}: unknown options {unknown}; expected some of {sorted(known)}")
            continue
        try:
            StreamOptions(**{**asdict(StreamOptions()), **c.get("options", {})})
        except ConfigError as e:
            problems.append(f"fixtures case {c.get('name')!r}: {e}")
    return problems


def _short(v) -> str:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    text = repr(list(v))
    return text if len(text) <= 50 else text[:47] + "...]"
