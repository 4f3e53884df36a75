"""The manifest: one description of a model's streaming graphs, all a backend reads.

A manifest names every graph (``enc``, ``erb_dec``, ``df_dec``), their tensors by name,
the state tensors and how each ``state_out.<name>`` feeds back into ``state_in.<name>``,
the DSP front-end and the alignment facts. Exported bundles store it as ``manifest.json``;
the PyTorch backend builds the same description in memory from the model.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.params import DspParams

SCHEMA_VERSION = 1
TENSOR_ROLES = ("feature", "intermediate", "output", "state_in", "state_out")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    role: str
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.role not in TENSOR_ROLES:
            raise ConfigError(f"tensor {self.name!r}: role must be one of {TENSOR_ROLES}, got {self.role!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))


@dataclass(frozen=True)
class StateSpecEntry:
    """A recurrent/conv state: fed from ``output_name`` back into ``input_name`` every frame."""

    name: str
    graph: str
    shape: tuple[int, ...]
    init_value: float = 0.0
    init_values: tuple[float, ...] | None = None  # per-element initial values, if not constant

    @property
    def input_name(self) -> str:
        return f"state_in.{self.name}"

    @property
    def output_name(self) -> str:
        return f"state_out.{self.name}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.init_values is not None:
            object.__setattr__(self, "init_values", tuple(float(v) for v in self.init_values))

    def initial(self) -> np.ndarray:
        if self.init_values is not None:
            return np.asarray(self.init_values, dtype=np.float32).reshape(self.shape).copy()
        return np.full(self.shape, self.init_value, dtype=np.float32)


GRAPH_KINDS = ("component", "frame", "block")


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    file: str | None = None
    sha256: str | None = None
    precision: str = "fp32"
    # Our tensor name -> the name inside the graph file, where a converter renames tensors
    # (TFLite signatures say args_0 / output_0, CoreML sanitises dots). Empty: names are ours.
    tensor_names: Mapping[str, str] = field(default_factory=dict)
    # "component": enc / erb_dec / df_dec; "frame": the optional fused graph of a whole hop
    # (features + components + gating + mask + deep filter), see dfnet4_sdk/models/frame.py;
    # "block": <component>_block, the sequence form over a fixed number of frames (offline path).
    kind: str = "component"

    @property
    def state_inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(t for t in self.inputs if t.role == "state_in")

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class StreamingSpec:
    df_order: int
    df_lookahead_frames: int
    conv_lookahead_frames: int

    def latency_samples(self, dsp: DspParams) -> int:
        return dsp.stft_delay_samples + self.conv_lookahead_frames * dsp.hop_size_samples


@dataclass(frozen=True)
class Manifest:
    model_family: str
    model_config: Mapping[str, Any]
    dsp: DspParams
    streaming: StreamingSpec
    graphs: tuple[GraphSpec, ...]
    states: tuple[StateSpecEntry, ...]
    sdk_version: str
    backend: str = "torch"
    precision: str = "fp32"
    quantization: Mapping[str, Any] = field(default_factory=dict)  # scheme and per-graph choices
    validation: Mapping[str, Any] = field(default_factory=dict)  # errors measured at export, tolerances
    fixtures: Mapping[str, str] = field(default_factory=dict)  # {"file": ..., "sha256": ..., "source": ...}
    schema_version: int = SCHEMA_VERSION

    @property
    def latency_samples(self) -> int:
        return self.streaming.latency_samples(self.dsp)

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(f"manifest has no graph {name!r}; graphs: {[g.name for g in self.graphs]}")

    def states_of(self, graph: str) -> tuple[StateSpecEntry, ...]:
        """The states a graph reads and writes (the frame graph: all of them)."""
        names = {t.name for t in self.graph(graph).state_inputs}
        return tuple(s for s in self.states if s.input_name in names)

    @property
    def component_graphs(self) -> tuple[GraphSpec, ...]:
        return tuple(g for g in self.graphs if g.kind == "component")

    @property
    def block_graphs(self) -> tuple[GraphSpec, ...]:
        return tuple(g for g in self.graphs if g.kind == "block")

    @property
    def frame_graph(self) -> GraphSpec | None:
        return next((g for g in self.graphs if g.kind == "frame"), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        problems: list[str] = []
        _check_keys(data, cls, "manifest", problems)
        if data.get("schema_version") != SCHEMA_VERSION:
            problems.append(
                f"schema_version {data.get('schema_version')!r} is not supported (this SDK reads {SCHEMA_VERSION}); "
                "re-export the bundle with this SDK version"
            )
        if problems:
            raise ConfigError("invalid manifest: " + "; ".join(problems))
        graphs = []
        for g in data["graphs"]:
            _check_keys(g, GraphSpec, f"graph {g.get('name')!r}", problems)
            for t in (*g.get("inputs", ()), *g.get("outputs", ())):
                _check_keys(t, TensorSpec, f"tensor {t.get('name')!r}", problems)
        for s in data["states"]:
            _check_keys(s, StateSpecEntry, f"state {s.get('name')!r}", problems)
        _check_keys(data["streaming"], StreamingSpec, "streaming", problems)
        if problems:
            raise ConfigError("invalid manifest: " + "; ".join(problems))
        for g in data["graphs"]:
            graphs.append(
                GraphSpec(
                    **{
                        **g,
                        "inputs": tuple(TensorSpec(**t) for t in g["inputs"]),
                        "outputs": tuple(TensorSpec(**t) for t in g["outputs"]),
                    }
                )
            )
        return cls(
            **{
                **data,
                "dsp": DspParams.from_dict(data["dsp"]),
                "streaming": StreamingSpec(**data["streaming"]),
                "graphs": tuple(graphs),
                "states": tuple(StateSpecEntry(**s) for s in data["states"]),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.from_dict(json.loads(text))


def _check_keys(data: Mapping[str, Any], cls: type, what: str, problems: list[str]) -> None:
    known = {f.name for f in fields(cls)}
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    unknown = sorted(set(data) - known)
    missing = sorted(required - set(data))
    if unknown:
        problems.append(f"{what}: unknown keys {unknown}")
    if missing:
        problems.append(f"{what}: missing keys {missing}")

