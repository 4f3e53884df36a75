"""TFLite: ``litert_torch`` (torch.export -> MLIR -> flatbuffer), fixed single-frame shapes,
named signature I/O, ai-edge-quantizer for fp16 / int8, DSP facts in the flatbuffer's metadata.

Each graph becomes one ``.tflite`` file with one signature named after the graph (``enc``,
``erb_dec``, ``df_dec``). State tensors are plain signature inputs/outputs, never resource
variables, so the interpreter holds no stream state. Signature names must be Python
identifiers (torch.export turns keyword arguments into parameters), so dots become ``__``:
``state_in.enc_emb_gru`` is ``state_in__enc_emb_gru`` in the file; the returned map (kept in
the manifest and in the file's metadata) says so for every input and output.

Precisions, all with float32 inputs/outputs (states stay fp32 between frames):
    fp32: the converted graph as is.
    fp16: float16 weights of FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV
          (ai-edge-quantizer float_casting, weight-only; it does not cover BATCH_MATMUL, so
          grouped-linear weights stay fp32): dequantized at load, float compute.
    int8: ai-edge-quantizer ``dynamic_wi8_afp32``'s config on FULLY_CONNECTED / BATCH_MATMUL /
          CONV_2D (see INT8_OPS): int8 per-channel weights, activations quantized on the fly
          per op; nothing is quantized between ops or frames, so states stay fp32.

litert_torch 0.10 lowers transposed convolutions badly: wrong values (right shapes) with
padding > 0 and stride > 1, or grouped with last-dim kernel == stride > 1; and a grouped one
becomes one TRANSPOSE_CONV per group (DFN3's erb_dec: 128 ops plus 144 slices). A copy of the
module is converted instead, with every transposed conv rewritten exactly as zero-insertion
upsampling + padding + an ordinary grouped conv with the flipped kernel.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import keyword
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfnet4_sdk.errors import ExportError
from dfnet4_sdk.exporters.plan import Capabilities
from dfnet4_sdk.manifest import GraphSpec
from dfnet4_sdk.runtimes.tflite_backend import read_metadata  # noqa: F401  (its home: the loader checks it)
from dfnet4_sdk.states import state_name, state_output_name

log = logging.getLogger(__name__)

# int8: the ops that get dynamic_wi8_afp32's config; they hold nearly all the weights. The
# depthwise convs (3x3 / 1x3 kernels, < 1 % of the weights, no size gain) stay float. Measured
# on DFN3, states fed back, worst relative error over 1 s of the real street clip: from 0 s,
# the full recipe (all ops) puts enc.emb 0.26 off (int8 tolerance 0.2), these ops 0.16; from
# 2, 4, 6 or 8 s both stay <= 0.11.
INT8_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D")

# Quantization scheme of each precision, also written into every graph's metadata.
QUANTIZATION = {
    "fp32": "none",
    "fp16": "ai-edge-quantizer float_casting (weight-only): float16 weights, float32 compute and I/O",
    "int8": f"ai-edge-quantizer dynamic_wi8_afp32 config on {'/'.join(INT8_OPS)}: int8 per-channel weights, "
            "activations quantized on the fly per op, float32 I/O and state; depthwise convs float",
}


class TfliteConverter:
    target = "tflite"
    suffix = ".tflite"
    capabilities = Capabilities(
        precisions=("fp32", "fp16", "int8"),
        frame_graph=("fp32",),
        # The batched frame graph at a fixed count (litert_torch converts static shapes): StreamPool
        # pads the last call of a hop to it. fp16 is weight-only (fp32 arithmetic), as in the fused
        # frame graph the shipped fp16 bundles carry: dfnet4-mix-v2's ran 96-99 real-time streams per
        # core at 32-128 streams, the fp32 export's 103-109, per-stream calls 67 (bench --streams).
        frame_streams={"fp32": 32, "fp16": 32},
        # LiteRT/XNNPACK runs the offline path fastest at 25 frames per call (RTF 0.0062 vs 0.0075
        # at 100, `enhance`, DfNet4Lite, 2-core x86: a smaller block's activations stay in cache
        # while the three graphs alternate).
        block_frames={"fp32": 25},
        no_block_graphs_with=(nn.GRU,),
        why={
            "frame_graph": "fp16 cannot represent the fused graph's log10 of band powers near 1e-10, and the "
                           "dynamic-range int8 quantizer cannot leave its DSP matmuls float",
            "no_block_graphs_with": "LiteRT lowers a GRU's sequence form to one cell per frame: 25 unrolled cells "
                                    "per block graph, measured on DFN3 no faster than streaming and 9 MB more bundle",
        },
    )
    precisions = capabilities.precisions

    def convert(
        self,
        module: nn.Module,
        example_inputs: tuple[torch.Tensor, ...],
        spec: GraphSpec,
        path: Path,
        precision: str,
        metadata: Mapping[str, str],
    ) -> dict[str, str]:
        names = file_names(spec)
        if hasattr(module, "frame"):  # the fused frame graphs: XNNPACK runs no gather (models/frame.py)
            module.frame.row_gather = False
        named = _NamedStep(_with_exact_transposed_convs(module), spec, names)
        sample = {names[t.name]: x.contiguous() for t, x in zip(spec.inputs, example_inputs)}
        content = _convert(named.eval(), spec.name, sample)
        if precision != "fp32":
            content = _quantize(content, precision)
        meta = {**metadata, "graph": spec.name, "precision": precision, "quantization": QUANTIZATION[precision],
                "signature": spec.name, "tensor_names_json": json.dumps(names)}
        content = _with_metadata(content, meta)
        Path(path).write_bytes(content)
        _check_signature(content, spec, names)
        return names


def file_names(spec: GraphSpec) -> dict[str, str]:
    """Our tensor name -> its signature name in the .tflite file (every input and output)."""
    names = {t.name: t.name.replace(".", "__") for t in (*spec.inputs, *spec.outputs)}
    bad = [n for n in names.values() if not n.isidentifier() or keyword.iskeyword(n)]
    if bad or len(set(names.values())) != len(names):
        raise ExportError(
            f"graph {spec.name}: tensor names {sorted(names)} do not map to unique Python identifiers "
            f"for the TFLite signature (offending: {bad or 'a collision after replacing . with __'})"
        )
    return names


class _NamedStep(nn.Module):
    """StepModule with keyword inputs and a dict of outputs, so litert_torch names the
    signature tensors after ours instead of ``args_N`` / ``output_N``."""

    def __init__(self, step: nn.Module, spec: GraphSpec, names: Mapping[str, str]):
        super().__init__()
        self.step = step
        # The step modules of exporters/base.py take the inputs in manifest order and return
        # the non-state outputs in manifest order, then the new states in state-input order.
        state_names = [state_name(t.name) for t in spec.inputs if t.role == "state_in"]
        out_order = [t.name for t in spec.outputs if t.role != "state_out"] + [state_output_name(n) for n in state_names]
        assert sorted(out_order) == sorted(spec.output_names), (out_order, spec.output_names)
        self.in_names = [names[n] for n in spec.input_names]
        self.out_names = [names[n] for n in out_order]

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.step(*(inputs[n] for n in self.in_names))
        return dict(zip(self.out_names, outputs))


class _ConvTransposeAsConv(nn.Module):
    """A transposed conv computed as zero-insertion upsampling, padding and an ordinary
    (grouped) conv with the flipped kernel: the same values, lowered to plain conv ops."""

    def __init__(self, conv: nn.ConvTranspose1d | nn.ConvTranspose2d):
        super().__init__()
        n, g = len(conv.stride), conv.groups
        w = conv.weight.detach()  # [C_in, C_out / g, *k]
        cin = conv.in_channels // g
        # -> [C_out, C_in / g, *k]: swap in/out within each group, flip every spatial axis.
        w = w.reshape(g, cin, -1, *w.shape[2:]).transpose(1, 2).reshape(conv.out_channels, cin, *w.shape[2:])
        self.weight = nn.Parameter(w.flip(list(range(2, 2 + n))).contiguous(), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.dilation, self.groups = tuple(conv.stride), tuple(conv.dilation), g
        # Per spatial axis (left, right) padding after upsampling; negative means crop.
        self.edges = tuple(
            (d * (k - 1) - p, d * (k - 1) - p + op)
            for k, d, p, op in zip(conv.kernel_size, conv.dilation, conv.padding, conv.output_padding)
        )
        self.conv = nn.functional.conv1d if n == 1 else nn.functional.conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.stride)
        for i, (s, (left, right)) in enumerate(zip(self.stride, self.edges)):
            dim = x.dim() - n + i
            if s > 1:  # insert s - 1 zeros between neighbours along dim
                length = x.shape[dim]
                x = torch.stack([x] + [torch.zeros_like(x)] * (s - 1), dim=dim + 1).flatten(dim, dim + 1)
                x = x.narrow(dim, 0, (length - 1) * s + 1)
            if left < 0 or right < 0:
                x = x.narrow(dim, max(-left, 0), x.shape[dim] - max(-left, 0) - max(-right, 0))
            if left > 0 or right > 0:
                x = nn.functional.pad(x, [0, 0] * (x.dim() - 1 - dim) + [max(left, 0), max(right, 0)])
        return self.conv(x, self.weight, self.bias, dilation=self.dilation, groups=self.groups)


def _with_exact_transposed_convs(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every transposed conv rewritten as an ordinary conv."""
    targets = [name for name, m in module.named_modules() if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d))]
    if not targets:
        return module
    module = copy.deepcopy(module)
    for name in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, attr, _ConvTransposeAsConv(getattr(parent, attr)))
    log.debug("rewrote %d transposed convs as convs for litert_torch: %s", len(targets), targets)
    return module


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """litert_torch prints a progress line per pass; silence it unless the user asked for it."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    if key in os.environ:
        yield
        return
    os.environ[key] = "n"
    try:
        yield
    finally:
        os.environ.pop(key, None)


def _convert(module: nn.Module, signature: str, sample: dict[str, torch.Tensor]) -> bytes:
    import litert_torch

    with _quiet_litert(), torch.no_grad(), warnings.catch_warnings():
        # torch 2.13 deprecates a pytree check that litert_torch 0.10 still makes, once per pass
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        try:
            return bytes(litert_torch.signature(signature, module, sample_kwargs=sample).convert().model_content())
        except Exception as e:  # torch.export / MLIR lowering raise many types
            raise ExportError(f"litert_torch could not convert graph {signature!r}: {type(e).__name__}: {e}") from e


def _quantize(content: bytes, precision: str) -> bytes:
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
    from ai_edge_quantizer.quantizer import Quantizer

    manager = recipe_manager.RecipeManager()
    if precision == "int8":
        for op in INT8_OPS:
            manager.add_dynamic_config(regex=".*", operation_name=qtyping.TFLOperationName[op], num_bits=8)
    elif precision == "fp16":
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
    else:
        raise AssertionError(precision)
    quant_recipe = manager.get_quantization_recipe()
    # quantize() does not pass enable_progress_bar on to its last step (tqdm on stderr).
    with contextlib.redirect_stderr(io.StringIO()) as captured:
        result = Quantizer(content, quant_recipe).quantize(enable_progress_bar=False, enable_progress_report=False)
    log.debug("ai-edge-quantizer: %s", captured.getvalue().strip())
    return bytes(result.quantized_model)


def _with_metadata(content: bytes, metadata: Mapping[str, str]) -> bytes:
    """Add each key as a named entry of the flatbuffer's ``metadata`` (UTF-8 value)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.metadata = list(model.metadata or [])
    taken = {m.name.decode() if isinstance(m.name, bytes) else m.name for m in model.metadata}
    for key, value in metadata.items():
        if key in taken:
            raise ExportError(f"metadata key {key!r} is already used by the TFLite converter")
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(value.encode(), dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = key
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _check_signature(content: bytes, spec: GraphSpec, names: Mapping[str, str]) -> None:
    """The written file has one signature named after the graph, with exactly our tensors
    (by name), float32, at the manifest's shapes, and no resource variables."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    interpreter = Interpreter(model_content=content, num_threads=1)
    signatures = interpreter.get_signature_list()
    problems = []
    if list(signatures) != [spec.name]:
        problems.append(f"signatures {list(signatures)} != [{spec.name!r}]")
    else:
        runner = interpreter.get_signature_runner(spec.name)
        for kind, tensors, details in (("input", spec.inputs, runner.get_input_details()),
                                       ("output", spec.outputs, runner.get_output_details())):
            expected = {names[t.name]: t for t in tensors}
            if sorted(details) != sorted(expected):
                problems.append(f"{kind}s {sorted(details)} != {sorted(expected)}")
                continue
            for name, d in details.items():
                if tuple(d["shape"]) != expected[name].shape or d["dtype"] != np.float32:
                    problems.append(f"{kind} {name}: {tuple(d['shape'])} {np.dtype(d['dtype'])}, "
                                    f"expected {expected[name].shape} float32")
    n_resources = flatbuffer_utils.count_resource_variables(content)
    if n_resources:
        problems.append(f"{n_resources} resource variables (state must be plain inputs/outputs)")
    if problems:
        raise ExportError(f"TFLite graph {spec.name}: " + "; ".join(problems))
