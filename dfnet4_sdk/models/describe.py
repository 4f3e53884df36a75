"""Build the manifest that describes a PyTorch model's three streaming graphs."""

from __future__ import annotations

import torch

from dfnet4_sdk import __version__
from dfnet4_sdk.manifest import GraphSpec, Manifest, StateSpecEntry, StreamingSpec, TensorSpec
from dfnet4_sdk.models.base import COMPONENT_NAMES, MODEL_OUTPUT_SHAPES, EnhancementModel


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
def describe_model(model: EnhancementModel, backend: str = "torch", precision: str = "fp32") -> Manifest:
    """Run one zero frame through ``step`` to learn every tensor's shape, and describe the graphs."""
    values = frame_input_example(model)
    roles = {name: "feature" for name in values}
    graphs, states = [], []
    for name in COMPONENT_NAMES:
        comp = model.components[name]
        specs = comp.state_specs()
        state = comp.initial_state(1)
        outputs, new_state = comp.step({k: values[k] for k in comp.input_names}, state)
        inputs = [TensorSpec(k, tuple(values[k].shape), roles[k]) for k in comp.input_names]
        inputs += [TensorSpec(s.input_name, s.shape, "state_in") for s in specs]
        outs = []
        for k, v in outputs.items():
            role = "output" if k in MODEL_OUTPUT_SHAPES else "intermediate"
            outs.append(TensorSpec(k, tuple(v.shape), role))
            roles[k] = role
        outs += [TensorSpec(s.output_name, tuple(new_state[s.name].shape), "state_out") for s in specs]
        values.update(outputs)
        states += [StateSpecEntry(s.name, name, s.shape, s.init_value) for s in specs]
        graphs.append(GraphSpec(name=name, inputs=tuple(inputs), outputs=tuple(outs), precision=precision))
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
