"""Core ML backend: one ``.mlpackage`` per graph of a CoreML bundle.

On macOS each package is loaded with ``coremltools.models.MLModel`` and run with ``predict``
(``execution == "coreml-predict"``). Elsewhere Core ML cannot run, so the ML Program stored in
each package is read back and evaluated by the numpy reference interpreter
(``execution == "mil-reference-interpreter"``): the same program, numpy's arithmetic. Reports
and tests should say which one ran.

Tensors are passed by our names; the manifest's ``tensor_names`` maps them to the Core ML
feature names (``state_in.enc_gru`` -> ``state_in__enc_gru``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

import numpy as np

from dfnet4_sdk.bundle import Bundle
from dfnet4_sdk.errors import BackendNotAvailableError, BundleError
from dfnet4_sdk.manifest import GraphSpec
from dfnet4_sdk.manifest_check import declaration_problems

PREDICT = "coreml-predict"
INTERPRETER = "mil-reference-interpreter"
COMPUTE_UNITS = ("cpu_only", "cpu_and_gpu", "cpu_and_ne", "all")


class CoremlBackend:
    """Args:
        bundle: a CoreML bundle (``manifest.backend == "coreml"``).
        num_threads: accepted for the common backend signature; Core ML picks its own threads
            and the interpreter uses numpy's.
        execution: None picks ``coreml-predict`` on macOS and ``mil-reference-interpreter``
            elsewhere; name one to force it (the interpreter also runs on macOS).
        compute_units: Core ML compute units for ``predict`` (one of ``COMPUTE_UNITS``).
    """

    name = "coreml"

    def __init__(self, bundle: Bundle, num_threads: int = 1, execution: str | None = None,
                 compute_units: str = "cpu_only"):
        if not isinstance(bundle, Bundle):
            raise TypeError(f"CoremlBackend needs a Bundle, got {type(bundle).__name__}")
        if bundle.manifest.backend != "coreml":
            raise BundleError(
                f"bundle {bundle.root} was exported for {bundle.manifest.backend!r}, not coreml; "
                "export one with `dfsdk export --target coreml`"
            )
        if execution is None:
            execution = PREDICT if sys.platform == "darwin" else INTERPRETER
        if execution not in (PREDICT, INTERPRETER):
            raise ValueError(f"execution must be {PREDICT!r} or {INTERPRETER!r}, got {execution!r}")
        if execution == PREDICT and sys.platform != "darwin":
            raise BackendNotAvailableError(
                f"Core ML predict needs macOS (this is {sys.platform}); use execution={INTERPRETER!r} "
                "to check the bundle with the numpy MIL interpreter"
            )
        if compute_units not in COMPUTE_UNITS:
            raise ValueError(f"compute_units must be one of {COMPUTE_UNITS}, got {compute_units!r}")
        self.manifest = bundle.manifest
        self.execution = execution
        self._inputs = {g.name: g.input_names for g in self.manifest.graphs}
        self._outputs = {g.name: g.output_names for g in self.manifest.graphs}
        self._file_names = {  # our name -> Core ML feature name
            g.name: {n: g.tensor_names.get(n, n) for n in (*g.input_names, *g.output_names)}
            for g in self.manifest.graphs
        }
        self._shapes = {g.name: {t.name: t.shape for t in g.outputs} for g in self.manifest.graphs}
        self._run: dict[str, Callable[[dict], Mapping[str, np.ndarray]]] = {}
        self.interpreters = {}  # graph -> MilInterpreter, when the interpreter runs
        problems = [p for g in self.manifest.graphs for p in _declaration_problems(bundle, g)]
        if problems:
            raise BundleError(f"bundle {bundle.root} does not match its graph files (edited manifest or corrupt file; "
                              "re-export it with `dfsdk export`): " + "; ".join(problems))
        for g in self.manifest.graphs:
            path = bundle.graph_path(g.name)
            if execution == PREDICT:
                self._run[g.name] = _load_predict(path, compute_units)
                continue
            from dfnet4_sdk.runtimes.mil_interpreter import MilInterpreter, load_program

            try:
                self.interpreters[g.name] = MilInterpreter(load_program(path))
            except (ValueError, OSError) as e:
                raise BundleError(f"{path} is not a readable Core ML ML Program: {e}") from e
            self._run[g.name] = self.interpreters[g.name].run

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._file_names[graph]
        feed = {names[k]: np.ascontiguousarray(inputs[k], dtype=np.float32) for k in self._inputs[graph]}
        values = self._run[graph](feed)
        shapes = self._shapes[graph]
        return {k: np.asarray(values[names[k]], dtype=np.float32).reshape(shapes[k]) for k in self._outputs[graph]}


def _load_predict(path, compute_units: str) -> Callable[[dict], Mapping[str, np.ndarray]]:
    import coremltools as ct

    units = {
        "cpu_only": ct.ComputeUnit.CPU_ONLY,
        "cpu_and_gpu": ct.ComputeUnit.CPU_AND_GPU,
        "cpu_and_ne": ct.ComputeUnit.CPU_AND_NE,
        "all": ct.ComputeUnit.ALL,
    }[compute_units]
    return ct.models.MLModel(str(path), compute_units=units).predict


def _declaration_problems(bundle: Bundle, spec: GraphSpec) -> list[str]:
    """The package's feature names and shapes and its user-defined metadata (the DSP facts
    the exporter wrote) against the manifest's entry for it."""
    import coremltools as ct

    path = bundle.graph_path(spec.name)
    try:
        description = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description
    except Exception as e:  # coremltools raises many types for a corrupt or foreign package
        return [f"{path.name} is not a readable Core ML package ({type(e).__name__}: {e})"]

    def shapes(features) -> dict[str, tuple]:
        return {f.name: tuple(int(d) for d in f.type.multiArrayType.shape) for f in features}

    found = declaration_problems(bundle.manifest, spec, dict(description.metadata.userDefined),
                                 shapes(description.input), shapes(description.output))
    return [f"{path.name}: {p}" for p in found]
