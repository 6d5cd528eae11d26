"""Learning-rate schedule: linear warmup, then cosine / linear / constant.

The factor multiplies the optimiser's base lr. With s = step (optimiser steps
taken so far), W = warmup_steps, T = total_steps:

    s < W:   f(s) = s / W                                  (0 -> 1 over W steps)
    s >= W:  p = min(1, (s - W) / (T - W))
             cosine:   f(s) = 0.5 * (1 + cos(pi * p))      (1 -> 0)
             linear:   f(s) = 1 - p                        (1 -> 0)
             constant: f(s) = 1

Steps are optimiser steps, not micro-batches: with gradient accumulation the
scheduler steps once per accumulated update.
"""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base lr at optimiser step `step` (formula in the module docstring)."""
    _check_schedule_args(total_steps, warmup_steps, schedule)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return step / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str
) -> LambdaLR:
    """LambdaLR whose factor at its k-th step is lr_factor(k, total_steps, warmup_steps, schedule).

    Call `scheduler.step()` once after each `optimizer.step()`. Its state_dict holds
    plain types only (the factor is a closure, which LambdaLR does not pickle), so it
    goes into a weights_only checkpoint as is; rebuild with the same arguments and
    `load_state_dict` to resume.
    """
    _check_schedule_args(total_steps, warmup_steps, schedule)

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, schedule)

    return LambdaLR(optimizer, lr_lambda=factor)


def total_optimizer_steps(
    epochs: int | None, max_steps: int | None, batches_per_epoch: int, grad_accumulation: int
) -> int:
    """Optimiser steps the run takes; exactly one of `epochs` / `max_steps` is set.

    epochs: epochs * ceil(batches_per_epoch / grad_accumulation) (a last partial
    accumulation window in an epoch still steps). max_steps: max_steps as given.
    """
    if (epochs is None) == (max_steps is None):
        raise ValueError(f"set exactly one of epochs ({epochs}) and max_steps ({max_steps})")
    if max_steps is not None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        return max_steps
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batches_per_epoch < 1:
        raise ValueError(f"the train set gives {batches_per_epoch} batches per epoch; it needs at least 1")
    if grad_accumulation < 1:
        raise ValueError(f"grad_accumulation must be >= 1, got {grad_accumulation}")
    return epochs * math.ceil(batches_per_epoch / grad_accumulation)


def _check_schedule_args(total_steps: int, warmup_steps: int, schedule: str) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps >= total_steps and warmup_steps > 0:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be smaller than the run's {total_steps} optimiser steps, "
            "or the lr never leaves warmup; lower warmup_steps or train longer"
        )
