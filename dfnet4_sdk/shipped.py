"""The models that ship inside the package, and which one is the default.

A shipped model is a checkpoint (for the torch backend and for exporting to other targets) plus
an ONNX bundle exported from it, so that ``Runtime()`` and ``dfsdk run`` enhance with no torch
installed and no export on first use. This module imports neither torch nor onnxruntime.

The bundle is regenerated from the checkpoint with::

    python -m dfnet4_sdk.shipped            # re-export every shipped bundle (needs the [all] extras)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class ShippedModel:
    name: str
    description: str

    @property
    def checkpoint_path(self) -> Path:
        return ASSETS_DIR / f"{self.name}.pt"

    @property
    def onnx_bundle_dir(self) -> Path:
        return ASSETS_DIR / f"{self.name}-onnx"


SHIPPED_MODELS: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            "dfnet4-lite-v1",
            "DfNet4Lite trained by this project's training/ (distilled from DFN3); docs/MODEL_CARD.md",
        ),
    )
}

# The model `Runtime()` and `dfsdk run` use when none is named.
DEFAULT_MODEL = "dfnet4-lite-v1"


def shipped_model(name: object) -> ShippedModel | None:
    """The shipped model called ``name``, or None when ``name`` is anything else."""
    return SHIPPED_MODELS.get(name) if isinstance(name, str) else None


def export_shipped_bundles(names: tuple[str, ...] = tuple(SHIPPED_MODELS)) -> list[Path]:
    """Re-export the ONNX bundle of each named shipped model from its checkpoint (fp32, with the
    fused frame and offline block graphs), replacing the bundle in the package."""
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model

    written = []
    for name in names:
        model = SHIPPED_MODELS[name]
        bundle = export_bundle(load_model(name), converter_for("onnx"), model.onnx_bundle_dir,  # records source_model
                               precision="fp32", overwrite=True)
        written.append(bundle.root)
    return written


if __name__ == "__main__":
    for root in export_shipped_bundles():
        print(f"wrote {root}")
