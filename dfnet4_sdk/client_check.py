"""``dfsdk conformance BUNDLE --client CMD``: check an external client (a port of the per-hop
recipe to JavaScript, Swift, Kotlin, C++...) against the Python runtime.

CMD is a command template with ``{bundle}`` (the bundle directory), ``{input}`` and ``{output}``
(mono float32 WAV files at the bundle's sample rate). For every probe of
``dfnet4_sdk.client_probes`` the client must write an output of the input's length,
delay-compensated as ``dfsdk run`` writes it, within ``TOLERANCES`` of ``Runtime(bundle)`` with
default options (what ``dfsdk run --model BUNDLE`` runs). The command is run without a shell.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from dfnet4_sdk.client_probes import Probe, probe_set, select_probes
from dfnet4_sdk.errors import ConfigError, PathError

PLACEHOLDERS = ("bundle", "input", "output")
REQUIRED_PLACEHOLDERS = ("input", "output")
_PLACEHOLDER = re.compile(r"\{(\w*)\}")
STDERR_TAIL_CHARS = 300
POLL_S = 0.2  # how often a client run is looked at (for its timeout and for Ctrl-C)


@dataclass(frozen=True)
class ClientTolerances:
    """What a client must meet on every probe; printed with every report."""

    min_snr_db: float = 60.0  # client output vs Runtime(bundle) output over the whole probe
    timeout_base_s: float = 60.0  # each client run may take this, plus timeout_per_audio_s per second of audio
    timeout_per_audio_s: float = 2.0
    output_subtype: str = "FLOAT"  # 32-bit float WAV, mono, at the bundle's rate, the input's length

    def timeout_s(self, seconds_of_audio: float) -> float:
        return self.timeout_base_s + self.timeout_per_audio_s * seconds_of_audio

    def describe(self) -> str:
        return (f"tolerances: SNR vs Runtime(bundle) >= {self.min_snr_db:g} dB, length equal to the input's, every "
                f"sample finite, mono {self.output_subtype} WAV at the bundle's rate, each run within "
                f"{self.timeout_base_s:g} s + {self.timeout_per_audio_s:g} s per second of audio")


TOLERANCES = ClientTolerances()


@dataclass
class ProbeResult:
    probe: str
    length: int  # input samples
    snr_db: float = float("nan")  # nan: no output to compare
    reasons: list[str] = field(default_factory=list)  # why it failed; empty: passed
    seconds: float = 0.0  # the client's run

    @property
    def passed(self) -> bool:
        return not self.reasons

    def row(self) -> str:
        snr = "-" if math.isnan(self.snr_db) else f"{self.snr_db:.1f}"
        verdict = "pass" if self.passed else "FAIL"
        return f"{self.probe:28s} {self.length:>9d} {snr:>8s}  {verdict:7s} {'; '.join(self.reasons)}"


HEADER = f"{'probe':28s} {'length':>9s} {'SNR dB':>8s}  {'verdict':7s} reason"


@dataclass
class ClientReport:
    bundle: Path
    command: str
    results: list[ProbeResult]
    tolerances: ClientTolerances = TOLERANCES

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    def summary(self) -> str:
        failed = [r.probe for r in self.results if not r.passed]
        if not failed:
            return f"client passed all {len(self.results)} probes"
        return f"client FAILED {len(failed)} of {len(self.results)} probes: {', '.join(failed)}"


# -- the command template ----------------------------------------------------------------------
def parse_template(template: str | None) -> list[str]:
    """The template split as a POSIX shell would (no shell runs it); every problem at once."""
    if template is None or not template.strip():
        raise ConfigError("--client needs a command template such as 'node web/cli.js {bundle} {input} {output}'; "
                          "got an empty one")
    try:
        tokens = shlex.split(template)
    except ValueError as e:
        raise ConfigError(f"--client {template!r} cannot be split into arguments ({e}); check its quotes") from e
    found = {name for token in tokens for name in _PLACEHOLDER.findall(token)}
    problems = [f"it has no {{{name}}}" for name in REQUIRED_PLACEHOLDERS if name not in found]
    problems += [f"{{{name}}} is not a placeholder" for name in sorted(found - set(PLACEHOLDERS))]
    if _PLACEHOLDER.search(tokens[0]):
        problems.append("the command itself (its first word) cannot be a placeholder")
    if problems:
        raise ConfigError(f"--client {template!r}: {'; '.join(problems)}. Expected a command with {{input}} and "
                          "{output} (the WAV files the check writes and reads) and optionally {bundle}, e.g. "
                          "'node web/cli.js {bundle} {input} {output}'")
    return tokens


def fill_template(tokens: list[str], paths: dict[str, Path]) -> list[str]:
    return [_PLACEHOLDER.sub(lambda m: str(paths[m.group(1)]), token) for token in tokens]


def check_command(tokens: list[str]) -> None:
    """The command must be found before any probe runs (a usage error, not 14 failed probes)."""
    command = tokens[0]
    if os.sep in command or (os.altsep and os.altsep in command):
        path = Path(command)
        if path.is_file() and os.access(path, os.X_OK):
            return
        found = "no such file" if not path.exists() else "a file that is not executable" if path.is_file() else "a folder"
        raise ConfigError(f"--client command {command!r} cannot be run: found {found}; give an executable file "
                          "(chmod +x) or a command on PATH")
    if shutil.which(command) is None:
        raise ConfigError(f"--client command {command!r} was not found on PATH; install it, or give its path "
                          "(e.g. ./client or an absolute path)")


# -- running and comparing ---------------------------------------------------------------------
def run_client(argv: list[str], timeout_s: float) -> str | None:
    """Run one client command; None when it succeeded, else why not. A command that outlives its
    timeout is killed with its whole process group."""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    except OSError as e:
        return f"cannot start {argv[0]}: {e.strerror or e}"
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            # Short waits: a Ctrl-C that lands in another thread (a backend's workers) is only
            # handled once the main thread runs Python again, not after the whole client run.
            try:
                _, stderr = proc.communicate(timeout=min(POLL_S, max(deadline - time.monotonic(), 0.0)))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _kill_group(proc)
                    return f"timed out after {timeout_s:g} s"
    except BaseException:  # Ctrl-C, SIGTERM: the client runs in its own session, so it is ended here
        _kill_group(proc)
        raise
    if proc.returncode != 0:
        tail = stderr.decode(errors="replace").strip()[-STDERR_TAIL_CHARS:].replace("\n", " | ")
        return f"exit {proc.returncode}" + (f": {tail}" if tail else "")
    return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def snr_db(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - est|^2); inf when equal, -inf when the reference is silent and the estimate not."""
    reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
    err, sig = float(np.sum((reference - estimate) ** 2)), float(np.sum(reference**2))
    if err == 0:
        return math.inf
    return -math.inf if sig == 0 else 10.0 * math.log10(sig / err)


def compare_output(path: Path, reference: np.ndarray, sample_rate: int, tol: ClientTolerances) -> tuple[float, list[str]]:
    """(SNR dB, every reason the client's output at ``path`` fails) against ``reference``."""
    if not path.is_file():
        return math.nan, ["wrote no output file"]
    try:
        info = sf.info(str(path))
        out = sf.read(str(path), dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as e:
        return math.nan, [f"output is not readable audio ({e})"]
    problems = []
    if info.format != "WAV" or info.subtype != tol.output_subtype:
        problems.append(f"output is {info.format} {info.subtype}, expected WAV {tol.output_subtype}")
    if info.samplerate != sample_rate:
        problems.append(f"output rate {info.samplerate} Hz, expected {sample_rate} Hz")
    if out.shape[1] != 1:
        problems.append(f"output has {out.shape[1]} channels, expected 1")
    out = out[:, 0]
    if len(out) != len(reference):
        problems.append(f"output length {len(out)}, expected {len(reference)}")
    n = min(len(out), len(reference))
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        problems.append(f"{bad} non-finite samples")
        return math.nan, problems
    snr = snr_db(reference[:n], out[:n])
    if not snr >= tol.min_snr_db:
        problems.append(f"SNR {snr:.1f} dB < {tol.min_snr_db:g} dB" + (" (over the common length)" if n < len(reference) else ""))
    return snr, problems


def resolve_bundle(bundle_or_model: str | None):
    """The bundle to check: a bundle directory or .dfbundle, or a shipped model's packaged bundle
    (default: the default model's)."""
    from dfnet4_sdk.bundle import Bundle, is_bundle
    from dfnet4_sdk.shipped import DEFAULT_MODEL, shipped_model

    name = bundle_or_model or DEFAULT_MODEL
    if is_bundle(name):
        return Bundle.load(name)
    shipped = shipped_model(name)
    prebuilt = shipped.bundle_for(None) if shipped is not None else None
    if prebuilt is not None:
        return Bundle.load(prebuilt.path)
    raise ConfigError(f"--client checks a bundle, and {name!r} is neither a bundle directory, a .dfbundle nor a "
                      "shipped model with a bundle that runs here; export one with `dfsdk export ... -o DIR` and pass DIR")


def check_client(
    bundle_or_model: str | None,
    template: str,
    selection: str | None = None,
    keep: Path | None = None,
    audio: Path | None = None,
    tol: ClientTolerances = TOLERANCES,
    echo: Callable[[str], None] = print,
) -> ClientReport:
    """Run the client on every selected probe and compare with ``Runtime(bundle)``; ``echo`` gets
    the tolerances, the table header and each row as it is measured."""
    from dfnet4_sdk.runtime import Runtime

    tokens = parse_template(template)
    check_command(tokens)
    if keep is not None and keep.exists() and not keep.is_dir():
        raise PathError(f"--keep {keep} is a file; expected a folder for the probe files (it is created if missing)")
    bundle = resolve_bundle(bundle_or_model)
    rate, hop = bundle.manifest.dsp.sample_rate_hz, bundle.manifest.dsp.hop_size_samples
    probes = select_probes(probe_set(rate, hop, audio, bundle.manifest.runtime.silent_hop_mean_square), selection)
    rt = Runtime(bundle)
    echo(f"bundle {bundle.root} ({bundle.manifest.model_name}, {bundle.manifest.backend} {bundle.manifest.precision}, "
         f"{rate} Hz); client: {template}")
    echo(tol.describe())
    echo(HEADER)
    results = []
    with tempfile.TemporaryDirectory(prefix="dfsdk-client-") as tmp:
        folder = Path(tmp) if keep is None else keep
        folder.mkdir(parents=True, exist_ok=True)
        for probe in probes:
            result = _check_probe(probe, rt, bundle.root, tokens, folder, tol)
            results.append(result)
            echo(result.row())
    report = ClientReport(bundle.root, template, results, tol)
    echo(report.summary() + (f"; probe files kept in {keep}" if keep is not None else ""))
    return report


def _check_probe(probe: Probe, rt, bundle_root: Path, tokens: list[str], folder: Path,
                 tol: ClientTolerances) -> ProbeResult:
    audio = probe.make()
    rate = rt.sample_rate
    paths = {"bundle": bundle_root.resolve(), "input": (folder / f"{probe.name}.wav").resolve(),
             "output": (folder / f"{probe.name}.client.wav").resolve()}
    sf.write(str(paths["input"]), audio, rate, subtype="FLOAT", format="WAV")
    paths["output"].unlink(missing_ok=True)
    reference = rt.enhance(audio, rate)
    sf.write(str(folder / f"{probe.name}.python.wav"), reference, rate, subtype="FLOAT", format="WAV")
    result = ProbeResult(probe.name, len(audio))
    started = time.perf_counter()
    failure = run_client(fill_template(tokens, paths), tol.timeout_s(len(audio) / rate))
    result.seconds = time.perf_counter() - started
    if failure is not None:
        result.reasons.append(f"client failed: {failure}")
        return result
    result.snr_db, result.reasons = compare_output(paths["output"], reference, rate, tol)
    return result


def conformance_command(bundle_or_model: str | None, template: str | None, selection: str | None, keep: Path | None,
                        audio: Path | None, not_applicable: dict[str, object],
                        echo: Callable[[str], None] = print) -> int:
    """``dfsdk conformance [BUNDLE] --client CMD [--probes P] [--keep DIR]``; returns the exit code
    (0 every probe passed, 1 any failed; usage errors raise ConfigError)."""
    given = [name for name, value in not_applicable.items() if value]
    if given:
        raise ConfigError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to --client (which "
                          f"compares a client with Runtime(bundle)); drop {'it' if len(given) == 1 else 'them'}")
    if selection is not None and selection.strip() == "list":
        rt_rate, hop = _rate_and_hop(bundle_or_model)
        for probe in probe_set(rt_rate, hop, audio):
            echo(f"{probe.name:28s} {probe.description}")
        return 0
    if template is None:
        raise ConfigError("--probes and --keep choose what --client runs; give --client 'CMD {input} {output}' "
                          "(or --probes list to see the probes)")
    report = check_client(bundle_or_model, template, selection, keep, audio, echo=echo)
    return 0 if report.passed else 1


def _rate_and_hop(bundle_or_model: str | None) -> tuple[int, int]:
    dsp = resolve_bundle(bundle_or_model).manifest.dsp
    return dsp.sample_rate_hz, dsp.hop_size_samples


# -- docs/CONFORMANCE.md -------------------------------------------------------------------------
# What a probe that fails usually points at, by probe name pattern (the doc's last column).
PROBE_HINTS = {
    "silence-*": "the silence rule: a hop whose mean square is below 1e-7 outputs zeros and changes no state",
    "near-threshold": "the silence rule's comparison: the hop's own mean square, strictly below 1e-7",
    "clipped-speech": "full-scale input: overflow or saturation in a fixed-point or fp16 path",
    "square-bursts": "full-scale input: overflow or saturation in a fixed-point or fp16 path",
    "one-sample": "the final partial hop: zero-padded to a hop and run, never skipped as silence",
    "partial-hop-*": "the final partial hop: zero-padded to a hop and run, never skipped as silence",
    "long": "drift: single-precision accumulators, state decay, a buffer that grows",
}


def porting_section(tol: ClientTolerances = TOLERANCES) -> str:
    """The "Checking a port" section of docs/CONFORMANCE.md, made from the probe set and ``TOLERANCES``
    (so ``dfsdk conformance --write-docs`` writes it too)."""
    import fnmatch

    synthetic = [p for p in probe_set(48000, 480) if not p.name.startswith("real-")]
    rows = [f"| `{p.name}` | {p.description} | "
            f"{next((h for pat, h in PROBE_HINTS.items() if fnmatch.fnmatchcase(p.name, pat)), '')} |" for p in synthetic]
    return "\n".join([
        "## Checking a port: `dfsdk conformance --client`",
        "",
        "A team porting the per-hop recipe of docs/BUNDLE.md (JavaScript, Swift, Kotlin, C++) checks its client "
        "against the Python runtime with one command:",
        "",
        "```bash",
        "dfsdk conformance BUNDLE --client \"node web/cli.js {bundle} {input} {output}\"",
        "```",
        "",
        "- **The client's contract.** `{bundle}` is the bundle directory (a `.dfbundle` is extracted first; "
        "BUNDLE may also name a shipped model, default the default model's bundle); `{input}` a mono 32-bit float "
        "WAV at the bundle's sample rate; `{output}` the file the client writes: mono 32-bit float WAV at the same "
        "rate with exactly as many samples as the input, delay-compensated as `dfsdk run` writes it (output sample "
        "n belongs to input sample n: drop the first `latency` samples, push zeros through the look-ahead at the "
        "end), with the runtime's default options (no attenuation limit, no post-filter, default gating "
        "thresholds, silent hops skipped). The command runs once per probe, without a shell (split as a POSIX "
        "shell would: quote paths with spaces), and exits 0 when it succeeded.",
        "- **The reference** is `Runtime(BUNDLE)` with default options, what `dfsdk run --model BUNDLE` runs.",
        f"- **Tolerances** (`dfnet4_sdk/client_check.py`, `TOLERANCES`, printed with every report): SNR of the "
        f"client's output against the reference >= {tol.min_snr_db:g} dB over the whole probe, the input's length, "
        f"every sample finite, mono {tol.output_subtype} WAV at the bundle's rate, each run within "
        f"{tol.timeout_base_s:g} s + {tol.timeout_per_audio_s:g} s per second of audio (then it is killed).",
        "- **The probes**, made at run time, deterministically, at the bundle's rate and hop: the real recordings "
        "(`real-NAME`: the demo clip `examples/noisy_speech_48k.flac`, the clips of `noisy_real/` in the "
        "project's data folder when present, and `--audio FILE`), and synthetic ones cut from one speech clip "
        "(`--audio`, else the demo clip, else the data folder's DNS5 clip). For a 48 kHz bundle with a 480-sample hop:",
        "",
        "| probe | what it is | a failure usually means |",
        "|---|---|---|",
        *rows,
        "",
        "- **The report**: a row per probe (probe, length in samples, SNR dB, verdict, reason) as each finishes, "
        "then a summary. Exit 0 when every probe passed, 1 when any failed, 2 for a usage error (a template "
        "without `{input}` or `{output}`, an unknown `{placeholder}`, a command that is not found, an unknown "
        "probe). `--probes list` describes the probes; `--probes 'silence-*,one-sample'` runs some (names or "
        "patterns, comma-separated); `--keep DIR` keeps each probe's `NAME.wav` (input), `NAME.client.wav` and "
        "`NAME.python.wav` (the reference) for a closer look.",
        "- A client that copies its input, or writes zeros, fails every probe but `silence-only`; one that "
        "ignores the silence rule fails `silence-leading`, `silence-inner` (about 21 dB with DFN3) and "
        "`near-threshold`; one that drops the final partial hop fails `one-sample` and both `partial-hop` probes "
        "(tests/test_client_check.py).",
        "",
    ])
