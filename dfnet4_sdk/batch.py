"""Batch enhancement: many files into an output folder, resumable, over N worker processes.

``enhance_batch(inputs, output_dir, ...)`` expands the inputs (``batch_inputs``), plans the work
before doing any, then enhances each file with ``files.enhance_file`` (disk to disk in blocks,
the input's sample format, atomic writes) in this process (``jobs=1``) or in ``jobs`` worker
processes that each load their own ``Runtime`` once.

What made each output is recorded beside it, in ``OUT/.dfsdk/<relative output>.json``: the SDK
version, the model (name, backend, precision, every graph's sha256), the stream options, the
requested sample format, the input (size, mtime, sha256 of its first 64 KiB) and the output
(size, mtime). An output whose record matches the run is skipped; a changed option, model or
input re-does it. A record is written "pending" before its file starts, so an output left by a
killed run is known to be ours and is redone; an output with no record is not replaced unless
``overwrite``.

A file that cannot be read or written is reported and skipped; it never stops the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import soundfile as sf

from dfnet4_sdk import __version__
from dfnet4_sdk.batch_inputs import Source, expand_inputs
from dfnet4_sdk.errors import ConfigError, DfSdkError, PathError

RECORDS = ".dfsdk"  # folder of the records, inside the output folder
PREFIX_BYTES = 65536  # the part of each input hashed into its record
MAX_JOBS = 64
_LISTED = 20  # outputs named in one error message


@dataclass(frozen=True)
class BatchItem:
    """A file to enhance: its input, output, record and length (from its header)."""

    input: Path
    output: Path
    record: Path
    seconds: float
    replace: bool = False  # an output of ours (or --overwrite) is there: replace it


@dataclass
class FileResult:
    input: str
    output: str
    status: str  # "done", "skipped" or "failed"
    seconds: float = 0.0  # audio length
    reason: str | None = None  # why it failed
    clipped_samples: int = 0


@dataclass
class BatchReport:
    """What a batch did: one result per input, and the wall-clock time of the work."""

    results: list[FileResult] = field(default_factory=list)
    wall_seconds: float = 0.0

    def of(self, status: str) -> list[FileResult]:
        return [r for r in self.results if r.status == status]

    @property
    def audio_seconds(self) -> float:
        """Audio enhanced by this run (skipped files not counted)."""
        return sum(r.seconds for r in self.of("done"))

    @property
    def real_time_factor(self) -> float | None:
        """Wall-clock time per second of audio enhanced (below 1: faster than real time)."""
        return self.wall_seconds / self.audio_seconds if self.audio_seconds else None

    @property
    def exit_code(self) -> int:
        return 1 if self.of("failed") else 0

    def summary_lines(self) -> list[str]:
        done, skipped, failed = self.of("done"), self.of("skipped"), self.of("failed")
        rtf = self.real_time_factor
        lines = [f"{len(done)} done, {len(skipped)} skipped, {len(failed)} failed: "
                 f"{self.audio_seconds / 3600:.3f} h of audio in {self.wall_seconds:.1f} s"
                 + (f" (real-time factor {rtf:.3f})" if rtf is not None else "")]
        if skipped:
            lines.append(f"skipped {len(skipped)} file(s) already enhanced with the same model and options "
                         f"({sum(r.seconds for r in skipped) / 3600:.3f} h)")
        clipped = sum(r.clipped_samples for r in done)
        if clipped:
            lines.append(f"warning: {clipped} samples beyond full scale were clipped in integer outputs; "
                         "--subtype FLOAT (in .wav) keeps them")
        lines += [f"failed: {r.input}: {r.reason}" for r in failed]
        return lines


def run_identity(runtime, subtype: str | None) -> dict[str, Any]:
    """What decides an output besides its input: SDK version, model, backend, options, subtype."""
    m = runtime.manifest
    return {
        "sdk_version": __version__,
        "model": m.model_name,
        "backend": runtime.backend.name,
        "precision": m.precision,
        "graphs": {g.name: g.sha256 for g in m.graphs},
        "options": dataclasses.asdict(runtime.options),
        "subtype": subtype.upper() if subtype else None,
    }


def input_fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    with open(path, "rb") as f:
        prefix = hashlib.sha256(f.read(PREFIX_BYTES)).hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_prefix": prefix}


def _output_stat(path: Path) -> dict[str, int] | None:
    with contextlib.suppress(OSError):
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return None


def _read_record(path: Path) -> dict | None:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        return record if isinstance(record, dict) else None
    return None


def _write_record(path: Path, record: dict) -> None:
    """Atomically: a killed run leaves the old record or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def is_done(item: BatchItem, identity: dict) -> bool:
    record = _read_record(item.record)
    return (record is not None and record.get("identity") == identity and record.get("output") is not None
            and record["output"] == _output_stat(item.output)
            and record.get("input") == input_fingerprint(item.input))


@dataclass
class BatchPlan:
    todo: list[BatchItem]
    results: list[FileResult]  # decided before any work: skipped, and failed (unreadable header)

    @property
    def total_seconds(self) -> float:
        return sum(i.seconds for i in self.todo)


def plan_batch(sources: list[Source], output_dir: Path, identity: dict, overwrite: bool = False) -> BatchPlan:
    """Sort every input into skipped (its record matches), failed (its header cannot be read)
    and to do; ``PathError`` (nothing done) when outputs exist that no run of ours wrote and
    ``overwrite`` is not given."""
    todo, results, foreign = [], [], []
    for s in sources:
        out = output_dir / s.relative_output
        record = output_dir / RECORDS / f"{s.relative_output}.json"
        try:
            info = sf.info(str(s.input))
            seconds = info.frames / info.samplerate
        except (sf.LibsndfileError, RuntimeError, OSError, ZeroDivisionError) as e:
            results.append(FileResult(str(s.input), str(out), "failed", reason=f"cannot read it as audio ({e})"))
            continue
        item = BatchItem(s.input, out, record, seconds)
        if out.exists() or record.exists():
            if out.exists() and is_done(item, identity):
                results.append(FileResult(str(s.input), str(out), "skipped", seconds))
                continue
            if out.exists() and not record.exists() and not overwrite:
                foreign.append(str(out))
            item = dataclasses.replace(item, replace=True)
        todo.append(item)
    if foreign:
        raise PathError(f"{len(foreign)} output(s) exist that dfsdk run did not write: {', '.join(foreign[:_LISTED])}"
                        f"{' ...' if len(foreign) > _LISTED else ''}; pass --overwrite to replace them, or choose "
                        "another --output-dir")
    return BatchPlan(todo, results)


def enhance_one(runtime, item: BatchItem, identity: dict, subtype: str | None,
                progress: Callable[[float], None] | None = None) -> FileResult:
    """Enhance one file of a batch and record what made it; every failure becomes a result."""
    from dfnet4_sdk.files import enhance_file

    out = FileResult(str(item.input), str(item.output), "failed", item.seconds)
    try:
        fingerprint = input_fingerprint(item.input)
        _write_record(item.record, {"identity": identity, "input": fingerprint, "output": None})  # pending
        item.output.parent.mkdir(parents=True, exist_ok=True)
        bar = _SecondsBar(progress, item.seconds) if progress is not None else None
        summary = enhance_file(item.input, item.output, runtime, overwrite=item.replace, subtype=subtype,
                               progress_factory=bar.start if bar else None)
        _write_record(item.record, {"identity": identity, "input": fingerprint, "output": _output_stat(item.output)})
    except (DfSdkError, OSError) as e:
        out.reason = str(e)
        return out
    except Exception as e:  # a bug, but one file's bug must not stop the batch
        out.reason = f"unexpected {type(e).__name__}: {e} (a bug; please report it)"
        return out
    out.status, out.seconds, out.clipped_samples = "done", summary["seconds"], summary["clipped_samples"]
    return out


class _SecondsBar:
    """``enhance_file``'s progress bar, passing seconds of audio on to ``progress``."""

    def __init__(self, progress: Callable[[float], None], seconds: float):
        self.progress, self.seconds, self.rate, self.given = progress, seconds, 1.0, 0.0

    def start(self, total_frames: int):
        self.rate = total_frames / self.seconds if self.seconds > 0 else 1.0
        return self

    def update(self, frames: int) -> None:
        seconds = frames / self.rate
        self.given += seconds
        self.progress(seconds)

    def reset(self) -> None:  # the file is read again (streamed): take back what was counted
        self.progress(-self.given)
        self.given = 0.0

    def close(self) -> None:
        pass


def check_jobs(jobs: int) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise ConfigError(f"jobs must be a whole number from 1 to {MAX_JOBS}, got {jobs!r}; "
                          f"use about one per core ({os.cpu_count()} here)")
    return jobs


def prepare_batch(inputs: Iterable[str], output_dir: str | Path, make_runtime: Callable[[], Any],
                  subtype: str | None = None, overwrite: bool = False,
                  list_files: Iterable[str | Path] = ()) -> tuple[Any, BatchPlan, dict]:
    """Everything checked before any work, paths first: the output folder, the inputs, the
    sample format; then the model is loaded (``make_runtime()``) and the work planned.
    Returns the runtime, the plan and the run's identity (what its records hold)."""
    from dfnet4_sdk.files import check_output_dir

    output_dir = check_output_dir(output_dir, overwrite=None, what="--output-dir")
    sources = expand_inputs(list(inputs), list_files, output_dir)
    if subtype is not None:
        from dfnet4_sdk.audio_io import output_subtype

        for suffix in sorted({s.relative_output.suffix.lower() for s in sources}):
            output_subtype(f"x{suffix}", None, subtype)  # ConfigError now, not per file
    runtime = make_runtime()
    identity = run_identity(runtime, subtype)
    plan = plan_batch(sources, output_dir, identity, overwrite)
    output_dir.mkdir(exist_ok=True)
    return runtime, plan, identity


def enhance_batch(inputs: Iterable[str], output_dir: str | Path, model: Any = None, *, jobs: int = 1,
                  subtype: str | None = None, overwrite: bool = False, list_files: Iterable[str | Path] = (),
                  progress: Callable[[float], None] | None = None,
                  on_plan: Callable[[BatchPlan], None] | None = None, **runtime_kwargs) -> BatchReport:
    """Enhance every input (files, folders, globs, ``@LIST``; and ``list_files``) into
    ``output_dir``, mirroring the input tree, skipping outputs already made the same way.
    ``runtime_kwargs`` go to ``Runtime`` (backend, atten_lim_db, post_filter_beta, num_threads,
    offline_threads). ``progress(seconds)`` is called as audio is enhanced; ``on_plan(plan)``
    once the work is known (for a progress bar over ``plan.total_seconds``). Usage problems raise
    before any work; a file that fails is reported in the returned ``BatchReport``. With
    ``jobs > 1`` the workers are spawned processes, which import the main script again: in a
    script, call this under ``if __name__ == "__main__":``."""
    import multiprocessing

    from dfnet4_sdk.runtime import Runtime

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # a worker importing the main script
        raise ConfigError("enhance_batch was called while a worker process was importing your script; worker "
                          "processes import the main script again, so put the call under "
                          "`if __name__ == \"__main__\":`")
    check_jobs(jobs)
    if jobs > 1 and runtime_kwargs.get("offline_threads") is None:
        runtime_kwargs["offline_threads"] = 1  # the processes share the cores
    runtime, plan, identity = prepare_batch(inputs, output_dir, lambda: Runtime(model, **runtime_kwargs), subtype,
                                            overwrite, list_files)
    if on_plan is not None:
        on_plan(plan)
    start = time.perf_counter()
    if jobs == 1 or len(plan.todo) <= 1:
        results = [enhance_one(runtime, item, identity, subtype, progress) for item in plan.todo]
    else:
        from dfnet4_sdk.batch_pool import run_pool

        results = run_pool(plan.todo, identity, subtype, jobs, dict(runtime_kwargs, model=model), progress)
    return BatchReport(plan.results + results, time.perf_counter() - start)
