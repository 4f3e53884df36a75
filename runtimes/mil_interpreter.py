"""A numpy reference interpreter for Core ML ML Programs (MIL), so a CoreML bundle can be checked
numerically where Core ML cannot run (``predict`` is macOS-only).

The program is read back from the saved ``.mlpackage`` (``load_program``), never re-derived from
PyTorch. ``MilInterpreter`` compiles the ``main`` function once: constants become numpy arrays
(int8 weights are dequantized here), every other op becomes a closure over its constant
parameters and the slots of its runtime inputs, and the static shapes fix all conv gather
indices. A call then walks the closures in program order.

Precision: where the program computes in fp16 (``compute_precision=FLOAT16`` inserts casts to
fp16 after the inputs), each fp16-typed op result is rounded to float16 and kept in a float32
array. Inside one op the arithmetic is float32, like the wider accumulators of Apple's GPU and
Neural Engine; rounding to fp16 after every op is what makes an fp16 bundle's check meaningful.
It is numpy's arithmetic, not Apple hardware's.

Only the op types the SDK's graphs emit are implemented (``SUPPORTED_OPS``); any other op raises
``NotImplementedError`` naming it when the program is compiled.

Over 400 lines: one small kernel per MIL op, registered in one table (``_COMPILERS``); split by
op family, the parts would share only that table and the compile loop.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

Kernel = Callable[[list], np.ndarray]
_COMPILERS: dict[str, Callable[[_Ctx], Kernel]] = {}
_ZERO = np.zeros(1, np.float32)


def load_program(mlpackage: str | Path):
    """The MIL program stored in a saved ``.mlpackage`` (its model proto plus weight file)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    mlmodel = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    spec = mlmodel.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{mlpackage} is a Core ML {spec.WhichOneof('Type')!r} model, not an ML Program")
    return milproto_load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)


def _op(*names: str):
    def register(fn):
        for n in names:
            _COMPILERS[n] = fn
        return fn

    return register


class MilInterpreter:
    """One compiled MIL function: ``run({input name: array}) -> {output name: array}``."""

    def __init__(self, program, function: str = "main"):
        from coremltools.converters.mil.mil import types

        f = program.functions[function]
        self.input_names = tuple(f.inputs)
        self.output_names = tuple(v.name for v in f.outputs)
        self.input_shapes = {n: tuple(int(d) for d in v.shape) for n, v in f.inputs.items()}
        self.op_types: dict[str, int] = {}
        self._slots: dict[str, int] = {}
        self._consts: dict[str, np.ndarray] = {}
        self._steps: list[tuple[Kernel, int, bool]] = []
        for name in self.input_names:
            self._slot(name)
        for op in f.operations:
            self.op_types[op.op_type] = self.op_types.get(op.op_type, 0) + 1
            if op.op_type == "const":
                self._consts[op.outputs[0].name] = _as_array(op.outputs[0].val)
                continue
            if op.op_type not in _COMPILERS:
                raise NotImplementedError(
                    f"MIL op {op.op_type!r} ({op.name}) is not implemented by the reference interpreter; "
                    f"it implements {sorted(SUPPORTED_OPS)}"
                )
            if len(op.outputs) != 1:
                raise NotImplementedError(f"MIL op {op.op_type!r} ({op.name}) has {len(op.outputs)} outputs")
            ctx = _Ctx(self, op)
            kernel = _COMPILERS[op.op_type](ctx)
            out = op.outputs[0]
            round16 = out.dtype == types.fp16
            if not ctx.runtime:  # every input is constant (dequantized weights, ...): fold it now
                value = kernel([])
                self._consts[out.name] = _round16(value) if round16 else value
            else:
                self._steps.append((kernel, self._slot(out.name), round16))
        missing = [n for n in self.output_names if n not in self._slots and n not in self._consts]
        if missing:
            raise ValueError(f"MIL function {function!r} never computes its outputs {missing}")

    def _slot(self, name: str) -> int:
        return self._slots.setdefault(name, len(self._slots))

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        env: list = [None] * len(self._slots)
        for name in self.input_names:
            if name not in inputs:
                raise KeyError(f"MIL program input {name!r} not given; inputs are {list(self.input_names)}")
            env[self._slots[name]] = np.asarray(inputs[name], dtype=np.float32).reshape(self.input_shapes[name])
        for kernel, slot, round16 in self._steps:
            value = kernel(env)
            env[slot] = value.astype(np.float16).astype(np.float32) if round16 else value
        return {n: self._consts[n] if n in self._consts else env[self._slots[n]] for n in self.output_names}


class _Ctx:
    """What an op compiler sees: constant parameters by value, runtime inputs as getters."""

    def __init__(self, interp: MilInterpreter, op):
        self.interp, self.op, self.runtime = interp, op, False
        out = op.outputs[0]
        self.out_shape = tuple(int(d) for d in out.shape) if out.shape is not None else None

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def const(self, name: str, default=None):
        var = self.op.inputs.get(name)
        if var is None:
            return default
        if var.name not in self.interp._consts:
            raise NotImplementedError(f"MIL op {self.op.op_type!r} ({self.op.name}): non-constant {name!r}")
        return self.interp._consts[var.name]

    def get(self, name: str) -> Callable[[list], np.ndarray]:
        return self._getter(self.op.inputs[name])

    def get_list(self, name: str) -> list[Callable[[list], np.ndarray]]:
        return [self._getter(v) for v in self.op.inputs[name]]

    def _getter(self, var):
        if var.name in self.interp._consts:
            value = self.interp._consts[var.name]
            return lambda env: value
        if var.name not in self.interp._slots:
            raise ValueError(f"MIL op {self.op.name} reads {var.name!r} before it is computed")
        self.runtime = True
        return operator.itemgetter(self.interp._slots[var.name])


def _as_array(value):
    if isinstance(value, str):
        return value
    value = np.asarray(value)
    return value.astype(np.float32) if value.dtype == np.float16 else value  # fp16 is exact in fp32


def _round16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


# --- elementwise ---------------------------------------------------------------------------------
_UNARY = {
    "relu": lambda x: np.maximum(x, 0, dtype=x.dtype),
    "sigmoid": lambda x: 0.5 * np.tanh(0.5 * x) + 0.5,  # no overflow for large |x|
    "tanh": np.tanh,
    "exp": np.exp,
    "abs": np.abs,
    "softplus": lambda x: np.logaddexp(np.float32(0), x),
    "silu": lambda x: x * (0.5 * np.tanh(0.5 * x) + 0.5),
}
_BINARY = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "real_div": np.divide, "pow": np.power,
    "greater_equal": np.greater_equal,
}


@_op(*_UNARY)
def _unary(c: _Ctx) -> Kernel:
    fn, x = _UNARY[c.op.op_type], c.get("x")
    return lambda env: fn(x(env))


@_op(*_BINARY)
def _binary(c: _Ctx) -> Kernel:
    fn, x, y = _BINARY[c.op.op_type], c.get("x"), c.get("y")
    return lambda env: fn(x(env), y(env))


@_op("rsqrt")
def _rsqrt(c: _Ctx) -> Kernel:
    x, eps = c.get("x"), np.float32(c.const("epsilon", 1e-12))
    return lambda env: 1.0 / np.sqrt(x(env) + eps)


@_op("log")
def _log(c: _Ctx) -> Kernel:
    # MIL's log is log(x + epsilon), epsilon 1e-45 by default (a float32 denormal: log(0) stays finite).
    x, eps = c.get("x"), np.float32(c.const("epsilon", 1e-45))
    return lambda env: np.log(x(env) + eps)


_CAST = {"fp32": np.float32, "fp16": np.float16, "int32": np.int32, "bool": np.bool_}


@_op("cast")
def _cast(c: _Ctx) -> Kernel:
    x, dtype = c.get("x"), str(c.const("dtype"))
    if dtype not in _CAST:
        raise NotImplementedError(f"MIL cast to {dtype!r} ({c.op.name})")
    if dtype == "fp16":  # rounded by the fp16 output type
        return lambda env: np.asarray(x(env), np.float32)
    return lambda env: np.asarray(x(env)).astype(_CAST[dtype])


# --- linear algebra ------------------------------------------------------------------------------
@_op("linear")
def _linear(c: _Ctx) -> Kernel:
    x, wt = c.get("x"), np.ascontiguousarray(c.const("weight").T)
    b = c.const("bias")
    if b is None:
        return lambda env: np.matmul(x(env), wt)
    return lambda env: np.matmul(x(env), wt) + b


@_op("matmul")
def _matmul(c: _Ctx) -> Kernel:
    x, y = c.get("x"), c.get("y")
    tx, ty = bool(c.const("transpose_x", False)), bool(c.const("transpose_y", False))
    sx = (lambda a: np.swapaxes(a, -1, -2)) if tx else (lambda a: a)
    sy = (lambda a: np.swapaxes(a, -1, -2)) if ty else (lambda a: a)
    return lambda env: np.matmul(sx(x(env)), sy(y(env)))


@_op("conv", "conv_transpose")
def _conv(c: _Ctx) -> Kernel:
    """Convolution as one gather (static indices, padding read from an appended zero) and one
    grouped matmul. A transposed conv is the conv of the zero-stuffed input with the flipped,
    channel-swapped kernel."""
    transposed = c.op.op_type == "conv_transpose"
    x_var = c.op.inputs["x"]
    n, cin, *spatial = (int(d) for d in x_var.shape)
    w = c.const("weight").astype(np.float32)
    groups = int(c.const("groups", 1))
    k = list(w.shape[2:])
    nd = len(k)
    strides = [int(s) for s in c.const("strides", [1] * nd)]
    dil = [int(d) for d in c.const("dilations", [1] * nd)]
    pad_type = str(c.const("pad_type", "valid"))
    pad = [int(p) for p in c.const("pad", [0] * 2 * nd)]
    out_spatial = list(c.out_shape[2:])
    if transposed:
        if pad_type not in ("custom", "valid"):
            raise NotImplementedError(f"MIL conv_transpose with pad_type {pad_type!r} ({c.op.name})")
        # weight [Cin, Cout/g, *K] -> conv weight [Cout, Cin/g, *K], flipped in space
        cout_g = w.shape[1]
        w = w.reshape(groups, cin // groups, cout_g, *k).swapaxes(1, 2).reshape(groups * cout_g, cin // groups, *k)
        w = np.ascontiguousarray(np.flip(w, axis=tuple(range(2, 2 + nd))))
        maps, starts, steps = [], [], []
        for d in range(nd):
            ext = (k[d] - 1) * dil[d]
            src = np.full((spatial[d] - 1) * strides[d] + 1 + 2 * ext + out_spatial[d], -1)
            src[ext : ext + (spatial[d] - 1) * strides[d] + 1 : strides[d]] = np.arange(spatial[d])
            maps.append(src)
            starts.append(pad[2 * d] if pad_type == "custom" else 0)
            steps.append(1)
    else:
        if pad_type == "valid":
            pad = [0] * 2 * nd
        elif pad_type == "same":
            pad = []
            for d in range(nd):
                total = max((out_spatial[d] - 1) * strides[d] + (k[d] - 1) * dil[d] + 1 - spatial[d], 0)
                pad += [total // 2, total - total // 2]
        elif pad_type != "custom":
            raise NotImplementedError(f"MIL conv with pad_type {pad_type!r} ({c.op.name})")
        maps = [np.concatenate([np.full(pad[2 * d], -1), np.arange(spatial[d]), np.full(pad[2 * d + 1], -1)])
                for d in range(nd)]
        starts, steps = [0] * nd, strides
    cout = w.shape[0]
    idx = _gather_index(n, cin, spatial, maps, k, dil, starts, steps, out_spatial, groups)
    wt = np.ascontiguousarray(w.reshape(groups, cout // groups, -1).transpose(0, 2, 1))  # [G, Cin/g*K, Cout/g]
    bias = c.const("bias")
    bias = None if bias is None else bias.astype(np.float32).reshape(cout, *([1] * nd))
    x = c.get("x")
    out_shape = (n, cout, *out_spatial)

    def kernel(env):
        cols = np.concatenate((x(env).reshape(-1), _ZERO))[idx]  # [N, G, P, Cin/g*K]
        y = np.matmul(cols, wt).transpose(0, 1, 3, 2).reshape(out_shape)
        return y if bias is None else y + bias

    return kernel


def _gather_index(n, cin, spatial, maps, k, dil, starts, steps, out_spatial, groups) -> np.ndarray:
    """Flat indices [N, G, P, Cin/g * prod(K)] into x.reshape(-1) ++ [0]; -1 in ``maps`` (a
    padded position) reads the appended zero."""
    nd = len(k)
    per_dim = []  # per spatial dim: [O_d, K_d] input coordinate or -1
    for d in range(nd):
        v = (starts[d] + np.arange(out_spatial[d]))[:, None] * steps[d] + np.arange(k[d])[None, :] * dil[d]
        src = maps[d]
        per_dim.append(np.where(v < len(src), src[np.minimum(v, len(src) - 1)], -1))
    strides_in = [int(np.prod(spatial[d + 1 :])) for d in range(nd)]
    # broadcast to [O_1..O_nd, K_1..K_nd]
    flat = np.zeros([*out_spatial, *k], dtype=np.int64)
    invalid = np.zeros([*out_spatial, *k], dtype=bool)
    for d in range(nd):
        shape = [1] * (2 * nd)
        shape[d], shape[nd + d] = out_spatial[d], k[d]
        coord = per_dim[d].reshape(shape)
        flat = flat + coord * strides_in[d]
        invalid = invalid | (coord < 0)
    plane = int(np.prod(spatial))
    sentinel = n * cin * plane
    cg = cin // groups
    ch = np.arange(n * cin).reshape(n, groups, 1, cg, 1) * plane
    pos = flat.reshape(1, 1, int(np.prod(out_spatial)), 1, int(np.prod(k)))
    bad = invalid.reshape(pos.shape)
    idx = np.where(bad, sentinel, ch + pos)  # [N, G, P, Cin/g, K]
    return idx.reshape(n, groups, idx.shape[2], cg * int(np.prod(k)))


# --- shape and data movement ---------------------------------------------------------------------
@_op("reshape", "expand_dims")
def _reshape(c: _Ctx) -> Kernel:
    x, shape = c.get("x"), c.out_shape
    return lambda env: np.reshape(x(env), shape)


@_op("transpose")
def _transpose(c: _Ctx) -> Kernel:
    x, perm = c.get("x"), tuple(int(p) for p in c.const("perm"))
    return lambda env: np.transpose(x(env), perm)


@_op("slice_by_index")
def _slice_by_index(c: _Ctx) -> Kernel:
    rank = len(c.op.inputs["x"].shape)
    begin, end = c.const("begin"), c.const("end")
    stride = c.const("stride", np.ones(rank, int))
    bmask = c.const("begin_mask", np.zeros(rank, bool))
    emask = c.const("end_mask", np.zeros(rank, bool))
    smask = c.const("squeeze_mask", np.zeros(rank, bool))
    index = tuple(
        int(begin[i]) if smask[i]
        else slice(None if bmask[i] else int(begin[i]), None if emask[i] else int(end[i]), int(stride[i]))
        for i in range(rank)
    )
    x = c.get("x")
    return lambda env: x(env)[index]


@_op("crop")
def _crop(c: _Ctx) -> Kernel:
    (t, b), (l, r) = c.const("crop_height", [0, 0]), c.const("crop_width", [0, 0])
    index = (Ellipsis, slice(int(t), -int(b) or None), slice(int(l), -int(r) or None))
    x = c.get("x")
    return lambda env: x(env)[index]


@_op("concat", "stack")
def _concat(c: _Ctx) -> Kernel:
    if c.op.op_type == "concat" and bool(c.const("interleave", False)):
        raise NotImplementedError(f"MIL concat with interleave=True ({c.op.name})")
    values, axis = c.get_list("values"), int(c.const("axis"))
    fn = np.concatenate if c.op.op_type == "concat" else np.stack
    return lambda env: fn([v(env) for v in values], axis=axis)


@_op("pad")
def _pad(c: _Ctx) -> Kernel:
    mode = str(c.const("mode", "constant"))
    if mode not in ("constant", "reflect", "replicate"):
        raise NotImplementedError(f"MIL pad mode {mode!r} ({c.op.name})")
    p = [int(v) for v in c.const("pad")]
    rank = len(c.op.inputs["x"].shape)
    widths = [(0, 0)] * (rank - len(p) // 2) + [(p[2 * i], p[2 * i + 1]) for i in range(len(p) // 2)]
    x, value = c.get("x"), float(c.const("constant_val", 0.0))
    if mode == "constant":
        return lambda env: np.pad(x(env), widths, mode="constant", constant_values=value)
    np_mode = "reflect" if mode == "reflect" else "edge"
    return lambda env: np.pad(x(env), widths, mode=np_mode)


@_op("upsample_nearest_neighbor")
def _upsample_nearest(c: _Ctx) -> Kernel:
    h_in, w_in = (int(d) for d in c.op.inputs["x"].shape[-2:])
    h_out, w_out = c.out_shape[-2:]
    sh, sw = float(c.const("scale_factor_height", 1)), float(c.const("scale_factor_width", 1))
    rows = np.minimum(np.floor(np.arange(h_out) / sh).astype(int), h_in - 1)
    cols = np.minimum(np.floor(np.arange(w_out) / sw).astype(int), w_in - 1)
    x = c.get("x")
    return lambda env: x(env)[..., rows[:, None], cols[None, :]]


# --- reductions and normalisation ----------------------------------------------------------------
_REDUCE = {"reduce_sum": np.sum, "reduce_mean": np.mean, "reduce_max": np.max}


@_op(*_REDUCE)
def _reduce(c: _Ctx) -> Kernel:
    fn, x = _REDUCE[c.op.op_type], c.get("x")
    axes = c.const("axes")
    axes = None if axes is None else tuple(int(a) for a in np.atleast_1d(axes))
    keep = bool(c.const("keep_dims", False))
    return lambda env: np.asarray(fn(x(env), axis=axes, keepdims=keep))


@_op("softmax")
def _softmax(c: _Ctx) -> Kernel:
    x, axis = c.get("x"), int(c.const("axis", -1))

    def kernel(env):
        v = x(env)
        e = np.exp(v - v.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)

    return kernel


@_op("layer_norm")
def _layer_norm(c: _Ctx) -> Kernel:
    rank = len(c.op.inputs["x"].shape)
    axes = tuple(sorted(int(a) % rank for a in np.atleast_1d(c.const("axes"))))
    eps = np.float32(c.const("epsilon", 1e-5))
    shape = [int(d) if i in axes else 1 for i, d in enumerate(c.op.inputs["x"].shape)]
    gamma, beta = c.const("gamma"), c.const("beta")
    gamma = np.float32(1) if gamma is None else gamma.astype(np.float32).reshape(shape)
    beta = np.float32(0) if beta is None else beta.astype(np.float32).reshape(shape)
    x = c.get("x")

    def kernel(env):
        v = x(env)
        mean = v.mean(axis=axes, keepdims=True)
        d = v - mean
        var = np.mean(d * d, axis=axes, keepdims=True)
        return d / np.sqrt(var + eps) * gamma + beta

    return kernel


# --- compressed weights (folded at load) ---------------------------------------------------------
@_op("constexpr_affine_dequantize")
def _affine_dequantize(c: _Ctx) -> Kernel:
    q = c.const("quantized_data").astype(np.float32)
    zero, scale, axis = c.const("zero_point"), c.const("scale"), int(c.const("axis"))
    shape = [1] * q.ndim
    shape[axis] = -1
    zero = np.asarray(zero, np.float32).reshape(shape if np.ndim(zero) else [])
    scale = np.asarray(scale, np.float32).reshape(shape if np.ndim(scale) else [])
    value = (q - zero) * scale
    return lambda env: value


SUPPORTED_OPS = frozenset({"const", *_COMPILERS})
