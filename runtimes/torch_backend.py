"""PyTorch reference backend: runs each component's exact single-frame ``step``."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.models.manifest_builder import describe_model


class TorchBackend:
    name = "torch"
    # The frame module takes any number of streams along its first axis (``runtimes.base.streams_graph``).
    frame_streams = ("frame", -1)

    def __init__(self, model: EnhancementModel, num_threads: int = 1):
        if not isinstance(model, EnhancementModel):
            raise TypeError(f"TorchBackend needs an EnhancementModel, got {type(model).__name__}")
        # torch's thread pool is process-wide; the last backend created decides it.
        torch.set_num_threads(num_threads)
        from dfnet4_sdk.models.frame import FRAME_GRAPH, FrameModule

        self.model = model.eval()
        self.manifest = describe_model(model, backend=self.name)
        self._components = {**model.components, FRAME_GRAPH: FrameModule(model).eval()}
        self._components.update({f"{name}_block": comp for name, comp in model.components.items()})
        self._state_names = {
            g.name: [(s.name, s.input_name, s.output_name) for s in self.manifest.states_of(g.name)]
            for g in self.manifest.graphs
        }

    @torch.inference_mode()
    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        comp = self._components[graph]
        state = {name: torch.from_numpy(np.asarray(inputs[i], dtype=np.float32)) for name, i, _ in self._state_names[graph]}
        if graph == "frame":
            spec = torch.from_numpy(np.asarray(inputs["spec"], dtype=np.float32))
            thresholds = torch.from_numpy(np.asarray(inputs["gating_thresholds_db"], dtype=np.float32))
            samples = inputs.get("frame_samples")
            samples = None if samples is None else torch.from_numpy(np.asarray(samples, dtype=np.float32))
            outputs, new_state = comp(spec, thresholds, state, samples)
        else:
            tensors = {k: torch.from_numpy(np.asarray(inputs[k], dtype=np.float32)) for k in comp.input_names}
            form = comp.forward if graph.endswith("_block") else comp.step
            outputs, new_state = form(tensors, state)
        result = {k: v.numpy() for k, v in outputs.items()}
        for name, _, o in self._state_names[graph]:
            result[o] = new_state[name].numpy()
        return result
