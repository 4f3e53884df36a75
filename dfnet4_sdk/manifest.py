"""The manifest: one description of a model's streaming graphs, all a backend reads.

A manifest names every graph (``enc``, ``erb_dec``, ``df_dec``), their tensors by name,
the state tensors and how each ``state_out.<name>`` feeds back into ``state_in.<name>``,
the DSP front-end (with its tables: ERB band widths, norm decay and initial values), what a
per-hop client applies outside the graphs (``runtime``) and the alignment facts. Exported
bundles store it as ``manifest.json`` (schema version 2, docs/BUNDLE.md; version 1 manifests
are upgraded in memory by ``manifest_versions``); the PyTorch backend builds the same
description in memory from the model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.params import DspParams
from dfnet4_sdk.states import StateSpec

SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)
TENSOR_ROLES = ("feature", "intermediate", "output", "state_in", "state_out")
# A state's place in the recipe: a graph's own buffer / recurrent state, or the front-end's
# ERB norm ``s``, unit norm ``m`` and the analysed-spectrum history, held inside a frame graph.
STATE_ROLES = ("model", "erb_norm", "spec_norm", "spectrum_history")
FRAME_STATE_ROLES = {"frame_erb_norm": "erb_norm", "frame_unit_norm": "spec_norm",
                     "frame_spec_history": "spectrum_history"}
WINDOWS = ("vorbis",)
ANY_STREAMS = -1  # graphs[*].streams: any number of streams per call (first axis of every tensor)


def shape_matches(shape: tuple[int, ...], spec_shape: tuple[int, ...]) -> bool:
    """An array's shape against a manifest shape whose first axis may be -1 (any number of streams)."""
    shape, spec_shape = tuple(shape), tuple(spec_shape)
    if spec_shape and spec_shape[0] == ANY_STREAMS:
        return len(shape) == len(spec_shape) and shape[1:] == spec_shape[1:]
    return shape == spec_shape


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
    # Frames per call along the frame axis (1, or the block length of a block graph) and streams
    # per call (ANY_STREAMS = -1: any number, along the first axis of every input and output).
    frames: int = 1
    streams: int = 1

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
class DspTables:
    """The front-end's data beyond ``DspParams`` (written into the manifest's ``dsp``): ERB band
    widths in bins, the norms' decay, the ERB norm ``s`` and unit norm ``m`` at t = 0."""

    erb_widths: tuple[int, ...]
    norm_alpha: float
    erb_norm_init: tuple[float, ...]
    spec_norm_init: tuple[float, ...]
    window: str = "vorbis"

    def __post_init__(self) -> None:
        object.__setattr__(self, "erb_widths", tuple(int(w) for w in self.erb_widths))
        object.__setattr__(self, "norm_alpha", float(self.norm_alpha))
        object.__setattr__(self, "erb_norm_init", tuple(float(v) for v in self.erb_norm_init))
        object.__setattr__(self, "spec_norm_init", tuple(float(v) for v in self.spec_norm_init))

    @classmethod
    def derived(cls, params: DspParams) -> "DspTables":
        """What the front-end computes from ``params`` (libDF's bands, rounding, linspaces)."""
        from dfnet4_sdk import dsp

        initial = dsp.FrontEndState.initial(params)
        return cls(tuple(dsp.erb_band_widths(params).tolist()), float(params.norm_alpha),
                   tuple(initial.erb_norm_state.tolist()), tuple(initial.unit_norm_state.tolist()))


@dataclass(frozen=True)
class RuntimeSpec:
    """What a per-hop client applies outside the graphs (the manifest's ``runtime``)."""

    silent_hop_mean_square: float
    options: Mapping[str, Any]  # StreamOptions defaults by field name
    output_delay_samples: int

    @classmethod
    def derived(cls, params: DspParams, streaming: "StreamingSpec") -> "RuntimeSpec":
        from dataclasses import asdict as _asdict

        from dfnet4_sdk.stream import SILENT_HOP_MEAN_SQUARE, StreamOptions

        return cls(SILENT_HOP_MEAN_SQUARE, _asdict(StreamOptions()), streaming.latency_samples(params))


@dataclass(frozen=True)
class Manifest:
    model_family: str
    model_config: Mapping[str, Any]
    dsp: DspParams
    streaming: StreamingSpec
    graphs: tuple[GraphSpec, ...]
    states: tuple[StateSpec, ...]
    sdk_version: str
    backend: str = "torch"
    precision: str = "fp32"
    quantization: Mapping[str, Any] = field(default_factory=dict)  # scheme and per-graph choices
    validation: Mapping[str, Any] = field(default_factory=dict)  # errors measured at export, tolerances
    # {"file", "sha256", "source", "cases": [{"name", "options", "samples"}]} (docs/BUNDLE.md)
    fixtures: Mapping[str, Any] = field(default_factory=dict)
    # The weights the graphs were made from (optional; docs/BUNDLE.md): {"name": what load_model
    # accepts or a file name, "kind": shipped / dfn3 / preset / checkpoint / dfn3-archive,
    # "sha256": the file's, for kinds that are files}. Conformance compares against these weights.
    source_model: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    # v2 data; None: derived from ``dsp`` / ``streaming`` as the exporter writes them.
    tables: DspTables | None = None
    runtime: RuntimeSpec | None = None

    def __post_init__(self) -> None:
        if self.tables is None:
            object.__setattr__(self, "tables", DspTables.derived(self.dsp))
        if self.runtime is None:
            object.__setattr__(self, "runtime", RuntimeSpec.derived(self.dsp, self.streaming))

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

    def states_of(self, graph: str) -> tuple[StateSpec, ...]:
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
        """The single-stream frame graph (not a batched one such as ``frame_streams``)."""
        return next((g for g in self.graphs if g.kind == "frame" and g.streams == 1), None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (schema version 2): the tables inside ``dsp``, one init key per state."""
        d = asdict(self)
        tables, runtime = d.pop("tables"), d.pop("runtime")
        d["dsp"] = {**d["dsp"], **tables}
        d["states"] = [s.to_dict() for s in self.states]
        d["runtime"] = runtime
        d["schema_version"] = SCHEMA_VERSION
        if not d["source_model"]:
            del d["source_model"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        """Build a manifest from its JSON value; ConfigError lists every problem found (the
        structure first; then, once it builds, the consistency of graphs, tensors and states)."""
        from dfnet4_sdk.manifest_check import consistency_problems, structure_problems
        from dfnet4_sdk.manifest_versions import upgrade

        data, problems = upgrade(data)
        problems += structure_problems(data)
        if problems:
            raise ConfigError("invalid manifest: " + "; ".join(problems))
        graphs = tuple(
            GraphSpec(**{**g, "inputs": tuple(TensorSpec(**t) for t in g["inputs"]),
                         "outputs": tuple(TensorSpec(**t) for t in g["outputs"])})
            for g in data["graphs"]
        )
        table_keys = {f.name for f in fields(DspTables)}
        manifest = cls(
            **{
                **data,
                "dsp": DspParams.from_dict({k: v for k, v in data["dsp"].items() if k not in table_keys}),
                "tables": DspTables(**{k: v for k, v in data["dsp"].items() if k in table_keys}),
                "runtime": RuntimeSpec(**data["runtime"]),
                "streaming": StreamingSpec(**data["streaming"]),
                "graphs": graphs,
                "states": tuple(StateSpec(**s) for s in data["states"]),
                "schema_version": SCHEMA_VERSION,  # a v1 manifest is now upgraded
            }
        )
        problems = consistency_problems(manifest)
        if problems:
            raise ConfigError("inconsistent manifest: " + "; ".join(problems))
        return manifest

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        return cls.from_dict(json.loads(text))

