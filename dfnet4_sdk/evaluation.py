"""Speech-enhancement evaluation: PESQ, STOI/ESTOI, SI-SDR and DNSMOS over noisy / enhanced /
reference systems.

    items = find_eval_items("../shared/data/dev_eval")   # X_noisy.* / X_clean.* / X_<label>.*
    rows = evaluate(items, Runtime())                     # one row per (item, system)
    print(to_markdown(summarise(rows)))

Intrusive metrics (PESQ, STOI, ESTOI, SI-SDR) first remove the delay between the clean reference
and the signal (FFT cross-correlation over +-100 ms) and trim both to their common length: STOI
and SI-SDR do not compensate delay themselves. DNSMOS is non-intrusive (no reference needed).

The metric packages come with the ``[eval]`` extra (pesq, pystoi, speechmos, onnxruntime) and are
imported only when a metric is computed. DNSMOS has its own module, ``dfnet4_sdk.dnsmos``
(``Dnsmos`` and ``dnsmos`` are importable from here too).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfnet4_sdk.audio_io import atomic_output, read_mono, resample, to_mono
from dfnet4_sdk.dnsmos import Dnsmos, dnsmos, require_eval_package  # noqa: F401  (Dnsmos: its callers import it here)
from dfnet4_sdk.errors import AudioInputError, ConfigError, PathError
from dfnet4_sdk.metrics import align, estimate_delay

log = logging.getLogger(__name__)

MAX_DELAY_S = 0.1  # alignment search range, +-100 ms
PESQ_RATE_HZ = 16000  # PESQ wide-band runs at 16 kHz
METRICS = ("pesq", "stoi", "estoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
NOISY, CLEAN, ENHANCED = "noisy", "clean", "enhanced"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aif", ".aiff")


# -- intrusive metrics (after delay alignment) -------------------------------------------------
def aligned(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove the delay of ``deg`` against ``ref`` (searched over +-100 ms) and trim both to the
    common length; returns (ref, deg, lag_samples)."""
    ref, deg = to_mono(ref), to_mono(deg)
    if min(len(ref), len(deg)) == 0:
        raise AudioInputError(f"cannot compare empty signals (lengths {len(ref)} and {len(deg)})")
    lag = estimate_delay(ref, deg, int(MAX_DELAY_S * sample_rate))
    ref, deg = align(ref, deg, lag)
    return ref, deg, lag


def pesq_wb(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04..4.64) after alignment, at 16 kHz."""
    ref, deg, _ = aligned(ref, deg, sr)
    return _pesq_aligned(ref, deg, sr)


def stoi(ref: np.ndarray, deg: np.ndarray, sr: int, extended: bool = False) -> float:
    """STOI (ESTOI with ``extended=True``) after alignment; pystoi resamples to 10 kHz itself."""
    ref, deg, _ = aligned(ref, deg, sr)
    return _stoi_aligned(ref, deg, sr, extended)


def si_sdr(ref: np.ndarray, est: np.ndarray, sr: int = 16000) -> float:
    """Scale-invariant SDR in dB after alignment (``sr`` only sets the +-100 ms search range)."""
    ref, est, _ = aligned(ref, est, sr)
    return _si_sdr_aligned(ref, est)


def _pesq_aligned(ref: np.ndarray, deg: np.ndarray, sr: int) -> float:
    pesq = require_eval_package("pesq", "PESQ")
    ref, deg = resample(ref, sr, PESQ_RATE_HZ), resample(deg, sr, PESQ_RATE_HZ)
    try:
        return float(pesq.pesq(PESQ_RATE_HZ, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except pesq.PesqError as e:  # e.g. no utterance found in a silent reference
        raise AudioInputError(f"PESQ cannot score this pair: {type(e).__name__} {e}") from e


def _stoi_aligned(ref: np.ndarray, deg: np.ndarray, sr: int, extended: bool) -> float:
    pystoi = require_eval_package("pystoi", "STOI")
    return float(pystoi.stoi(ref.astype(np.float64), deg.astype(np.float64), sr, extended=extended))


def _si_sdr_aligned(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64) - ref.mean()
    est = est.astype(np.float64) - est.mean()
    target = (np.dot(est, ref) / max(np.dot(ref, ref), 1e-20)) * ref
    noise = est - target
    return float(10.0 * np.log10(max(np.dot(target, target), 1e-20) / max(np.dot(noise, noise), 1e-20)))


# -- finding items -------------------------------------------------------------------------------
@dataclass(frozen=True)
class EvalItem:
    """One utterance: its noisy input, its clean reference (if any) and other systems' outputs."""

    name: str
    noisy_path: Path
    clean_path: Path | None = None
    reference_paths: dict[str, Path] = field(default_factory=dict)
    group: str = ""  # folder relative to the searched root ("" at the root), for per-set summaries


def _pair_by_suffix(paths: Iterable[Path], root: Path) -> list[EvalItem]:
    """Group ``X_noisy.*``, ``X_clean.*`` and ``X_<label>.*`` files of one folder into items."""
    by_dir: dict[Path, list[Path]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, []).append(p)
    items = []
    for folder in sorted(by_dir):
        files = sorted(by_dir[folder])
        noisy = {p.stem[: -len("_noisy")]: p for p in files if p.stem.endswith("_noisy") and len(p.stem) > 6}
        if len(noisy) < sum(p.stem.endswith("_noisy") for p in files):
            raise ConfigError(f"{folder} holds two noisy files with the same name in different formats; keep one")
        found: dict[str, dict[str, Path]] = {x: {} for x in noisy}
        for p in files:
            if p in noisy.values():
                continue
            names = [x for x in noisy if p.stem.startswith(x + "_")]
            if not names:
                log.debug("%s has no X_noisy.* partner; ignored", p)
                continue
            x = max(names, key=len)
            label = p.stem[len(x) + 1 :]
            if label in found[x]:
                raise ConfigError(f"{p} and {found[x][label]} are both {label!r} for {x}; keep one")
            found[x][label] = p
        group = "" if folder == root else folder.relative_to(root).as_posix()
        for x, p in noisy.items():
            refs = dict(found[x])
            clean = refs.pop(CLEAN, None)
            items.append(EvalItem(f"{group}/{x}" if group else x, p, clean, refs, group))
    return items


def _items_from_csv(path: Path) -> list[EvalItem]:
    """A manifest ``name,noisy,clean[,label...]`` (extra columns are reference systems; a
    ``reference_`` prefix is dropped; optional ``group``), or the shared data's ``path,kind``
    manifest, whose eval_* files are paired by suffix. Relative paths are from the CSV's folder."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    base = path.parent
    if {"path", "kind"} <= set(columns):
        paths = [base / r["path"] for r in rows if r["kind"].startswith("eval_")]
        return _pair_by_suffix(paths, base)
    if not {"name", "noisy"} <= set(columns):
        raise ConfigError(
            f"manifest {path} has columns {columns}; expected name,noisy,clean[,<reference label>...] "
            "(or the shared data's path,kind,...)"
        )
    labels = {c: c.removeprefix("reference_") for c in columns if c not in ("name", "noisy", "clean", "group")}
    items = []
    for r in rows:
        refs = {labels[c]: base / r[c] for c in labels if r[c]}
        clean = base / r["clean"] if r.get("clean") else None
        items.append(EvalItem(r["name"], base / r["noisy"], clean, refs, r.get("group") or ""))
    return items


def find_eval_items(folder_or_manifest: str | Path) -> list[EvalItem]:
    """Evaluation items of a folder (searched recursively; ``X_noisy.*`` pairs with ``X_clean.*``
    and ``X_<label>.*`` in the same folder) or of a CSV manifest. Every listed file must exist."""
    src = Path(folder_or_manifest)
    if src.is_dir():
        paths = [p for p in src.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]
        items = _pair_by_suffix(paths, src)
    elif src.is_file() and src.suffix.lower() == ".csv":
        items = _items_from_csv(src)
    else:
        raise PathError(f"{src} is neither a folder nor a .csv manifest; pass a folder of X_noisy/X_clean files")
    if not items:
        raise PathError(
            f"no evaluation items in {src}: expected files named X_noisy.<ext> with X_clean.<ext> "
            f"(and optionally X_<label>.<ext>) beside them, or a manifest name,noisy,clean"
        )
    missing = [str(p) for it in items for p in (it.noisy_path, it.clean_path, *it.reference_paths.values()) if p and not p.is_file()]
    if missing:
        raise PathError(f"{len(missing)} files listed in {src} do not exist, e.g. {missing[0]}")
    return items


# -- evaluating ----------------------------------------------------------------------------------
def _enhancer(runtime: Any) -> Callable[[np.ndarray, int], np.ndarray]:
    if runtime is None:
        from dfnet4_sdk.runtime import Runtime

        runtime = Runtime()
    if hasattr(runtime, "enhance"):
        return runtime.enhance
    if callable(runtime):
        return runtime
    raise ConfigError(f"runtime must be a Runtime or a callable enhance(audio, sample_rate), got {type(runtime).__name__}")


def score(signal: np.ndarray, sample_rate: int, clean: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of one signal: intrusive ones only with a ``clean`` reference (else NaN)."""
    out = {"delay_samples": math.nan, **dict.fromkeys(METRICS, math.nan)}
    if clean is not None:
        ref, deg, lag = aligned(clean, signal, sample_rate)
        out["delay_samples"] = lag
        try:
            out["pesq"] = _pesq_aligned(ref, deg, sample_rate)
        except AudioInputError as e:
            log.warning("%s; PESQ left empty", e)
        out["stoi"] = _stoi_aligned(ref, deg, sample_rate, extended=False)
        out["estoi"] = _stoi_aligned(ref, deg, sample_rate, extended=True)
        out["si_sdr"] = _si_sdr_aligned(ref, deg)
    for k, v in dnsmos(signal, sample_rate).items():
        out[f"dnsmos_{k}"] = v
    return out


def evaluate(
    items: Sequence[EvalItem],
    runtime: Any = None,
    systems: Sequence[str] | None = None,
    plot_dir: str | Path | None = None,
    progress: Callable[[int, EvalItem], None] | None = None,
) -> list[dict[str, Any]]:
    """Score each system on each item; returns rows {item, group, system, seconds, metrics...}.

    systems: any of "noisy", "enhanced" (``runtime``'s output), "clean" (DNSMOS only) and the
    items' reference labels; default: noisy, enhanced and every reference label. ``runtime`` is
    a ``Runtime``, a callable ``enhance(audio, sample_rate) -> audio``, or None for ``Runtime()``.
    ``plot_dir``: also write one spectrogram PNG per item there. ``progress(done, item)`` is
    called after each item with the number of items done.
    """
    labels = sorted({label for it in items for label in it.reference_paths})
    systems = tuple(systems) if systems else (NOISY, ENHANCED, *labels)
    unknown = [s for s in systems if s not in (NOISY, ENHANCED, CLEAN, *labels)]
    if unknown:
        raise ConfigError(f"unknown systems {unknown}; choose from noisy, enhanced, clean, {', '.join(labels) or '(no references)'}")
    enhance = _enhancer(runtime) if ENHANCED in systems else None
    if plot_dir is not None:
        from dfnet4_sdk.plotting import check_plotting_available

        check_plotting_available()
        Path(plot_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for i, item in enumerate(items):
        noisy, sr = read_mono(item.noisy_path)
        clean = read_mono(item.clean_path, sr)[0] if item.clean_path else None
        signals: dict[str, np.ndarray] = {}
        for system in systems:
            if system == NOISY:
                signals[system] = noisy
            elif system == ENHANCED:
                signals[system] = to_mono(enhance(noisy, sr))
            elif system == CLEAN and clean is not None:
                signals[system] = clean
            elif system in item.reference_paths:
                signals[system] = read_mono(item.reference_paths[system], sr)[0]
        for system, x in signals.items():
            ref = None if system == CLEAN else clean
            row = {"item": item.name, "group": item.group, "system": system, "seconds": len(x) / sr}
            rows.append({**row, **score(x, sr, ref)})
        if plot_dir is not None:
            from dfnet4_sdk.plotting import plot_spectrograms

            shown = {s: (x, sr) for s, x in signals.items() if s != CLEAN}
            if clean is not None:
                shown[CLEAN] = (clean, sr)
            plot_spectrograms(Path(plot_dir) / (item.name.replace("/", "__") + ".png"), shown, title=item.name)
        if progress is not None:
            progress(i + 1, item)
    return rows


def summarise(rows: Sequence[dict[str, Any]], by: Sequence[str] = ("group", "system")) -> list[dict[str, Any]]:
    """Mean of every metric per ``by`` key (default per folder and system), ignoring NaN;
    groups in order of first appearance, each with its number of items."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, members in groups.items():
        entry: dict[str, Any] = dict(zip(by, key))
        entry["items"] = len(members)
        for m in METRICS:
            values = np.array([r.get(m, math.nan) for r in members], dtype=np.float64)
            entry[m] = float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
        out.append(entry)
    return out


_HEADERS = {"pesq": "PESQ-WB", "stoi": "STOI", "estoi": "ESTOI", "si_sdr": "SI-SDR (dB)", "dnsmos_sig": "SIG",
            "dnsmos_bak": "BAK", "dnsmos_ovrl": "OVRL", "dnsmos_p808": "P.808"}


def to_markdown(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``summarise``'s output (empty cells: no clean reference)."""
    if not summary:
        return ""
    keys = [k for k in summary[0] if k not in METRICS and (k == "items" or any(str(e[k]) for e in summary))]
    metrics = [m for m in METRICS if any(np.isfinite(e[m]) for e in summary)]
    lines = ["| " + " | ".join(keys + [_HEADERS[m] for m in metrics]) + " |",
             "|" + "---|" * len(keys) + "---:|" * len(metrics)]
    for e in summary:
        cells = [str(e[k]) for k in keys]
        cells += [f"{e[m]:.2f}" if np.isfinite(e[m]) and m == "si_sdr" else f"{e[m]:.3f}" if np.isfinite(e[m]) else ""
                  for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_report(table: str, source_name: str, n_items: int, runtime: Any = None) -> str:
    """``to_markdown``'s table under the heading `dfsdk eval --markdown` writes: date, data set,
    item count and what ``enhanced`` was (``runtime``; None when it did not run)."""
    import datetime

    who = "" if runtime is None else f" `enhanced` = {runtime.model_family} on the {runtime.backend.name} backend."
    return (f"# Evaluation\n\nWritten by `dfsdk eval` on {datetime.date.today().isoformat()} over `{source_name}` "
            f"({n_items} items).{who} Intrusive metrics after delay alignment; DNSMOS P.835 (SIG/BAK/OVRL) and "
            "P.808 from the models `speechmos` ships.\n\n" + table)


def to_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write ``evaluate``'s rows as CSV (atomically; NaN as an empty cell)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
