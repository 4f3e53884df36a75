"""The backend protocol: load the graphs a manifest names, run one step of one graph.

A backend holds no stream state. Inputs and outputs are passed by name; state tensors are
ordinary inputs (``state_in.<name>``) and outputs (``state_out.<name>``). Everything else
(front-end DSP, DF history, gating, delay) lives in ``dfnet4_sdk.stream``.
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from dfnet4_sdk.errors import BackendNotAvailableError
from dfnet4_sdk.manifest import Manifest

# name -> (module, class, pip extra that provides it)
_REGISTRY = {
    "torch": ("dfnet4_sdk.runtimes.torch_backend", "TorchBackend", "torch"),
    "onnx": ("dfnet4_sdk.runtimes.onnx_backend", "OnnxBackend", "onnx"),
    "tflite": ("dfnet4_sdk.runtimes.tflite_backend", "TfliteBackend", "tflite"),
    "coreml": ("dfnet4_sdk.runtimes.coreml_backend", "CoremlBackend", "coreml"),
}
BACKEND_NAMES = tuple(_REGISTRY)


@runtime_checkable
class Backend(Protocol):
    name: str
    manifest: Manifest

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one frame of ``graph``; returns every output by name (state outputs included)."""
        ...


def load_backend(name: str, model: Any, num_threads: int = 1) -> Backend:
    """Instantiate backend ``name`` for ``model`` (what that backend loads: see its module)."""
    if name not in _REGISTRY:
        raise BackendNotAvailableError(f"unknown backend {name!r}; choose one of {list(BACKEND_NAMES)}")
    module_name, class_name, extra = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendNotAvailableError(
            f"backend {name!r} needs a package that is not installed ({e.name or e}); "
            f'install it with: pip install "dfnet4-sdk[{extra}]"'
        ) from e
    return getattr(module, class_name)(model, num_threads=num_threads)
