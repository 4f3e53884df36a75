"""Manifest schema versions: which this SDK reads, and version 1 upgraded in memory to 2.

Version 2 (issue 16) made the manifest complete: the front-end's tables in ``dsp`` (window,
ERB band widths, norm decay, the norms' initial values), a ``runtime`` section (silence rule,
option defaults, output delay), ``frames`` / ``streams`` on every graph, one ``init_value``
or ``init_values`` and a ``role`` on every state, and fixture ``cases``. A version 1 manifest
gains exactly what the exporter would have written for its ``dsp`` and ``streaming``.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Mapping

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.manifest import (
    FRAME_STATE_ROLES, READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, DspTables, RuntimeSpec, StreamingSpec,
)
from dfnet4_sdk.params import DspParams


def upgrade(data: Any) -> tuple[Any, list[str]]:
    """(the manifest as version 2 JSON, problems with its version). A value that is not a
    manifest object is returned as it is, for ``structure_problems`` to describe; a version
    this SDK does not read is a problem saying what to do (the caller reports it with the rest)."""
    if not isinstance(data, Mapping) or "schema_version" not in data:
        return data, []
    version = data["schema_version"]
    if version == SCHEMA_VERSION:
        return data, []
    if version == 1:
        return upgrade_v1(data), []
    readable = " and ".join(str(v) for v in READABLE_SCHEMA_VERSIONS)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        hint = "it was written by a newer dfnet4-sdk: upgrade dfnet4-sdk (pip install -U dfnet4-sdk) to load it"
    else:
        hint = "re-export the bundle with `dfsdk export`"
    return data, [f"schema_version {version!r} is not supported (this SDK reads schema versions {readable}); {hint}"]


def upgrade_v1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A version 1 manifest as version 2: derived values added where ``dsp`` / ``streaming``
    are valid (otherwise left out, and the structure check reports the v1 problem)."""
    out = copy.deepcopy(dict(data))
    out["schema_version"] = SCHEMA_VERSION
    tables = runtime = None
    try:
        params = DspParams.from_dict(out.get("dsp", {}))
        tables = DspTables.derived(params)
        runtime = RuntimeSpec.derived(params, StreamingSpec(**out.get("streaming", {})))
    except (ConfigError, TypeError, ValueError, AttributeError):
        pass
    if tables is not None and isinstance(out.get("dsp"), dict):
        out["dsp"] = {**out["dsp"], **asdict(tables)}
    if runtime is not None:
        out["runtime"] = asdict(runtime)
    graphs = [g for g in out.get("graphs", []) if isinstance(g, dict)] if isinstance(out.get("graphs"), list) else []
    block = _block_frames(next((g for g in graphs if g.get("name") == "enc_block"), {}))
    for g in graphs:
        g.setdefault("frames", block if g.get("kind") == "block" else 1)
        g.setdefault("streams", 1)
    for s in out.get("states", []) if isinstance(out.get("states"), list) else []:
        if isinstance(s, dict):
            s.setdefault("role", FRAME_STATE_ROLES.get(s.get("name"), "model"))
            if s.get("init_values") is None:
                s.pop("init_values", None)
                s.setdefault("init_value", 0.0)
            else:
                s.pop("init_value", None)
    if isinstance(out.get("fixtures"), dict) and out["fixtures"]:
        out["fixtures"] = {**out["fixtures"], "cases": []}  # v1 fixtures: one clip at default options
    return out


def _block_frames(graph: Mapping[str, Any]) -> int:
    """A v1 bundle's block length: the frame axis (2) of enc_block's first input (feat_erb)."""
    try:
        return int(graph["inputs"][0]["shape"][2])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1
