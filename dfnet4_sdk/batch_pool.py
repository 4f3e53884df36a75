"""A batch over N worker processes: each loads its own ``Runtime`` once and enhances one file at
a time (``batch.enhance_one``), reporting seconds of audio done on a queue for the progress bar.

Workers are spawned (never forked: the backends' thread pools do not survive a fork). They
ignore SIGINT (Ctrl-C reaches the whole process group): the parent, interrupted or sent
SIGTERM, sends every worker SIGTERM, which unwinds the file in progress (its temporary is
deleted, as on the single-file path) and ends the worker; the parent waits for that before it
re-raises. A worker that dies (a crash in a decoder) breaks the pool: the files it had are
retried once in a fresh pool, then reported as failed; the batch goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing as mp
import os
import queue
import signal
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from dfnet4_sdk.batch import BatchItem, FileResult, enhance_one

_POLL_SECONDS = 0.25  # how often the parent moves the progress bar
_STOP_SECONDS = 10.0  # how long a worker gets to clean up after SIGTERM before it is killed
_worker: dict[str, Any] = {}


class _Stop(SystemExit):
    """SIGTERM in a worker: unwinds the file in progress (its temporary is removed)."""


def _on_sigterm(signum, frame):
    raise _Stop(128 + signum)


def _init_worker(runtime_kwargs: dict, progress_queue) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    from dfnet4_sdk.runtime import Runtime

    kwargs = dict(runtime_kwargs)
    _worker["runtime"] = Runtime(kwargs.pop("model", None), **kwargs)
    _worker["queue"] = progress_queue


def _run_item(item: BatchItem, identity: dict, subtype: str | None) -> FileResult:
    q = _worker["queue"]
    try:
        return enhance_one(_worker["runtime"], item, identity, subtype, progress=q.put)
    except _Stop as e:  # cleanup has run; leave at once, without taking another file
        os._exit(e.code)


def run_pool(items: list[BatchItem], identity: dict, subtype: str | None, jobs: int, runtime_kwargs: dict,
             progress: Callable[[float], None] | None = None) -> list[FileResult]:
    """Enhance ``items`` in ``jobs`` worker processes; one result per item, in completion order."""
    ctx = mp.get_context("spawn")
    others = set(mp.active_children())  # the caller's own children are left alone
    progress_queue = ctx.Queue()
    waiting = collections.deque(items)
    in_flight: dict[cf.Future, BatchItem] = {}
    tries: collections.Counter = collections.Counter()
    results: list[FileResult] = []
    pool = None
    try:
        while waiting or in_flight:
            if pool is None:
                pool = cf.ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                                              initargs=(runtime_kwargs, progress_queue))
            while waiting and len(in_flight) < jobs:  # never more queued than workers: a crash names few files
                item = waiting.popleft()
                in_flight[pool.submit(_run_item, item, identity, subtype)] = item
            done, _ = cf.wait(in_flight, timeout=_POLL_SECONDS, return_when=cf.FIRST_COMPLETED)
            _drain(progress_queue, progress)
            broken = False
            for future in done:
                item = in_flight.pop(future)
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    broken = True
                    tries[item.input] += 1
                    if tries[item.input] < 2:
                        waiting.appendleft(item)
                    else:
                        results.append(FileResult(str(item.input), str(item.output), "failed", item.seconds,
                                                  "a worker process died while enhancing it, twice (a crash, or it "
                                                  "could not start: see its error above)"))
                except Exception as e:  # the result could not come back (a bug): report it, go on
                    results.append(FileResult(str(item.input), str(item.output), "failed", item.seconds,
                                              f"unexpected {type(e).__name__}: {e} (a bug; please report it)"))
            if broken:
                pool.shutdown(wait=True, cancel_futures=True)
                pool = None
        _drain(progress_queue, progress)
    except BaseException:  # Ctrl-C, SIGTERM: stop the workers, wait until their temporaries are gone
        _stop_workers(others)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            pool = None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
        progress_queue.close()
    return results


def _drain(progress_queue, progress: Callable[[float], None] | None) -> None:
    while True:
        try:
            seconds = progress_queue.get_nowait()
        except (queue.Empty, OSError, ValueError):
            return
        if progress is not None:
            progress(seconds)


def _stop_workers(others: set) -> None:
    workers = [p for p in mp.active_children() if p not in others]
    for p in workers:
        p.terminate()  # SIGTERM: the worker unwinds its file
    for p in workers:
        p.join(_STOP_SECONDS)
        if p.is_alive():
            p.kill()
            p.join()
