"""Speech-enhancement evaluation: PESQ, STOI/ESTOI, SI-SDR and DNSMOS over noisy / enhanced /
reference systems.

    items = find_eval_items("../shared/data/dev_eval")   # X_noisy.* / X_clean.* / X_<label>.*
    rows = evaluate(items, Runtime())                     # one row per (item, system)
    print(to_markdown(summarise(rows)))

Intrusive metrics (PESQ, STOI, ESTOI, SI-SDR) first remove the delay between the clean reference
and the signal (FFT cross-correlation over +-100 ms) and trim both to their common length: STOI
and SI-SDR do not compensate delay themselves. DNSMOS is non-intrusive (no reference needed).

The metric packages come with the ``[eval]`` extra (pesq, pystoi, speechmos, onnxruntime) and are
imported only when a metric is computed. DNSMOS uses two ONNX models that ``speechmos`` ships,
run here with onnxruntime (speechmos's own code needs librosa and is never imported; nothing is
downloaded):

- ``speechmos/dnsmos_models/sig_bak_ovr.onnx``: DNSMOS P.835 (SIG, BAK, OVRL), raw 16 kHz audio
  in 9.01 s segments, scores mapped by the non-personalised polynomials of Microsoft's
  DNS-Challenge ``dnsmos_local.py``;
- ``speechmos/dnsmos_models/model_v8.onnx``: DNSMOS P.808 on a 120-band log-mel spectrogram
  (computed here in numpy as librosa 0.9.1 did: n_fft 321, hop 160, Hann, zero padding,
  Slaney mel, ``power_to_db(ref=max)``, ``(db + 40) / 40``).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import importlib
import importlib.util
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfnet4_sdk.audio_io import atomic_output, read_audio, resample
from dfnet4_sdk.errors import (
    AudioFileError,
    AudioInputError,
    BackendNotAvailableError,
    ConfigError,
    PathError,
)
from dfnet4_sdk.metrics import align, estimate_delay

log = logging.getLogger(__name__)

EVAL_EXTRA_HINT = 'pip install "dfnet4-sdk[eval]"'
MAX_DELAY_S = 0.1  # alignment search range, +-100 ms
PESQ_RATE_HZ = 16000  # PESQ wide-band runs at 16 kHz
DNSMOS_RATE_HZ = 16000
DNSMOS_SEGMENT_S = 9.01  # the models' input length; audio is tiled up to it, then hopped by 1 s
DNSMOS_MODELS = {  # file in speechmos/dnsmos_models -> sha256 of the copy this code was checked on
    "sig_bak_ovr.onnx": "269fbebdb513aa23cddfbb593542ecc540284a91849ac50516870e1ac78f6edd",
    "model_v8.onnx": "9246480c58567bc6affd4200938e77eef49468c8bc7ed3776d109c07456f6e91",
}
# DNS-Challenge dnsmos_local.py, is_personalized_MOS=False: raw P.835 outputs -> MOS
_P835_POLY = {
    "sig": np.poly1d([-0.08397278, 1.22083953, 0.0052439]),
    "bak": np.poly1d([-0.13166888, 1.60915514, -0.39604546]),
    "ovrl": np.poly1d([-0.06766283, 1.11546468, 0.04602535]),
}
_MEL_N_FFT, _MEL_HOP, _MEL_BANDS = 321, 160, 120  # P.808 front-end: 900 frames x 120 bands per segment

METRICS = ("pesq", "stoi", "estoi", "si_sdr", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl", "dnsmos_p808")
NOISY, CLEAN, ENHANCED = "noisy", "clean", "enhanced"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aif", ".aiff")


def _require(module: str, what: str):
    """Import an optional metric package or raise a typed error naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendNotAvailableError(
            f"{what} needs the Python package {module!r}, which is not installed ({e}); "
            f"install the evaluation extra: {EVAL_EXTRA_HINT}"
        ) from e


# -- intrusive metrics (after delay alignment) -------------------------------------------------
def _mono(audio: np.ndarray) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def aligned(ref: np.ndarray, deg: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Remove the delay of ``deg`` against ``ref`` (searched over +-100 ms) and trim both to the
    common length; returns (ref, deg, lag_samples)."""
    ref, deg = _mono(ref), _mono(deg)
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
    pesq = _require("pesq", "PESQ")
    ref, deg = resample(ref, sr, PESQ_RATE_HZ), resample(deg, sr, PESQ_RATE_HZ)
    try:
        return float(pesq.pesq(PESQ_RATE_HZ, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except pesq.PesqError as e:  # e.g. no utterance found in a silent reference
        raise AudioInputError(f"PESQ cannot score this pair: {type(e).__name__} {e}") from e


def _stoi_aligned(ref: np.ndarray, deg: np.ndarray, sr: int, extended: bool) -> float:
    pystoi = _require("pystoi", "STOI")
    return float(pystoi.stoi(ref.astype(np.float64), deg.astype(np.float64), sr, extended=extended))


def _si_sdr_aligned(ref: np.ndarray, est: np.ndarray) -> float:
    ref = ref.astype(np.float64) - ref.mean()
    est = est.astype(np.float64) - est.mean()
    target = (np.dot(est, ref) / max(np.dot(ref, ref), 1e-20)) * ref
    noise = est - target
    return float(10.0 * np.log10(max(np.dot(target, target), 1e-20) / max(np.dot(noise, noise), 1e-20)))


# -- DNSMOS --------------------------------------------------------------------------------------
def _hz_to_mel(hz: np.ndarray) -> np.ndarray:  # Slaney: linear below 1 kHz, logarithmic above
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0), hz * 3.0 / 200.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return np.where(mel >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0)), mel * 200.0 / 3.0)


def _mel_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] Slaney-normalised triangles, as librosa.filters.mel."""
    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_hz = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2.0), n_mels + 2))
    ramps = np.subtract.outer(mel_hz, fft_hz)
    widths = np.diff(mel_hz)
    lower, upper = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper)) * (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


class Dnsmos:
    """DNSMOS P.835 + P.808 with onnxruntime sessions loaded once (see the module docstring)."""

    def __init__(self, num_threads: int = 0):
        ort = _require("onnxruntime", "DNSMOS")
        _require("speechmos", "DNSMOS (its ONNX models)")
        folder = Path(importlib.util.find_spec("speechmos").submodule_search_locations[0]) / "dnsmos_models"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        sessions = {}
        for name, sha in DNSMOS_MODELS.items():
            path = folder / name
            if not path.is_file():
                raise BackendNotAvailableError(f"DNSMOS model {path} is missing; reinstall speechmos: {EVAL_EXTRA_HINT}")
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != sha:
                log.warning("DNSMOS model %s differs from the copy this SDK was checked on (sha256 %s)", path, sha)
            sessions[name] = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        self._p835, self._p808 = sessions["sig_bak_ovr.onnx"], sessions["model_v8.onnx"]
        self._mel = _mel_filterbank(DNSMOS_RATE_HZ, _MEL_N_FFT, _MEL_BANDS)
        n = np.arange(_MEL_N_FFT)
        self._window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / _MEL_N_FFT)).astype(np.float32)  # periodic Hann

    def _segments(self, audio: np.ndarray) -> np.ndarray:
        """[S, 144160] 9.01 s segments hopped by 1 s, exactly as dnsmos_local.py cuts them."""
        fs, seg_len = DNSMOS_RATE_HZ, int(DNSMOS_SEGMENT_S * DNSMOS_RATE_HZ)
        while len(audio) < seg_len:
            audio = np.append(audio, audio)
        num_hops = int(np.floor(len(audio) / fs) - DNSMOS_SEGMENT_S) + 1
        segs = [audio[int(i * fs) : int((i + DNSMOS_SEGMENT_S) * fs)] for i in range(num_hops)]
        return np.stack([s for s in segs if len(s) == seg_len]).astype(np.float32)

    def _log_mel(self, segments: np.ndarray) -> np.ndarray:
        """[S, 900, 120] P.808 features of each segment minus its last 10 ms."""
        pad = _MEL_N_FFT // 2
        y = np.pad(segments[:, :-_MEL_HOP], ((0, 0), (pad, pad)), mode="constant")
        frames = np.lib.stride_tricks.sliding_window_view(y, _MEL_N_FFT, axis=1)[:, ::_MEL_HOP]
        power = np.abs(np.fft.rfft(frames * self._window, axis=-1)) ** 2
        mel = power.astype(np.float32) @ self._mel.T
        db = 10.0 * np.log10(np.maximum(mel, 1e-10))
        db -= 10.0 * np.log10(np.maximum(mel.max(axis=(1, 2), keepdims=True), 1e-10))
        db = np.maximum(db, db.max(axis=(1, 2), keepdims=True) - 80.0)
        return ((db + 40.0) / 40.0).astype(np.float32)

    def __call__(self, audio: np.ndarray, sample_rate: int) -> dict[str, float]:
        """Scores of a whole signal (mono or downmixed), means over its segments."""
        audio = resample(_mono(audio), sample_rate, DNSMOS_RATE_HZ)
        if len(audio) == 0 or not np.any(audio):
            raise AudioInputError("DNSMOS needs a non-empty, non-silent signal")
        segs = self._segments(audio)
        raw = self._p835.run(None, {"input_1": segs})[0]  # [S, 3]: sig, bak, ovrl
        p808 = self._p808.run(None, {"input_1": self._log_mel(segs)})[0][:, 0]
        scores = {k: float(np.mean(_P835_POLY[k](raw[:, i]))) for i, k in enumerate(("sig", "bak", "ovrl"))}
        scores["p808"] = float(np.mean(p808))
        return scores


@functools.lru_cache(maxsize=1)
def _shared_dnsmos() -> Dnsmos:
    return Dnsmos()


def dnsmos(audio: np.ndarray, sr: int) -> dict[str, float]:
    """DNSMOS of ``audio`` at any rate: {"sig", "bak", "ovrl", "p808"} (MOS, 1..5)."""
    return _shared_dnsmos()(audio, sr)


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


def _read_mono(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    audio, sr = read_audio(path)
    audio = _mono(audio)
    if sample_rate is not None and sr != sample_rate:
        audio, sr = resample(audio, sr, sample_rate), sample_rate
    return audio, sr


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
        noisy, sr = _read_mono(item.noisy_path)
        clean = _read_mono(item.clean_path, sr)[0] if item.clean_path else None
        signals: dict[str, np.ndarray] = {}
        for system in systems:
            if system == NOISY:
                signals[system] = noisy
            elif system == ENHANCED:
                signals[system] = _mono(enhance(noisy, sr))
            elif system == CLEAN and clean is not None:
                signals[system] = clean
            elif system in item.reference_paths:
                signals[system] = _read_mono(item.reference_paths[system], sr)[0]
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


def to_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write ``evaluate``'s rows as CSV (atomically; NaN as an empty cell)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
