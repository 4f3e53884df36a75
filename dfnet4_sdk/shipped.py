"""The models that ship inside the package, and which one is the default.

A shipped model is one or more prebuilt bundles (so that ``Runtime()`` and ``dfsdk run`` enhance
with no torch installed and no export on first use) plus, for the models this project trained,
the checkpoint they were exported from. Their measured facts (size, compute, latency, quality on
held-out sets) live in ``assets/models.json``, written from `dfsdk eval` runs
(docs/MODEL_CARD.md); the default model is chosen from those numbers by ``choose_default``. This
module imports neither torch nor any backend runtime.

The bundles are regenerated from their sources with::

    python -m dfnet4_sdk.shipped [NAME...]  # re-export the shipped bundles (needs the [all] extras)
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
FACTS_PATH = ASSETS_DIR / "models.json"

# The python module each backend's runtime imports (what decides whether a bundle can run here).
BACKEND_MODULES = {"onnx": "onnxruntime", "tflite": "ai_edge_litert", "coreml": "coremltools"}
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "tflite": "ai-edge-litert", "coreml": "coremltools"}  # on PyPI


@dataclass(frozen=True)
class ShippedBundle:
    """One prebuilt bundle of a shipped model (a directory under ``assets/``)."""

    backend: str
    precision: str
    directory: str
    fused: bool = True  # the fused frame graph: one call per hop
    blocks: bool | None = None  # offline block graphs (None: the exporter's measured choice)
    streams: bool = False  # the batched frame graph frame_streams, so StreamPool batches its streams

    @property
    def path(self) -> Path:
        return ASSETS_DIR / self.directory

    def runs_here(self) -> bool:
        return importlib.util.find_spec(BACKEND_MODULES[self.backend]) is not None


@dataclass(frozen=True)
class ShippedModel:
    name: str  # what `--model` and `Runtime()` accept
    family: str
    description: str
    trained_here: bool  # trained by this project's training/
    bundles: tuple[ShippedBundle, ...]  # fastest measured first; Runtime() takes the first that runs here
    checkpoint: str | None = None  # file under assets/ (None: the weights come from another package)
    notice: str | None = None  # licence and attribution file under assets/, for weights made elsewhere

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.checkpoint is None else ASSETS_DIR / self.checkpoint

    @property
    def onnx_bundle_dir(self) -> Path | None:
        return next((b.path for b in self.bundles if b.backend == "onnx"), None)

    def bundle_for(self, backend: str | None) -> ShippedBundle | None:
        """The bundle ``Runtime`` runs for ``backend`` (None: the first whose runtime is installed)."""
        for b in self.bundles:
            if (backend is None or b.backend == backend) and b.runs_here():
                return b
        return None

    @property
    def facts(self) -> dict[str, Any]:
        """Measured facts from assets/models.json: parameters, macs_per_second, latency_ms, quality."""
        return load_facts().get(self.name, {})


SHIPPED_MODELS: dict[str, ShippedModel] = {
    m.name: m
    for m in (
        ShippedModel(
            "dfn3",
            "dfn3",
            "DeepFilterNet3, the official weights (Schröter et al.), imported exactly; prebuilt LiteRT fp16 bundle",
            trained_here=False,
            # LiteRT runs DFN3's fused frame graph faster than onnxruntime (BENCHMARKS.md); its fp16
            # weights are expanded to fp32 at load, so it equals fp32 to ~59 dB at half the size. Where
            # LiteRT has no wheel (Windows, Intel macOS), Runtime("dfn3") exports the official weights
            # for onnxruntime once (needs the [torch,dfn3] extras), as for any model not shipped.
            bundles=(ShippedBundle("tflite", "fp16", "dfn3-tflite-fp16", fused=True, blocks=False),),
            notice="licenses/DeepFilterNet3-NOTICE.md",
        ),
        ShippedModel(
            "dfnet4-lite-v1",
            "dfnet4-lite",
            "DfNet4Lite trained by this project's training/ (distilled from DFN3); docs/MODEL_CARD.md",
            trained_here=True,
            bundles=(ShippedBundle("onnx", "fp32", "dfnet4-lite-v1-onnx"),),
            checkpoint="dfnet4-lite-v1.pt",
        ),
        ShippedModel(
            "dfnet4-mix-v1",
            "dfnet4",
            "DfNet4 at DFN3's widths (preset dfnet4-dfn3conv-mix): GRU enc and df_dec initialised from "
            "DFN3, a Mamba erb_dec trained here, fine-tuned end to end by this project's training/; "
            "prebuilt LiteRT fp16 bundle; docs/MODEL_CARD.md",
            trained_here=True,
            # As DFN3's bundle: LiteRT ran it fastest, fp16 weights expanded to fp32 at load; its
            # GRUs get no block graphs on LiteRT (unrolled per frame), so files stream hop by hop.
            bundles=(ShippedBundle("tflite", "fp16", "dfnet4-mix-v1-tflite-fp16", fused=True, blocks=False),),
            checkpoint="dfnet4-mix-v1.pt",
            notice="licenses/DeepFilterNet3-NOTICE.md",  # two of its three components start from DFN3's weights
        ),
        ShippedModel(
            "dfnet4-mix-v2",
            "dfnet4",
            "dfnet4-mix-v1 continued on DFN3's targets alone (no clean-target losses) by this project's "
            "training/; same architecture and cost per hop; prebuilt LiteRT fp16 bundle and, where LiteRT "
            "has no wheel, ONNX int8; docs/MODEL_CARD.md",
            trained_here=True,
            # As mix-v1's, plus the batched frame graph (4.2 MB): StreamPool() on the default model
            # carries 1.4x the streams per core of per-stream calls (BENCHMARKS.md). The ONNX int8
            # bundle (7.9 MB) runs where LiteRT has no wheel (Windows, Intel macOS), so the default
            # needs no torch there either; it is measured on the held-out sets like the first.
            bundles=(ShippedBundle("tflite", "fp16", "dfnet4-mix-v2-tflite-fp16", fused=True, blocks=False,
                                   streams=True),
                     ShippedBundle("onnx", "int8", "dfnet4-mix-v2-onnx-int8", fused=True, blocks=False)),
            checkpoint="dfnet4-mix-v2.pt",
            notice="licenses/DeepFilterNet3-NOTICE.md",
        ),
    )
}

# The rule that decides the default (docs/MODEL_CARD.md): a model this project trained becomes the
# default once it is within these margins of DFN3 on the held-out sets, measured through the shipped
# runtime; until then the default is DFN3.
REFERENCE_MODEL = "dfn3"
DEFAULT_RULE = {
    # metric key in models.json -> (held-out set, largest allowed deficit vs DFN3)
    "dnsmos_ovrl": ("noisy_real", 0.05),
    "pesq": ("ears", 0.1),
}


def load_facts(path: Path = FACTS_PATH) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _score(facts: dict[str, Any], name: str, metric: str, eval_set: str) -> float | None:
    """The model's ``metric`` on ``eval_set``: the worst over its shipped bundles, since the rule
    must hold on whichever bundle a platform runs."""
    scores = [float(q[metric]) for q in facts.get(name, {}).get("quality", []) if q["set"] == eval_set and metric in q]
    return min(scores) if scores else None


# ... and it must settle on long streams: consecutive repeats of a clip agree to >= 40 dB after at
# most this many seconds of stream (dfnet4_sdk/stability.py).
MAX_SETTLE_SECONDS = 30.0


def meets_default_rule(name: str, facts: dict[str, dict[str, Any]]) -> bool:
    """Whether model ``name`` is within DEFAULT_RULE's margins of DFN3 on every held-out set and
    settles within MAX_SETTLE_SECONDS on a long stream."""
    for metric, (eval_set, margin) in DEFAULT_RULE.items():
        ours, ref = _score(facts, name, metric, eval_set), _score(facts, REFERENCE_MODEL, metric, eval_set)
        if ours is None or ref is None or ours < ref - margin:
            return False
    reports = facts.get(name, {}).get("stability", [])  # one per shipped bundle
    settled = [r.get("settled_after_s") for r in reports]
    return bool(settled) and all(s is not None and s <= MAX_SETTLE_SECONDS for s in settled)


def choose_default(facts: dict[str, dict[str, Any]] | None = None) -> str:
    """The best project-trained model that meets the rule (highest real-recording OVRL), else DFN3."""
    facts = load_facts() if facts is None else facts
    candidates = [m.name for m in SHIPPED_MODELS.values() if m.trained_here and meets_default_rule(m.name, facts)]
    if not candidates:
        return REFERENCE_MODEL
    return max(candidates, key=lambda n: _score(facts, n, "dnsmos_ovrl", DEFAULT_RULE["dnsmos_ovrl"][0]) or 0.0)


# The model `Runtime()` and `dfsdk run` use when none is named.
DEFAULT_MODEL = choose_default()


def shipped_model(name: object) -> ShippedModel | None:
    """The shipped model called ``name``, or None when ``name`` is anything else."""
    return SHIPPED_MODELS.get(name) if isinstance(name, str) else None


def model_listing() -> list[dict[str, Any]]:
    """What `dfsdk models --json` prints: one object per shipped model, the default first."""
    rows = []
    for m in sorted(SHIPPED_MODELS.values(), key=lambda m: m.name != DEFAULT_MODEL):
        facts = m.facts
        rows.append({
            "name": m.name,
            "family": m.family,
            "default": m.name == DEFAULT_MODEL,
            "trained_here": m.trained_here,
            "parameters": facts.get("parameters"),
            "macs_per_second": facts.get("macs_per_second"),
            "latency_ms": facts.get("latency_ms"),
            "quality": facts.get("quality", []),
            "stability": facts.get("stability"),
            "bundles": [{"backend": b.backend, "precision": b.precision, "runs_here": b.runs_here()} for b in m.bundles],
            "description": m.description,
            "licence": facts.get("licence"),
        })
    return rows


def listing_lines(rows: list[dict[str, Any]]) -> list[str]:
    """`dfsdk models` as text: per model its name, family and flags, description, size and
    bundles, and one line per measured set."""
    lines = []
    for r in rows:
        flags = ", ".join(f for f, on in (("default", r["default"]), ("trained here", r["trained_here"])) if on)
        runs = ", ".join(f"{b['backend']} {b['precision']}" + ("" if b["runs_here"] else " (runtime not installed)")
                         for b in r["bundles"])
        lines += [f"{r['name']}  [{r['family']}{'; ' + flags if flags else ''}]", f"    {r['description']}"]
        if r["parameters"] is not None:
            lines.append(f"    {r['parameters']:,} parameters, {r['macs_per_second'] / 1e6:.1f} MMAC/s, "
                         f"latency {r['latency_ms']:g} ms; bundles: {runs}")
        lines += [f"    {line}" for line in describe_quality(r["quality"])]
    return lines


def describe_quality(quality: list[dict[str, Any]]) -> list[str]:
    """One line per measured set and bundle: ``set, backend precision (items, date): metric value, ...``."""
    lines = []
    for q in quality:
        values = ", ".join(f"{k} {v:.3f}" for k, v in q.items() if isinstance(v, float))
        bundle = f", {q['backend']} {q['precision']}" if "backend" in q else ""
        lines.append(f"{q['set']}{bundle} ({q.get('items', '?')} items, {q.get('date', '?')}): {values}")
    return lines


def export_shipped_bundles(names: tuple[str, ...] = tuple(SHIPPED_MODELS)) -> list[Path]:
    """Re-export every bundle of each named shipped model from its source (the checkpoint, or the
    official weights for DFN3), with the demo clip as golden fixture, replacing the packaged ones."""
    import soundfile as sf

    from dfnet4_sdk.audio_io import resample
    from dfnet4_sdk.exporters.base import converter_for, export_bundle
    from dfnet4_sdk.models import load_model

    written = []
    clip = Path(__file__).resolve().parents[1] / "examples" / "noisy_speech_48k.flac"
    for name in names:
        shipped = SHIPPED_MODELS[name]
        model = load_model(name)  # records source_model in the manifest
        audio, rate = sf.read(clip, dtype="float32")
        fixture = resample(audio, rate, model.dsp.sample_rate_hz)[: model.dsp.sample_rate_hz]
        for b in shipped.bundles:
            bundle = export_bundle(model, converter_for(b.backend), b.path, precision=b.precision, fused=b.fused,
                                   blocks=b.blocks, streams=b.streams, fixture_audio=fixture,
                                   fixture_source=clip.name, overwrite=True)
            written.append(bundle.root)
    return written


if __name__ == "__main__":
    import sys

    for root in export_shipped_bundles(tuple(sys.argv[1:]) or tuple(SHIPPED_MODELS)):
        print(f"wrote {root}")
