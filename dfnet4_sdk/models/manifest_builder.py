"""Build the manifest that describes a PyTorch model's three streaming graphs."""

from __future__ import annotations

from dataclasses import replace

import torch

from dfnet4_sdk import __version__
from dfnet4_sdk.manifest import FRAME_STATE_ROLES, GraphSpec, Manifest, StreamingSpec, TensorSpec
from dfnet4_sdk.models.base import COMPONENT_NAMES, MODEL_OUTPUT_SHAPES, EnhancementModel
from dfnet4_sdk.states import StateSpec

BLOCK_FRAMES = 100  # frames per offline block graph call (1 s at a 10 ms hop)


def frame_input_example(model: EnhancementModel) -> dict[str, torch.Tensor]:
    """Zero tensors for one frame of every frame input the model's enc takes."""
    d = model.dsp
    shapes = {
        "feat_erb": (1, 1, 1, d.nb_erb),
        "feat_spec": (1, 2, 1, d.nb_df),
        "frame_samples": (1, 1, 1, d.hop_size_samples),
    }
    return {name: torch.zeros(shapes[name]) for name in model.frame_input_names}


@torch.no_grad()
def describe_model(
    model: EnhancementModel,
    backend: str = "torch",
    precision: str = "fp32",
    include_frame: bool = True,
    block_frames: int | None = BLOCK_FRAMES,
) -> Manifest:
    """Run one zero frame through ``step`` to learn every tensor's shape, and describe the three
    component graphs plus, if ``include_frame``, the fused frame graph (models/frame.py) and, if
    ``block_frames``, the block graphs (each component's sequence form over that many frames,
    state carried between blocks) that the offline path uses."""
    graphs = _describe_components(model, frame_input_example(model), "step", precision)
    states = [replace(s, graph=name) for name, comp in model.components.items() for s in comp.state_specs()]
    if include_frame:
        frame_graph, frame_states = describe_frame_graph(model, precision)
        graphs.append(frame_graph)
        states += frame_states
    if block_frames:
        graphs += describe_block_graphs(model, block_frames, precision)
    return Manifest(
        model_family=model.family,
        model_config=model.config_dict(),
        dsp=model.dsp,
        streaming=StreamingSpec(model.df_order, model.df_lookahead_frames, model.conv_lookahead_frames),
        graphs=tuple(graphs),
        states=tuple(states),
        sdk_version=__version__,
        backend=backend,
        precision=precision,
    )


@torch.no_grad()
def describe_block_graphs(model: EnhancementModel, block_frames: int, precision: str = "fp32") -> list[GraphSpec]:
    """``<component>_block`` graphs: the sequence form over ``block_frames`` frames, with the
    same state tensors as the single-frame graphs."""
    values = {k: v.repeat_interleave(block_frames, dim=2) for k, v in frame_input_example(model).items()}
    graphs = _describe_components(model, values, "forward", precision, suffix="_block", kind="block")
    return [replace(g, frames=block_frames) for g in graphs]


def _describe_components(
    model: EnhancementModel, values: dict, method: str, precision: str, suffix: str = "", kind: str = "component"
) -> list[GraphSpec]:
    """Run ``method`` (step or forward) of each component on ``values`` and describe its graph."""
    roles = {name: "feature" for name in values}
    graphs = []
    for name in COMPONENT_NAMES:
        comp = model.components[name]
        specs = comp.state_specs()
        outputs, new_state = getattr(comp, method)({k: values[k] for k in comp.input_names}, comp.initial_state(1))
        inputs = [TensorSpec(k, tuple(values[k].shape), roles[k]) for k in comp.input_names]
        inputs += [TensorSpec(s.input_name, s.shape, "state_in") for s in specs]
        outs = []
        for k, v in outputs.items():
            role = "output" if k in MODEL_OUTPUT_SHAPES else "intermediate"
            outs.append(TensorSpec(k, tuple(v.shape), role))
            roles[k] = role
        outs += [TensorSpec(s.output_name, tuple(new_state[s.name].shape), "state_out") for s in specs]
        values.update(outputs)
        graphs.append(GraphSpec(name=f"{name}{suffix}", inputs=tuple(inputs), outputs=tuple(outs),
                                precision=precision, kind=kind))
    return graphs


@torch.no_grad()
def describe_frame_graph(model: EnhancementModel, precision: str = "fp32") -> tuple[GraphSpec, list[StateSpec]]:
    from dfnet4_sdk.models.frame import FRAME_GRAPH, THRESHOLDS_INPUT, FrameModule

    frame = FrameModule(model)
    spec = torch.zeros(1, model.dsp.freq_bins, 2)
    samples = frame_input_example(model).get("frame_samples")
    outputs, new_state = frame(spec, torch.tensor([-15.0, 35.0, 35.0]), frame.initial_state(), samples)
    specs = frame.state_specs()
    inputs = [TensorSpec("spec", tuple(spec.shape), "feature"), TensorSpec(THRESHOLDS_INPUT, (3,), "feature")]
    if samples is not None:
        inputs.append(TensorSpec("frame_samples", tuple(samples.shape), "feature"))
    inputs += [TensorSpec(s.input_name, s.shape, "state_in") for s in specs]
    outs = [TensorSpec(k, tuple(v.shape), "output") for k, v in outputs.items()]
    outs += [TensorSpec(s.output_name, tuple(new_state[s.name].shape), "state_out") for s in specs]
    own = [s for s in specs if s.name.startswith("frame_")]
    states = [replace(s, graph=FRAME_GRAPH, role=FRAME_STATE_ROLES[s.name]) for s in own]
    graph = GraphSpec(name=FRAME_GRAPH, inputs=tuple(inputs), outputs=tuple(outs), precision=precision, kind="frame")
    return graph, states
