"""A streaming state tensor and the names of its graph input and output: one home.

Every conv time buffer, recurrent state and front-end state held inside a graph is an explicit
tensor that a graph reads as ``state_in.<name>`` and returns as ``state_out.<name>``; the caller
feeds each output back into the input of the same name on the next call. ``StateSpec`` describes
one such tensor for a model component (``state_specs()``) and for a manifest (``states``, where
``graph`` and ``role`` are set); the functions below build and read the two tensor names, so no
other module writes the prefixes by hand.

No torch at import: the manifest and the numpy runtime use this module without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

STATE_IN_PREFIX = "state_in."
STATE_OUT_PREFIX = "state_out."


def state_input_name(name: str) -> str:
    """``enc_gru`` -> ``state_in.enc_gru``: the graph input a state is read from."""
    return STATE_IN_PREFIX + name


def state_output_name(name: str) -> str:
    """``enc_gru`` -> ``state_out.enc_gru``: the graph output a state's next value comes back on."""
    return STATE_OUT_PREFIX + name


def is_state_input(tensor_name: str) -> bool:
    return tensor_name.startswith(STATE_IN_PREFIX)


def is_state_output(tensor_name: str) -> bool:
    return tensor_name.startswith(STATE_OUT_PREFIX)


def state_name(tensor_name: str) -> str:
    """``state_in.enc_gru`` or ``state_out.enc_gru`` -> ``enc_gru``; any other name unchanged."""
    for prefix in (STATE_IN_PREFIX, STATE_OUT_PREFIX):
        if tensor_name.startswith(prefix):
            return tensor_name[len(prefix):]
    return tensor_name


def fed_back_as(output_name: str) -> str:
    """``state_out.enc_gru`` -> ``state_in.enc_gru``: the input a state output feeds next call."""
    if not is_state_output(output_name):
        raise ValueError(f"{output_name!r} is not a state output (expected a name starting with {STATE_OUT_PREFIX!r})")
    return state_input_name(state_name(output_name))


def state_pairs(tensor_names: Iterable[str]) -> list[tuple[str, str]]:
    """(``state_in.<name>``, ``state_out.<name>``) for each state input among ``tensor_names``,
    in their order: what a caller feeds back after each call."""
    return [(n, state_output_name(state_name(n))) for n in tensor_names if is_state_input(n)]


@dataclass(frozen=True)
class StateSpec:
    """One explicit streaming state tensor (shape at batch size 1, batch on axis 0).

    ``graph`` and ``role`` are set where the state is listed in a manifest: the graph that reads
    and returns it, and its place in the recipe (``manifest.STATE_ROLES``); a model component's
    own ``state_specs()`` leave them at their defaults.
    """

    name: str
    shape: tuple[int, ...]
    init_value: float = 0.0
    init_values: tuple[float, ...] | None = None  # per-element initial values (batch item 0), if not constant
    graph: str = ""
    role: str = "model"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.init_values is not None:
            object.__setattr__(self, "init_values", tuple(float(v) for v in self.init_values))

    @property
    def input_name(self) -> str:
        return state_input_name(self.name)

    @property
    def output_name(self) -> str:
        return state_output_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's JSON form: exactly one of init_value / init_values."""
        d: dict[str, Any] = {"name": self.name, "graph": self.graph, "shape": list(self.shape)}
        if self.init_values is not None:
            d["init_values"] = list(self.init_values)
        else:
            d["init_value"] = self.init_value
        d["role"] = self.role
        return d

    def initial(self, batch_size: int | None = None) -> np.ndarray:
        """The initial value as float32, of ``shape`` (None) or of ``[batch_size, *shape[1:]]``
        with every batch item equal."""
        shape = self.shape if batch_size is None else (batch_size, *self.shape[1:])
        if self.init_values is None:
            return np.full(shape, self.init_value, dtype=np.float32)
        values = np.asarray(self.init_values, dtype=np.float32)
        if batch_size is None:
            return values.reshape(shape).copy()
        return np.repeat(values.reshape(1, *self.shape[1:]), batch_size, axis=0)

    def initial_tensor(self, batch_size: int = 1, device=None, dtype=None):
        """``initial`` as a torch tensor (float32 unless ``dtype``) on ``device``."""
        import torch

        return torch.from_numpy(self.initial(batch_size)).to(device=device, dtype=dtype or torch.float32)
