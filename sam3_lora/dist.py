"""World size, rank and all-reduce that also work in a plain single process.

Every function checks for an initialised process group first, so a script, a test
or the single-GPU worker runs the same code as `torchrun` DDP without setting one up.
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist


def is_distributed() -> bool:
    """True when torch.distributed is built in and a process group is initialised."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def world_size() -> int:
    """Number of processes in the group; 1 without a process group."""
    return torch_dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process; 0 without a process group."""
    return torch_dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0 (the process that logs, writes metric rows and saves)."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over all ranks, as a new tensor (the input is left as it is).

    Without a process group this is a copy of `tensor`. Every rank must call it
    (a collective), with a tensor on the device its backend expects (CUDA for NCCL).
    """
    reduced = tensor.detach().clone()
    if is_distributed():
        torch_dist.all_reduce(reduced, op=torch_dist.ReduceOp.SUM)
    return reduced


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of `tensor` over all ranks = all_reduce_sum(tensor) / world_size()."""
    return all_reduce_sum(tensor) / world_size()
