"""PyTorch reference backend: runs each component's exact single-frame ``step``."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch

from dfnet4_sdk.models.base import EnhancementModel
from dfnet4_sdk.models.describe import describe_model


class TorchBackend:
    name = "torch"

    def __init__(self, model: EnhancementModel, num_threads: int = 1):
        if not isinstance(model, EnhancementModel):
            raise TypeError(f"TorchBackend needs an EnhancementModel, got {type(model).__name__}")
        # torch's thread pool is process-wide; the last backend created decides it.
        torch.set_num_threads(num_threads)
        self.model = model.eval()
        self.manifest = describe_model(model, backend=self.name)
        self._components = model.components
        self._state_names = {
            g.name: [(s.name, s.input_name, s.output_name) for s in self.manifest.states_of(g.name)]
            for g in self.manifest.graphs
        }

    @torch.inference_mode()
    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        comp = self._components[graph]
        tensors = {k: torch.from_numpy(np.asarray(inputs[k], dtype=np.float32)) for k in comp.input_names}
        state = {name: torch.from_numpy(np.asarray(inputs[i], dtype=np.float32)) for name, i, _ in self._state_names[graph]}
        outputs, new_state = comp.step(tensors, state)
        result = {k: v.numpy() for k, v in outputs.items()}
        for name, _, o in self._state_names[graph]:
            result[o] = new_state[name].numpy()
        return result
