"""The training DataLoader: image groups in worker processes, resumable at any (epoch, batch).

Order: a DistributedSampler over images (one replica when single-process) seeded by
seed + epoch, cut into micro-batches of `batch_size` images. `EpochBatchSampler.start
(epoch, start_batch)` points the next `iter(loader)` at batch `start_batch` of `epoch`,
and each index it yields is (epoch, image index), so an item depends only on
(seed, epoch, image): which worker makes it, and when, changes nothing. Workers are
persistent (started once per run); the loader's own generator (seeded) fixes the
worker seeds and keeps the DataLoader from drawing on the global torch RNG, which
LoRA dropout and point sampling use (a draw there would make a resumed run differ).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import random
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from sam3_lora.image_groups import ImageGroupDataset, collate_image_groups

log = logging.getLogger(__name__)
MAX_AUTO_WORKERS = 8
PREFETCH_BATCHES_PER_WORKER = 2


def default_num_workers(processes_per_machine: int = 1) -> int:
    """Loader workers when data.num_workers is not set: the CPUs this process may use, shared by the
    training processes of the machine, one left for the training loop; at most MAX_AUTO_WORKERS."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_AUTO_WORKERS, cpus // max(processes_per_machine, 1) - 1))


class EpochBatchSampler(Sampler):
    """Lists of (epoch, image index), `batch_size` long (the last may be shorter), of one epoch from `start_batch` on."""

    def __init__(self, sampler: DistributedSampler, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.batch_size = sampler, batch_size
        self.epoch, self.start_batch = 0, 0

    def start(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self):
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        for start in range(self.start_batch * self.batch_size, len(order), self.batch_size):
            yield [(self.epoch, index) for index in order[start:start + self.batch_size]]

    def __len__(self) -> int:
        return max(0, -(-len(self.sampler) // self.batch_size) - self.start_batch)


def _libc_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # no prctl outside Linux
        return None


_PRCTL = _libc_prctl()
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _init_worker(trainer_pid: int, worker_id: int) -> None:
    """Seed a worker's python / numpy RNGs from its torch seed (the loader's generator + worker id), and
    make it die with the training process (Linux PR_SET_PDEATHSIG): a trainer stopped by SIGTERM or
    SIGKILL leaves no loader process behind (torch's own check notices only every few seconds)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != trainer_pid:  # the trainer died before prctl: no signal will come
            os._exit(0)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_group_loader(dataset: ImageGroupDataset, batch_size: int, seed: int, num_workers: int = 0,
                       pin_memory: bool = False, shuffle: bool = True, distributed: bool = False) -> DataLoader:
    """DataLoader of collated image groups (sam3_lora.image_groups) over an EpochBatchSampler.

    Under DDP (distributed=True and a process group initialised) each rank gets
    ceil(images / world) images per epoch (the sampler pads by repeating a few).
    `loader.batch_sampler.start(epoch, batch)` before each `iter(loader)`.
    """
    world, rank = 1, 0
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    workers = {"prefetch_factor": PREFETCH_BATCHES_PER_WORKER, "persistent_workers": True} if num_workers > 0 else {}
    return DataLoader(dataset, batch_sampler=EpochBatchSampler(sampler, batch_size), num_workers=num_workers,
                      collate_fn=collate_image_groups, pin_memory=pin_memory,
                      worker_init_fn=functools.partial(_init_worker, os.getpid()),
                      generator=torch.Generator().manual_seed(seed), **workers)


def close_loader(loader: DataLoader) -> None:
    """Stop the loader's persistent workers now (not whenever the garbage collector gets to it)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
