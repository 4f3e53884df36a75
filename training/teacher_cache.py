"""Mixtures and the teacher's outputs computed once and kept on disk, reused every epoch.

With ``[data] teacher_cache_batches = K`` (> 0) a run trains on a fixed pool of K batches:
batch ``step`` is batch ``step % K`` of the usual stream (``MixtureDataset.batch``), so an epoch
is K steps. The first time a batch is needed (in a data worker when there is one) it is mixed,
the teacher runs on it, and both are written to ``<teacher_cache_dir>/<key>/batch_<j>.pt``;
every later epoch, and every later run with the same key, only reads the file. The teacher's
outputs are most of a CPU data worker's time (DFN3 on 4 x 1.5 s: about 0.25 s, the mixing
0.1 s), and with them on disk the worker is free for the losses' targets.

The key is a hash of everything the files depend on: the data config (except the cache's own
fields), the batch size, the front-end, the teacher's name and weights, and the teacher outputs
kept (only those the objective's terms use; the teacher's waveform is re-made from its spectrum
by the same ``istft`` when read). Files are written atomically, so a killed run or two workers
never leave a broken one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from dfnet4_sdk.training.config import TrainConfig

FORMAT = 1
CACHE_FIELDS = ("teacher_cache_batches", "teacher_cache_dir")


def teacher_keys(cfg: TrainConfig) -> tuple[str, ...]:
    """The teacher outputs the distillation terms (objective.py) read, with their targets."""
    c = cfg.loss
    keys = []
    if c.distill_spectral > 0 or c.distill_multires > 0:
        keys.append("enhanced")  # "wave" is istft(enhanced)
    if c.distill_mask > 0:
        keys.append("erb_mask")
    if c.distill_lsnr > 0:
        keys.append("lsnr")
    if c.distill_df > 0:
        keys.append("df_coefs")
    if c.distill_feature > 0:
        keys.append("emb")
    if c.distill_hidden > 0:
        keys += [k for k in c.distill_hidden_names if k not in keys]
    return tuple(keys)


def cache_key(cfg: TrainConfig, batch_size: int, dsp, teacher: torch.nn.Module) -> str:
    data = {k: v for k, v in dataclasses.asdict(cfg.data).items() if k not in CACHE_FIELDS}
    weights = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    described = json.dumps({"format": FORMAT, "data": data, "batch_size": batch_size, "dsp": repr(dsp),
                            "teacher": cfg.model.teacher, "weights": weights.hexdigest(), "keys": teacher_keys(cfg)},
                           sort_keys=True, default=str)
    return hashlib.sha256(described.encode()).hexdigest()[:16]


class TeacherCache:
    """Batch j of the pool and the teacher's outputs for it, made once (``make``) and then read."""

    def __init__(self, folder: str | Path, batches: int, keys: tuple[str, ...], wave: Callable[[Tensor], Tensor]):
        self.folder, self.batches, self.keys, self.wave = Path(folder), batches, keys, wave

    @classmethod
    def for_run(cls, cfg: TrainConfig, batch_size: int, dsp, teacher, wave: Callable[[Tensor], Tensor]) -> TeacherCache:
        folder = Path(cfg.data.teacher_cache_dir) / cache_key(cfg, batch_size, dsp, teacher)
        return cls(folder, cfg.data.teacher_cache_batches, teacher_keys(cfg), wave)

    def path(self, j: int) -> Path:
        return self.folder / f"batch_{j:06d}.pt"

    def get(self, step: int, make: Callable[[int], tuple[dict[str, Tensor], Mapping[str, Tensor]]]) -> tuple[dict, dict]:
        """(batch, teacher outputs) of training step ``step``: pool batch ``step % batches``, read
        from disk, or made by ``make(j)`` -> (batch, full teacher outputs) and written first."""
        j = step % self.batches
        path = self.path(j)
        if path.is_file():
            stored = torch.load(path, weights_only=True)
            batch, teacher = stored["batch"], stored["teacher"]
        else:
            batch, full = make(j)
            teacher = {k: full[k].contiguous() for k in self.keys}
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            torch.save({"batch": batch, "teacher": teacher}, tmp)
            os.replace(tmp, path)
        if "enhanced" in teacher:
            teacher = {**teacher, "wave": self.wave(teacher["enhanced"])}
        return batch, teacher
