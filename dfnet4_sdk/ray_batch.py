"""A batch on a Ray cluster (Ray Data): the same inputs, outputs, records and report as
``batch.enhance_batch``, with the files spread over worker actors that each load one ``Runtime``.

    from dfnet4_sdk.ray_batch import enhance_corpus
    report = enhance_corpus(["corpus/"], "enhanced/", address="auto", workers=16)

The driver checks and plans everything first (``batch.prepare_batch``: paths, model, what is
already done), then streams one row per file through an actor pool (``map`` with a callable
class, one file per actor at a time); each actor enhances its files disk to disk with
``batch.enhance_one`` and writes their records. Every node must see the inputs and the output
folder at the same paths (a shared filesystem). An actor whose model differs from the driver's
(another SDK version or bundle on that node) fails its files instead of writing different
outputs. Needs the ``[ray]`` extra; nothing else in the SDK imports Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from dfnet4_sdk.batch import BatchItem, BatchPlan, BatchReport, FileResult, check_jobs, enhance_one, prepare_batch, \
    run_identity
from dfnet4_sdk.errors import BackendNotAvailableError, ClusterError, ConfigError


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise BackendNotAvailableError(
            f"Ray is not installed ({e}); install the extra: pip install 'dfnet4-sdk[ray]'") from e
    return ray


class _Enhancer:
    """A Ray Data actor: one Runtime, loaded once, enhancing one file per call."""

    def __init__(self, runtime_kwargs: dict, identity: dict, subtype: str | None):
        from dfnet4_sdk.runtime import Runtime

        self.identity, self.subtype, self.problem = identity, subtype, None
        kwargs = dict(runtime_kwargs)
        try:  # a failure here would make Ray restart the actor, then fail the whole dataset
            self.runtime = Runtime(kwargs.pop("model", None), **kwargs)
        except Exception as e:
            self.problem = f"this worker could not load the model ({type(e).__name__}: {e}); install the same SDK " \
                           "and model on every node"
            return
        mine = run_identity(self.runtime, subtype)
        if mine != identity:
            self.problem = (f"this worker's model differs from the driver's ({_differences(identity, mine)}); "
                            "install the same SDK and model on every node")

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        item = BatchItem(Path(row["input"]), Path(row["output"]), Path(row["record"]), float(row["seconds"]),
                         bool(row["replace"]))
        if self.problem:
            result = FileResult(row["input"], row["output"], "failed", item.seconds, self.problem)
        else:
            result = enhance_one(self.runtime, item, self.identity, self.subtype)
        return dict(dataclasses.asdict(result), index=row["index"])


def _differences(driver: dict, worker: dict) -> str:
    return ", ".join(f"{k}: {driver.get(k)!r} here, {worker.get(k)!r} there" for k in driver if driver.get(k) != worker.get(k))


def enhance_corpus(inputs: Iterable[str], output_dir: str | Path, model: Any = None, *, address: str | None = None,
                   workers: int | None = None, subtype: str | None = None, overwrite: bool = False,
                   list_files: Iterable[str | Path] = (), progress: Callable[[float], None] | None = None,
                   on_plan: Callable[[BatchPlan], None] | None = None, **runtime_kwargs) -> BatchReport:
    """``batch.enhance_batch`` on Ray: the same arguments, plus ``address`` (a running cluster:
    "auto", "ray://HOST:10001"; None: the Ray this process is connected to, else a local one,
    shut down at the end) and ``workers`` (actors, each with one Runtime and one CPU; default:
    the cluster's CPUs). ``progress(seconds)`` is called as each file finishes."""
    ray = _ray()
    if workers is not None:
        check_workers(workers)
    if address and not ray.is_initialized():
        _check_reachable(address)  # before any work
    runtime_kwargs.setdefault("offline_threads", 1)  # one CPU per actor
    runtime, plan, identity = prepare_batch(inputs, output_dir, lambda: _load(model, runtime_kwargs), subtype,
                                            overwrite, list_files)
    if on_plan is not None:
        on_plan(plan)
    start = time.perf_counter()
    if not plan.todo:
        return BatchReport(plan.results, 0.0)
    started_here = _connect(ray, address)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the caller's progress() is the bar
    try:
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        workers = min(workers, len(plan.todo))
        rows = [{"index": n, "input": str(i.input.absolute()), "output": str(i.output.absolute()),  # any cwd
                 "record": str(i.record.absolute()), "seconds": i.seconds, "replace": i.replace}
                for n, i in enumerate(plan.todo)]
        if isinstance(model, (str, Path)) and Path(model).exists():
            model = str(Path(model).absolute())
        results = ray.data.from_items(rows, override_num_blocks=len(rows)).map(
            _Enhancer,
            fn_constructor_kwargs={"runtime_kwargs": dict(runtime_kwargs, model=model), "identity": identity,
                                   "subtype": subtype},
            compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
            num_cpus=1,
        )
        done = []
        try:
            for row in results.iter_rows():
                item = plan.todo[row["index"]]  # reported with the paths as the user gave them
                result = FileResult(**{f.name: row[f.name] for f in dataclasses.fields(FileResult)})
                result.input, result.output = str(item.input), str(item.output)
                done.append(result)
                if progress is not None:
                    progress(result.seconds)
        except BaseException as e:  # Ctrl-C, SIGTERM, a lost node: actors are gone; remove their temporaries
            _remove_temporaries(plan.todo, {r.input for r in done})
            if isinstance(e, ray.exceptions.RayError):
                raise ClusterError(f"the Ray job failed after {len(done)} of {len(plan.todo)} files ({e}); the "
                                   "finished outputs are kept and recorded: run the same command again to resume") from e
            raise
    finally:
        if started_here:
            ray.shutdown()
    return BatchReport(plan.results + done, time.perf_counter() - start)


def quiet_ray_logs(level: int = logging.WARNING) -> None:
    """Ray Data logs every dataset's plan and progress at INFO and warns that its own bars are
    off: below ``level`` (a CLI's -v), show none of it, only errors."""
    _ray()
    logging.getLogger("ray.data").setLevel(logging.ERROR if level >= logging.WARNING else level)


@contextlib.contextmanager
def local_ray(cpus: int):
    """A local Ray with ``cpus`` CPUs for the ``with`` block (``enhance_corpus`` with no address
    runs on it), shut down after: a measurement can time the start-up apart."""
    ray = _ray()
    quiet_ray_logs()
    ray.init(num_cpus=check_workers(cpus), include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def check_workers(workers: int) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a whole number of at least 1, got {workers!r}")
    return workers


def _load(model, runtime_kwargs):
    from dfnet4_sdk.runtime import Runtime

    return Runtime(model, **runtime_kwargs)


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster at ``address`` (None: the current Ray, else a new local one);
    True when this call started Ray (and must shut it down)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {e}; give the head's address "
                          "(auto, or ray://HOST:10001), or nothing for a local Ray") from e
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """``ray.init`` waits for an unreachable head without end: try its port first."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local": Ray looks the cluster up itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); check the address "
                          "(auto on a cluster node, ray://HEAD:10001 from outside) and that the head is running") from e


def _remove_temporaries(items: list[BatchItem], finished: set[str]) -> None:
    """The temporaries ``atomic_output`` leaves when an actor is killed mid-file (``.NAME.xxxx.EXT``
    beside the output): only the unfinished files', only that pattern."""
    for item in items:
        if str(item.input) in finished:
            continue
        stem, suffix = item.output.stem, item.output.suffix
        for tmp in item.output.parent.glob(f".{stem}.*{suffix}"):
            if len(tmp.name) == len(stem) + len(suffix) + 10:  # "." stem "." 8 random characters suffix
                with contextlib.suppress(OSError):
                    tmp.unlink()
