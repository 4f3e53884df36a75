"""Data-parallel training on one machine's cores: ``[optim] processes = P`` training processes.

Intra-op threads barely help a CPU training step made of many small operations (and stall when
another process holds a core), so the cores are used by whole processes instead: the trainer
forks P - 1 replicas after the model and optimiser are built (same weights, same optimiser
state, same RNG), each trains on its own batches (process r takes batch ``step * P + r`` of the
stream), and after every backward the gradients are averaged over the processes (gloo
all-reduce, one flat buffer), so every replica applies the same update and stays identical.
The effective batch is ``P * batch_size``. Process 0 is the trainer the caller holds: it alone
logs, validates, checkpoints and runs the callbacks; the replicas only compute gradients and
exit when the run ends. A stop (Ctrl-C, SIGTERM) in any process stops all after the same step.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import tempfile

import torch
import torch.distributed as dist

from dfnet4_sdk.training import compiled

TIMEOUT = datetime.timedelta(minutes=30)  # a validation in process 0 may keep the others waiting


class DataParallel:
    def __init__(self, processes: int):
        self.processes, self.rank, self._children = processes, 0, []

    def start(self) -> int:
        """Forks the replicas and joins them in a process group; returns this process's rank."""
        fd, store_path = tempfile.mkstemp(prefix="dfnet4_dp_")
        os.close(fd)
        os.unlink(store_path)  # the FileStore creates it; process 0 removes it in finish()
        self._store_path = store_path
        for rank in range(1, self.processes):
            pid = os.fork()
            if pid == 0:
                self.rank, self._children = rank, []
                compiled.after_fork()
                break
            self._children.append(pid)
        store = dist.FileStore(store_path, self.processes)
        dist.init_process_group("gloo", store=store, rank=self.rank, world_size=self.processes, timeout=TIMEOUT)
        return self.rank

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Every parameter's gradient becomes the mean over the processes (missing ones count as 0)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.processes
        offset = 0
        for p, g in zip(params, grads):
            n = g.numel()
            p.grad = flat[offset : offset + n].view_as(p)
            offset += n

    def any_stop(self, stop: bool) -> bool:
        flag = torch.tensor([1.0 if stop else 0.0])
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def finish(self, failed: bool = False) -> None:
        """Replicas exit here (never returning into the caller's code); process 0 waits for them,
        or, when it failed (the replicas then wait in a collective), ends them first."""
        if self.rank > 0:
            os._exit(1 if failed else 0)
        for pid in self._children:
            if failed:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        dist.destroy_process_group()
        with contextlib.suppress(OSError):
            os.unlink(self._store_path)
