"""Measure what `dfsdk models` reports about each shipped model and write ``assets/models.json``.

Size and compute come from the PyTorch model (``models.complexity``), latency from the bundle's
manifest, quality from `dfsdk eval`'s code on the held-out sets below, enhanced through the
shipped runtime exactly as `Runtime(name)` runs it. The default model is chosen from these numbers
(``shipped.choose_default``), so re-measure after shipping a new model::

    python -m dfnet4_sdk.model_facts                 # every shipped model (needs [all] and ../shared/data)
    python -m dfnet4_sdk.model_facts dfnet4-lite-v1  # one model; the others keep their entries

Held-out sets (never trained on or tuned on by training/, which keeps them out of its lists):
``noisy_real`` = the real noisy recordings of ../shared/data/noisy_real (DNSMOS only: no clean
reference), ``ears`` = the 12 EARS test triples of ../shared/data/dev_eval/ears (CC BY-NC:
evaluation only).
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

from dfnet4_sdk.shared_data import shared_data_dir
from dfnet4_sdk.shipped import FACTS_PATH, SHIPPED_MODELS, load_facts

REPO = Path(__file__).resolve().parents[1]
DATA = shared_data_dir()  # ../shared/data beside the checkout, or $DFNET4_SDK_DATA
HELD_OUT_SETS = {
    "noisy_real": (REPO / "evalsets" / "noisy_real.csv", "real noisy recordings (DNS5 street, gtcrn mix), DNSMOS only"),
    "ears": (DATA / "dev_eval" / "ears", "EARS test triples p102-p107, 16 kHz, CC BY-NC (evaluation only)"),
}
DEMO_CLIP = REPO / "examples" / "noisy_speech_48k.flac"
QUALITY_METRICS = ("pesq", "estoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def shipped_runtimes(name: str):
    """One ``Runtime`` per shipped bundle of ``name``: the first is what ``Runtime(name)`` runs
    where its backend is installed, the others what platforms without it run."""
    from dfnet4_sdk.runtime import Runtime

    return [Runtime(name, backend=b.backend) for b in SHIPPED_MODELS[name].bundles]


def measure_quality(name: str) -> list[dict[str, Any]]:
    """Every held-out set through every shipped bundle of ``name``, as `dfsdk eval` scores them."""
    from dfnet4_sdk import evaluation as ev

    today = datetime.date.today().isoformat()
    quality = []
    for runtime in shipped_runtimes(name):
        for set_name, (source, description) in HELD_OUT_SETS.items():
            items = ev.find_eval_items(source)
            rows = ev.evaluate(items, runtime, systems=("enhanced",))
            (summary,) = ev.summarise(rows, by=("system",))
            entry: dict[str, Any] = {"set": set_name, "description": description, "items": summary["items"],
                                     "date": today, "backend": runtime.backend.name,
                                     "precision": runtime.manifest.precision}
            entry.update({m: round(summary[m], 4) for m in QUALITY_METRICS if summary[m] == summary[m]})  # drop NaN
            quality.append(entry)
    return quality


def measure_stability(name: str, repeats: int = 8) -> list[dict[str, Any]]:
    """Per shipped bundle: the demo clip (9.6 s) streamed ``repeats`` times through one stream,
    and how long until consecutive repeats agree (dfnet4_sdk/stability.py)."""
    import soundfile as sf

    from dfnet4_sdk.audio_io import resample
    from dfnet4_sdk.stability import repeated_clip_agreement

    clip, rate = sf.read(DEMO_CLIP, dtype="float32")
    reports = []
    for runtime in shipped_runtimes(name):
        report = repeated_clip_agreement(runtime, resample(clip, rate, runtime.sample_rate), repeats=repeats)
        reports.append({"backend": runtime.backend.name, "precision": runtime.manifest.precision,
                        "clip": DEMO_CLIP.name, **report.as_dict()})
    return reports


def measure(name: str) -> dict[str, Any]:
    from dfnet4_sdk.models import load_model
    from dfnet4_sdk.models.complexity import count_macs_per_second, count_parameters
    from dfnet4_sdk.runtime import Runtime

    shipped = SHIPPED_MODELS[name]
    model = load_model(name)
    rt = Runtime(name)
    facts = {
        "parameters": count_parameters(model)["total"],
        "macs_per_second": round(count_macs_per_second(model)),
        "latency_ms": 1000.0 * rt.latency_samples / rt.sample_rate,
        "quality": measure_quality(name),
        "stability": measure_stability(name),
    }
    if shipped.notice:
        facts["licence"] = f"see dfnet4_sdk/assets/{shipped.notice}"
    return facts


def write_facts(names: tuple[str, ...] = tuple(SHIPPED_MODELS), path: Path = FACTS_PATH) -> dict[str, Any]:
    facts = load_facts(path)
    for name in names:
        facts[name] = measure(name)
    path.write_text(json.dumps(facts, indent=2, ensure_ascii=False) + "\n")
    return facts


if __name__ == "__main__":
    written = write_facts(tuple(sys.argv[1:]) or tuple(SHIPPED_MODELS))
    print(json.dumps(written, indent=2, ensure_ascii=False))
