"""The plan pass of the export pipeline: which graphs a target x precision export holds, at which
precision each, decided from what the target's converter declares it can carry.

Each converter (``exporters/onnx.py``, ``tflite.py``, ``coreml.py``) declares a ``Capabilities``
as data: its precisions, at which precisions it carries the fused frame graph and the block
graphs of the offline path (frames per call), which layers it cannot carry in a block graph,
and at which precisions ``convert`` takes calibration frames, each restriction with the
measurement or fault that explains it. ``plan_export`` reads only that, so the generic pipeline
(``exporters/base.py``) holds no target's special case.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from torch import nn

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.manifest import Manifest

# Precisions at which a converter without declared capabilities (a plugin) gets calibration
# frames, when its ``convert`` has a ``calibration`` parameter.
QUANTIZED_PRECISIONS = ("int8",)


@dataclass(frozen=True)
class Capabilities:
    """What one converter can export, declared as data (see the module docstring).

    ``frame_graph``: precisions whose export includes the fused frame graph by default;
    ``frame_streams``: precision -> streams per call of the batched frame graph (``frame_streams``,
    ``exporters/streams.py``; -1: any number), for the precisions whose export includes it with
    the frame graph;
    ``block_frames``: precision -> frames per block-graph call, for the precisions whose export
    includes the block graphs by default; ``no_block_graphs_with``: layer types whose sequence
    form the target cannot carry usefully (a model holding one gets no block graphs);
    ``calibrated``: precisions at which ``convert`` takes a ``calibration`` keyword (the
    graph's recorded per-frame inputs); ``why``: the reason for each restriction, by field name."""

    precisions: tuple[str, ...]
    frame_graph: tuple[str, ...] = ()
    frame_streams: Mapping[str, int] = field(default_factory=dict)
    block_frames: Mapping[str, int] = field(default_factory=dict)
    no_block_graphs_with: tuple[type[nn.Module], ...] = ()
    calibrated: tuple[str, ...] = ()
    why: Mapping[str, str] = field(default_factory=dict)


def capabilities_of(converter) -> Capabilities:
    """The converter's declared capabilities; for a converter that declares none (a plugin
    written against the older protocol): its precisions, no optional graphs, and calibration
    where its ``convert`` takes it."""
    caps = getattr(converter, "capabilities", None)
    if caps is not None:
        return caps
    takes = "calibration" in inspect.signature(converter.convert).parameters
    precisions = tuple(converter.precisions)
    return Capabilities(precisions, calibrated=tuple(p for p in precisions if takes and p in QUANTIZED_PRECISIONS))


@dataclass(frozen=True)
class ExportPlan:
    """What an export will write before anything is converted.

    ``manifest``: the model described for this target and precision (``describe_model``),
    with every graph to convert and its precision (files and hashes are filled in later);
    ``optional_graphs``: graphs the pipeline may leave out when they fail validation (block
    graphs that were not asked for: they only make ``enhance`` faster); ``left_out``: why a
    graph the model has is not in this export."""

    target: str
    precision: str
    manifest: Manifest
    calibrated: bool
    optional_graphs: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()

    @property
    def graph_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.manifest.graphs)

    @property
    def graph_precisions(self) -> dict[str, str]:
        return {g.name: g.precision for g in self.manifest.graphs}


def plan_export(model: nn.Module, converter, precision: str, fused: bool | None = None,
                blocks: bool | None = None, streams: bool = False) -> ExportPlan:
    """Plan ``model``'s export by ``converter`` at ``precision``. ``fused`` / ``blocks``: include
    the fused frame graph / the block graphs (None: what the converter declares for this
    precision; block graphs asked for with True must pass validation, the default ones may be
    left out). ``streams``: also the batched frame graph ``frame_streams`` (``StreamPool``), where
    the converter declares it for this precision (asked for only: it serves many-stream servers)."""
    from dfnet4_sdk.exporters.validate import TOLERANCES
    from dfnet4_sdk.models.manifest_builder import BLOCK_FRAMES, describe_model

    target, caps = converter.target, capabilities_of(converter)
    problems = []
    if precision not in caps.precisions:
        problems.append(f"{target} export supports precisions {list(caps.precisions)}, not {precision!r}")
    elif (target, precision) not in TOLERANCES:
        problems.append(f"no tolerance is declared for {target} {precision} (exporters/validate.py TOLERANCES); "
                        "declare one before exporting it")
    if problems:
        raise ConfigError("; ".join(problems))
    left_out = []
    if fused is None:
        fused = precision in caps.frame_graph
        if not fused:
            left_out.append(f"frame graph: not at {precision} for {target}" + _because(caps, "frame_graph"))
    explicit_blocks = bool(blocks)
    if blocks is None:
        unrolled = sorted({type(m).__name__ for m in model.modules() if isinstance(m, caps.no_block_graphs_with)})
        blocks = precision in caps.block_frames and not unrolled
        if precision not in caps.block_frames:
            left_out.append(f"block graphs: not at {precision} for {target}" + _because(caps, "block_frames"))
        elif unrolled:
            left_out.append(f"block graphs: {target} with {', '.join(unrolled)}" + _because(caps, "no_block_graphs_with"))
    manifest = describe_model(model, backend=target, precision=precision, include_frame=fused,
                              block_frames=caps.block_frames.get(precision, BLOCK_FRAMES) if blocks else None)
    if streams:
        from dfnet4_sdk.exporters.streams import describe_streams_graph

        if not fused or precision not in caps.frame_streams:
            why = "the frame graph is not in this export" if not fused else (
                f"{target} carries it at {sorted(caps.frame_streams) or 'no precision'}" + _because(caps, "frame_streams"))
            raise ConfigError(f"{target} export at {precision} cannot carry the batched frame graph frame_streams: {why}; "
                              "export without streams (StreamPool then calls the frame graph once per stream)")
        batched = describe_streams_graph(manifest.frame_graph, caps.frame_streams[precision])
        manifest = replace(manifest, graphs=(*manifest.graphs, batched))
    optional = () if explicit_blocks else tuple(g.name for g in manifest.graphs if g.kind == "block")
    return ExportPlan(target, precision, manifest, precision in caps.calibrated, optional, tuple(left_out))


def _because(caps: Capabilities, key: str) -> str:
    return f" ({caps.why[key]})" if key in caps.why else ""
