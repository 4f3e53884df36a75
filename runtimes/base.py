"""The backend protocol: load the graphs a manifest names, run one step of one graph.

A backend holds no stream state. Inputs and outputs are passed by name; state tensors are
ordinary inputs (``state_in.<name>``) and outputs (``state_out.<name>``). Everything else
(front-end DSP, DF history, gating, delay) lives in ``dfnet4_sdk.stream``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np

from dfnet4_sdk.errors import BackendNotAvailableError, ConfigError
from dfnet4_sdk.manifest import GraphSpec, Manifest, shape_matches

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


@runtime_checkable
class BindsBuffers(Protocol):
    """Optional: a backend that can run a graph on caller-owned buffers, with no per-call
    conversion or allocation. The stream uses it for the fused frame graph when present."""

    def bind(self, graph: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """A call that runs one frame of ``graph`` reading ``inputs`` and writing every output
        into ``outputs`` in place. The arrays (C-contiguous float32, manifest shapes) belong to
        the caller, which keeps them alive and must not pass the same array as input and output."""
        ...


def check_bind_buffers(graph: GraphSpec, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    """What every ``bind`` checks first: each tensor of ``graph`` has a C-contiguous float32
    buffer of the manifest's shape (a -1 stream axis takes any number of rows). Raises ConfigError naming
    every mismatch."""
    problems = []
    for tensors, arrays in ((graph.inputs, inputs), (graph.outputs, outputs)):
        for t in tensors:
            a = arrays.get(t.name)
            if a is None or a.dtype != np.float32 or not a.flags.c_contiguous or not shape_matches(a.shape, t.shape):
                got = "missing" if a is None else f"{a.dtype} {a.shape}{'' if a.flags.c_contiguous else ' non-contiguous'}"
                problems.append(f"{t.name}: expected C-contiguous float32 {tuple(t.shape)}, got {got}")
    if problems:
        raise ConfigError(f"cannot bind graph {graph.name!r}: " + "; ".join(problems))


def streams_graph(backend: Backend) -> tuple[str, int] | None:
    """The graph that runs the fused frame graph for many streams per call, and how many streams
    it takes (-1: any number, along the first axis of every input and output): the bundle's
    batched frame graph (``frame_streams``), or a frame graph the backend runs batched as it is
    (``frame_streams`` attribute: the torch backend); None when the backend cannot batch."""
    graph = next((g for g in backend.manifest.graphs if g.kind == "frame" and getattr(g, "streams", 1) != 1), None)
    if graph is not None:
        return graph.name, graph.streams
    return getattr(backend, "frame_streams", None)


def load_backend(name: str, model: Any, num_threads: int = 1) -> Backend:
    """Instantiate backend ``name`` for ``model`` (what that backend loads: see its module)."""
    from dfnet4_sdk.registry import load_registered

    return load_registered(_REGISTRY, name, "backend", BackendNotAvailableError)(model, num_threads=num_threads)
