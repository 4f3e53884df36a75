"""``BatchPipeline``: the batches a training run consumes, made ahead by data worker processes.

Batch ``step`` is a pure function of (seed, step) (``data.py``), so where a batch is made (in the
training process or in a worker, from the teacher cache or not) never changes what it is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from dfnet4_sdk.training import compiled
from dfnet4_sdk.training.data import MixtureDataset
from dfnet4_sdk.training.distill import teacher_targets
from dfnet4_sdk.training.teacher_cache import TeacherCache


class BatchPipeline(Dataset):
    """Batches ``start``, ``start + 1``, ... ``stop - 1`` of ``data``, each with the teacher's
    outputs under ``"teacher"`` when a (CPU) teacher is given and the losses' targets under
    ``"targets"`` when ``prepare`` (``Objective.targets``) is. Index i is batch ``start + i``,
    a pure function of (seed, step), so workers change when a batch is made, never what it is."""

    def __init__(self, data: MixtureDataset, batch_size: int, start: int, stop: int, teacher=None, prepare=None,
                 cache: TeacherCache | None = None, processes: int = 1, rank: int = 0):
        self.data, self.batch_size, self.start, self.stop, self.teacher = data, batch_size, start, stop, teacher
        self.prepare, self.cache = prepare, cache
        self.processes, self.rank = processes, rank  # data-parallel: step s trains on batch s * processes + rank

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __getitem__(self, i: int) -> dict[str, Any]:
        index = (self.start + i) * self.processes + self.rank
        if self.cache is not None:  # the pool's batch and teacher outputs, made once then read
            batch, batch["teacher"] = self.cache.get(index, self._with_teacher)
        else:
            batch = self.data.batch(index, self.batch_size)
            if self.teacher is not None:
                batch["teacher"] = teacher_targets(self.teacher, batch)
        if self.prepare is not None:
            batch["targets"] = self.prepare(batch, batch.get("teacher"))
        return batch

    def _with_teacher(self, j: int) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        batch = self.data.batch(j, self.batch_size)
        return batch, teacher_targets(self.teacher, batch)

    def iterate(self, workers: int):
        """Yields the batches in order; with ``workers`` > 0 from that many processes (one torch
        thread each) that keep up to two batches each ready ahead of the consumer."""
        if workers <= 0:
            return (self[i] for i in range(len(self)))
        return iter(DataLoader(self, batch_size=None, shuffle=False, num_workers=workers, prefetch_factor=2,
                               worker_init_fn=compiled.after_fork))
