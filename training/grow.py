"""Deepen a trained DfNet4's Mamba backbones without changing what it computes (issue 13 item 7).

A student that plateaus below its teacher may lack depth: ``dfnet4-dfn3conv`` has one Mamba layer
in each backbone where DFN3 has two GRU layers in its decoders. Training a deeper preset from
scratch throws away what the trained one learned; growing it keeps it. Each Mamba layer is
pre-norm residual (``x + mixer(norm(x))``), so a layer appended with a zero ``out_proj`` is the
identity: the grown model's output equals the original's and training starts from its score.
The new layer's ``out_proj`` gets a gradient at once (its input ``y * silu(z)`` is not zero), the
rest of the layer follows as soon as ``out_proj`` moves.

    python -m dfnet4_sdk.training.grow training/resume/dfnet4_dfn3conv_gpu1.pt \\
        --erb-dec-layers 2 --df-layers 2 -o grown.pt

GRU backbones are not grown: a GRU layer has no residual path that makes it an identity.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import torch

from dfnet4_sdk.errors import ConfigError
from dfnet4_sdk.models import load_checkpoint, save_checkpoint
from dfnet4_sdk.models.dfnet4 import DfNet4
from dfnet4_sdk.models.dfnet4_params import LAYER_FIELDS

# backbone -> (ModelParams4 field, the state_dict prefix of its layers)
BACKBONES = {c: (field, f"{c}.backbone.layers") for c, field in LAYER_FIELDS.items()}


def grow(model: DfNet4, layers: dict[str, int]) -> DfNet4:
    """A copy of ``model`` whose backbones have ``layers[name]`` Mamba layers (at least as many as
    now), the added layers appended after the trained ones as identities."""
    if not isinstance(model, DfNet4):
        raise ConfigError(f"only DfNet4 models have Mamba backbones to grow, got {type(model).__name__}")
    p = model.params
    problems = []
    for name, count in layers.items():
        if name not in BACKBONES:
            problems.append(f"unknown backbone {name!r}; expected one of {sorted(BACKBONES)}")
        elif p.backbone_of(name) != "mamba":
            problems.append(f"{name}'s backbone is {p.backbone_of(name)!r}: only residual Mamba layers can be added as identities")
        elif count < getattr(p, BACKBONES[name][0]):
            problems.append(f"{name} has {getattr(p, BACKBONES[name][0])} layers; growing cannot remove layers (asked {count})")
    if problems:
        raise ConfigError("cannot grow this model:\n  " + "\n  ".join(problems))
    grown = type(model)(replace(p, **{BACKBONES[n][0]: c for n, c in layers.items()}))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected, unexpected  # growing only adds parameters
    # "erb_dec.backbone.layers.1.norm.weight" -> "erb_dec.backbone.layers.1"
    added = {".".join(key.split(".")[:4]) for key in missing}
    prefixes = tuple(prefix + "." for _, prefix in BACKBONES.values())
    assert all(a.startswith(prefixes) for a in added), missing  # nothing but new backbone layers
    with torch.no_grad():
        for layer in added:
            grown.get_submodule(layer).mixer.out_proj.weight.zero_()
    return grown.train(model.training)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m dfnet4_sdk.training.grow", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", type=Path, help="a dfnet4-sdk checkpoint of a Mamba DfNet4")
    ap.add_argument("-o", "--out", type=Path, required=True, help="where to write the grown checkpoint")
    for name in BACKBONES:
        ap.add_argument(f"--{name.replace('_', '-')}-layers", type=int, dest=name, help=f"layers of {name}'s backbone")
    args = ap.parse_args(argv)
    model = load_checkpoint(args.checkpoint)
    layers = {name: getattr(args, name) for name in BACKBONES if getattr(args, name) is not None}
    try:
        grown = grow(model, layers)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    save_checkpoint(grown, args.out, extra={"grown_from": str(args.checkpoint), "layers": layers})
    n0, n1 = (sum(t.numel() for t in m.parameters()) for m in (model, grown))
    print(f"{args.out}: {n0:,} -> {n1:,} parameters ({layers})")


if __name__ == "__main__":
    main()
