"""The manifest: one description of a model's streaming graphs, all a backend reads.

A manifest names every graph (``enc``, ``erb_dec``, ``df_dec``), their tensors by name,
the state tensors and how each ``state_out.<name>`` feeds back into ``state_in.<name>``,
the DSP front-end and the alignment facts. Exported bundles store it as ``manifest.json``;
the PyTorch backend builds the same description in memory from the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
    # The weights the graphs were made from (optional; docs/BUNDLE.md): {"name": what load_model
    # accepts or a file name, "kind": shipped / dfn3 / preset / checkpoint / dfn3-archive,
    # "sha256": the file's, for kinds that are files}. Conformance compares against these weights.
    source_model: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def latency_samples(self) -> int:
        return self.streaming.latency_samples(self.dsp)

    @property
    def model_name(self) -> str:
        """The model to name to a user: the weights the bundle was made from, else its family."""
        return self.source_model.get("name") or self.model_family

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
        d = asdict(self)
        if not d["source_model"]:  # optional: manifests without it stay readable by SDK 0.3.0
            del d["source_model"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """Build a manifest from its JSON value; ConfigError lists every problem found (the
        structure first; then, once it builds, the consistency of graphs, tensors and states)."""
        from dfnet4_sdk.manifest_check import consistency_problems, structure_problems

        problems = structure_problems(data)
        if problems:
            raise ConfigError("invalid manifest: " + "; ".join(problems))
        graphs = tuple(
            GraphSpec(**{**g, "inputs": tuple(TensorSpec(**t) for t in g["inputs"]),
                         "outputs": tuple(TensorSpec(**t) for t in g["outputs"])})
            for g in data["graphs"]
        )
        manifest = cls(
            **{
                **data,
                "dsp": DspParams.from_dict(data["dsp"]),
                "streaming": StreamingSpec(**data["streaming"]),
                "graphs": graphs,
                "states": tuple(StateSpecEntry(**s) for s in data["states"]),
            }
        )
        problems = consistency_problems(manifest)
        if problems:
            raise ConfigError("inconsistent manifest: " + "; ".join(problems))
        return manifest

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.from_dict(json.loads(text))

