"""What every converter traces: a graph of the plan as a module with positional inputs and
outputs in manifest order (inputs as the spec lists them; outputs: the non-state ones in spec
order, then the new states in state-input order). Names are restored by the converter from the
GraphSpec."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dfnet4_sdk.manifest import GraphSpec
from dfnet4_sdk.models.base import EnhancementModel, StreamingComponent
from dfnet4_sdk.states import state_input_name, state_name


class StepModule(nn.Module):
    """A component's exact ``step``."""

    def __init__(self, component: StreamingComponent, spec: GraphSpec):
        super().__init__()
        self.component = component
        self.feature_names = [t.name for t in spec.inputs if t.role != "state_in"]
        self.state_names = [state_name(t.name) for t in spec.inputs if t.role == "state_in"]
        self.output_names = [t.name for t in spec.outputs if t.role != "state_out"]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        k = len(self.feature_names)
        inputs = dict(zip(self.feature_names, args[:k]))
        state = dict(zip(self.state_names, args[k:]))
        outputs, new_state = self.component.step(inputs, state)
        return tuple(outputs[n] for n in self.output_names) + tuple(new_state[n] for n in self.state_names)


class FrameStepModule(nn.Module):
    """The fused frame graph (models/frame.py)."""

    def __init__(self, model: EnhancementModel, spec: GraphSpec):
        super().__init__()
        from dfnet4_sdk.models.frame import FrameModule

        self.frame = FrameModule(model)
        self.input_names = [t.name for t in spec.inputs]
        self.output_names = [t.name for t in spec.outputs if t.role != "state_out"]
        self.state_names = [state_name(t.name) for t in spec.inputs if t.role == "state_in"]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = dict(zip(self.input_names, args))
        state = {n: values[state_input_name(n)] for n in self.state_names}
        outputs, new_state = self.frame(values["spec"], values["gating_thresholds_db"], state, values.get("frame_samples"))
        return tuple(outputs[n] for n in self.output_names) + tuple(new_state[n] for n in self.state_names)


class BlockModule(nn.Module):
    """A component's sequence form over a fixed block of frames (offline path)."""

    def __init__(self, component: StreamingComponent, spec: GraphSpec):
        super().__init__()
        self.step_module = StepModule(component, spec)

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.step_module
        k = len(m.feature_names)
        outputs, new_state = m.component.forward(dict(zip(m.feature_names, args[:k])), dict(zip(m.state_names, args[k:])))
        return tuple(outputs[n] for n in m.output_names) + tuple(new_state[n] for n in m.state_names)


def graph_module(model: EnhancementModel, spec: GraphSpec) -> nn.Module:
    """The module a converter traces for ``spec`` (by its kind)."""
    if spec.kind == "block":
        return BlockModule(model.components[spec.name.removesuffix("_block")], spec)
    if spec.kind == "frame":
        return FrameStepModule(model, spec)
    return StepModule(model.components[spec.name], spec)


def example_inputs(spec: GraphSpec, first_call: dict[str, np.ndarray] | None) -> tuple[torch.Tensor, ...]:
    """Trace inputs: the graph's first recorded PyTorch call (real values), or zeros for a
    graph the reference run does not call (the block graphs)."""
    if first_call is None:
        return tuple(torch.zeros(t.shape) for t in spec.inputs)
    return tuple(torch.from_numpy(np.asarray(first_call[t.name])) for t in spec.inputs)
