"""Model-card numbers: noisy input, DFN3 and a trained checkpoint side by side, all enhanced
through the SDK's streaming ``Runtime`` (the shipped path, default options).

    python -m dfnet4_sdk.training.report dfnet4-lite-v1 --out runs/card.json
    python -m dfnet4_sdk.training.report --systems noisy,dfn3 --out runs/ref.json   # once
    python -m dfnet4_sdk.training.report ckpt.pt --systems ours --merge-with runs/ref.json --out runs/card.json

Sets: dev_eval/vbd_train (PESQ, STOI, DNSMOS; held out from training), dev_eval/ears
(CC BY-NC, evaluation only; PESQ, STOI, DNSMOS) and noisy_real/ (real recordings, DNSMOS only).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click
import numpy as np

from dfnet4_sdk.audio_io import read_audio
from dfnet4_sdk.evaluation import dnsmos, find_eval_items, pesq_wb, stoi

log = logging.getLogger(__name__)

EVAL_SETS = ("dev_eval/vbd_train", "dev_eval/ears")
REAL_SET = "noisy_real"


def _score(x: np.ndarray, clean: np.ndarray | None, sr: int) -> dict[str, float]:
    d = dnsmos(x, sr)
    out = {"dnsmos_sig": d["sig"], "dnsmos_bak": d["bak"], "dnsmos_ovrl": d["ovrl"]}
    if clean is not None:
        out["pesq"] = pesq_wb(clean, x, sr)
        out["stoi"] = stoi(clean, x, sr)
    return out


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} | {"clips": len(rows)}


def compare(checkpoint: str | Path | None, data_root: str | Path, teacher: str = "dfn3",
            systems: tuple[str, ...] = ("noisy", "dfn3", "ours")) -> dict[str, dict[str, dict[str, float]]]:
    """{set: {system: mean metrics}} for the chosen systems among noisy, dfn3 (``teacher``) and
    ours (``checkpoint``)."""
    from dfnet4_sdk import Runtime

    root = Path(data_root)
    runtimes = {}
    if "dfn3" in systems:
        runtimes["dfn3"] = Runtime(teacher, backend="torch")
    if "ours" in systems:
        runtimes["ours"] = Runtime(str(checkpoint), backend="torch")
    sets = {name: [(i.noisy_path, i.clean_path) for i in find_eval_items(root / name)] for name in EVAL_SETS}
    sets[REAL_SET] = [(p, None) for p in sorted((root / REAL_SET).glob("*.flac"))]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, pairs in sets.items():
        rows: dict[str, list] = {s: [] for s in systems}
        for noisy_path, clean_path in pairs:
            noisy, sr = read_audio(noisy_path)
            noisy = noisy[:, 0]
            clean = read_audio(clean_path)[0][:, 0] if clean_path else None
            if "noisy" in systems:
                rows["noisy"].append(_score(noisy, clean, sr))
            for s, rt in runtimes.items():
                rows[s].append(_score(rt.clone().enhance(noisy, sample_rate=sr), clean, sr))
            log.info("%s: %s", name, Path(noisy_path).name)
        results[name] = {s: _mean(r) for s, r in rows.items()}
    return results


def merge(*results: dict) -> dict:
    """Combine compare() outputs of different systems, set by set."""
    out: dict = {}
    for r in results:
        for name, systems in r.items():
            out.setdefault(name, {}).update(systems)
    return out


def to_markdown(results: dict) -> str:
    lines = ["| set | system | PESQ | STOI | DNSMOS SIG | DNSMOS BAK | DNSMOS OVRL |", "|---|---|---|---|---|---|---|"]
    for name, systems in results.items():
        for s, m in systems.items():
            cells = " | ".join(f"{m[k]:.3f}" if k in m else "–" for k in ("pesq", "stoi", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))
            lines.append(f"| {name} ({m['clips']}) | {s} | {cells} |")
    return "\n".join(lines)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False), required=False)
@click.option("--data-root", default="../shared/data", show_default=True)
@click.option("--systems", default="noisy,dfn3,ours", show_default=True, help="comma-separated subset")
@click.option("--merge-with", "merge_with", type=click.Path(exists=True, dir_okay=False), multiple=True,
              help="earlier results JSON to merge (e.g. noisy and dfn3 scored once)")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="JSON file for the results")
def main(checkpoint: str | None, data_root: str, systems: str, merge_with: tuple[str, ...], out: str) -> None:
    """Score noisy / DFN3 / CHECKPOINT on dev_eval and noisy_real; print a markdown table."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    chosen = tuple(s.strip() for s in systems.split(",") if s.strip())
    if "ours" in chosen and not checkpoint:
        raise click.UsageError("system 'ours' needs a CHECKPOINT argument")
    results = merge(*(json.loads(Path(p).read_text()) for p in merge_with), compare(checkpoint, data_root, systems=chosen))
    Path(out).write_text(json.dumps(results, indent=1))
    click.echo(to_markdown(results))


if __name__ == "__main__":
    main()
