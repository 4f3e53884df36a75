"""onnxruntime backend: one InferenceSession per graph of an ONNX bundle."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import onnxruntime as ort

from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.errors import BundleError
from dfnet4_sdk.manifest import GraphSpec
from dfnet4_sdk.manifest_check import declaration_problems
from dfnet4_sdk.runtimes.base import check_bind_buffers


class OnnxBackend:
    name = "onnx"

    def __init__(self, bundle: Bundle, num_threads: int = 1):
        if not isinstance(bundle, Bundle):
            raise TypeError(f"OnnxBackend needs a Bundle, got {type(bundle).__name__}")
        if bundle.manifest.backend != "onnx":
            raise BundleError(f"bundle {bundle.root} was exported for {bundle.manifest.backend!r}, not onnx")
        self.manifest = bundle.manifest
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self._sessions = _load_sessions(bundle, opts)
        self._inputs = {g.name: g.input_names for g in self.manifest.graphs}
        self._outputs = {g.name: list(g.output_names) for g in self.manifest.graphs}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {k: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self._inputs[graph]}
        values = self._sessions[graph].run(self._outputs[graph], feed)
        return dict(zip(self._outputs[graph], values))

    def bind(self, graph: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """One frame of ``graph`` on caller-owned buffers (``runtimes.base.BindsBuffers``):
        onnxruntime reads and writes them through an IOBinding, so a call converts and
        allocates nothing."""
        spec = self.manifest.graph(graph)
        session = self._sessions[graph]
        binding = session.io_binding()
        check_bind_buffers(spec, inputs, outputs)
        for tensors, arrays, bind in ((spec.inputs, inputs, binding.bind_input), (spec.outputs, outputs, binding.bind_output)):
            for t in tensors:
                a = arrays[t.name]
                bind(t.name, "cpu", 0, np.float32, list(a.shape), a.ctypes.data)
        run = session.run_with_iobinding
        return lambda: run(binding)


def _load_sessions(bundle: Bundle, opts: ort.SessionOptions) -> dict[str, ort.InferenceSession]:
    """A session per graph, once every file is shown to match the manifest (tensor names and
    shapes, and the DSP facts in its ``metadata_props``); BundleError lists every mismatch."""
    sessions, problems = {}, []
    for spec in bundle.manifest.graphs:
        path = bundle.graph_path(spec.name)
        try:
            session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for a corrupt or foreign file
            problems.append(f"{path.name} is not a loadable ONNX graph ({type(e).__name__}: {e})")
            continue
        found = declaration_problems(
            bundle.manifest, spec, session.get_modelmeta().custom_metadata_map,
            {i.name: tuple(i.shape) for i in session.get_inputs()}, {o.name: tuple(o.shape) for o in session.get_outputs()},
        )
        problems += [f"{path.name}: {p}" for p in found]
        sessions[spec.name] = session
    if problems:
        raise BundleError(f"bundle {bundle.root} does not match its graph files (edited manifest or corrupt file; "
                          "re-export it with `dfsdk export`): " + "; ".join(problems))
    return sessions
