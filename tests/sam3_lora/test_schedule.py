"""LR schedule: exact factors at known steps, and LambdaLR applies them per optimiser step."""
from __future__ import annotations

import math

import pytest
import torch

from sam3_lora.schedule import build_scheduler, lr_factor, total_optimizer_steps


def test_warmup_is_linear_from_zero():
    assert [lr_factor(step, 100, 4, "cosine") for step in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_cosine_after_warmup():
    # T=110, W=10: p = (s - 10) / 100
    assert lr_factor(10, 110, 10, "cosine") == 1.0
    assert lr_factor(60, 110, 10, "cosine") == pytest.approx(0.5, abs=1e-15)  # p = 0.5
    assert lr_factor(35, 110, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-15)
    assert lr_factor(110, 110, 10, "cosine") == 0.0
    assert lr_factor(500, 110, 10, "cosine") == 0.0  # clamped past the end


def test_linear_after_warmup():
    assert [lr_factor(step, 10, 2, "linear") for step in (2, 4, 6, 10)] == [1.0, 0.75, 0.5, 0.0]


def test_constant_after_warmup():
    assert [lr_factor(step, 10, 2, "constant") for step in (0, 1, 2, 9, 50)] == [0.0, 0.5, 1.0, 1.0, 1.0]


def test_no_warmup_starts_at_full_lr():
    assert lr_factor(0, 10, 0, "cosine") == 1.0
    assert lr_factor(5, 10, 0, "linear") == 0.5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 10, 2, "cosinus"), "unknown schedule 'cosinus'"),
        ((0, 0, 0, "cosine"), "total_steps must be >= 1"),
        ((0, 10, -1, "cosine"), "warmup_steps must be >= 0"),
        ((0, 10, 10, "cosine"), "warmup_steps \\(10\\) must be smaller"),
        ((-1, 10, 2, "cosine"), "step must be >= 0"),
    ],
)
def test_bad_arguments_raise(args, message):
    with pytest.raises(ValueError, match=message):
        lr_factor(*args)


def test_scheduler_sets_optimizer_lr_each_step_and_resumes():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=0.1)
    scheduler = build_scheduler(optimizer, total_steps=6, warmup_steps=2, schedule="linear")
    seen = []
    for _ in range(6):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # factors: 0, 0.5, then 1 - (s - 2) / 4 for s = 2..5
    assert seen == pytest.approx([0.0, 0.05, 0.1, 0.075, 0.05, 0.025], abs=1e-12)

    # Resume after step 3 from the state dict: the next lr continues the curve.
    fresh_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    resumed = build_scheduler(fresh_optimizer, total_steps=6, warmup_steps=2, schedule="linear")
    partial = build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 6, 2, "linear")
    for _ in range(3):
        partial.optimizer.step()
        partial.step()
    resumed.load_state_dict(partial.state_dict())
    assert resumed.get_last_lr() == pytest.approx([0.075])
    resumed.optimizer.step()
    resumed.step()
    assert fresh_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_total_optimizer_steps():
    assert total_optimizer_steps(None, 250, batches_per_epoch=7, grad_accumulation=4) == 250
    assert total_optimizer_steps(3, None, batches_per_epoch=7, grad_accumulation=4) == 3 * 2  # ceil(7/4)
    assert total_optimizer_steps(2, None, batches_per_epoch=8, grad_accumulation=1) == 16
    with pytest.raises(ValueError, match="exactly one"):
        total_optimizer_steps(3, 100, 7, 1)
    with pytest.raises(ValueError, match="0 batches per epoch"):
        total_optimizer_steps(3, None, 0, 1)
