"""Checkpoints: SIGKILL mid-save keeps the previous one, weights_only loads, exact RNG / optimiser resume."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from sam3_lora.checkpoint import (
    TEMP_MARKER,
    CheckpointError,
    capture_rng_state,
    checkpoint_path,
    latest_checkpoint,
    load_checkpoint,
    remove_old_checkpoints,
    remove_stale_temp_files,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from sam3_lora.schedule import build_scheduler

# 16M float32 = 64 MB per save: long enough that a kill lands inside the write.
SAVER_SCRIPT = """
import sys, torch
from sam3_lora.checkpoint import save_checkpoint
generation = int(sys.argv[2])
while True:
    save_checkpoint(sys.argv[1], {"generation": generation, "weights": torch.full((16_000_000,), float(generation))})
    generation += 1
"""


def temp_files(folder):
    return [path for path in folder.iterdir() if TEMP_MARKER in path.name]


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    path = checkpoint_path(tmp_path, 7)
    save_checkpoint(path, {"generation": 0, "weights": torch.zeros(16_000_000)})
    last_generation, kills_mid_write = 0, 0
    for attempt in range(3):
        saver = subprocess.Popen([sys.executable, "-c", SAVER_SCRIPT, str(path), str(100 * (attempt + 1))])
        try:
            deadline = time.monotonic() + 60
            while not temp_files(tmp_path):  # the child is writing now
                assert saver.poll() is None, "saver process died on its own"
                assert time.monotonic() < deadline, "saver never started writing"
                time.sleep(0.001)
            time.sleep(0.02 * attempt)  # land at different points of the write
        finally:
            os.kill(saver.pid, signal.SIGKILL)
            saver.wait()
        kills_mid_write += bool(temp_files(tmp_path))

        state = torch.load(path, weights_only=True)  # the checkpoint at the final name is always whole
        assert state["generation"] >= last_generation
        assert torch.equal(state["weights"], torch.full((16_000_000,), float(state["generation"])))
        last_generation = state["generation"]

        stale = temp_files(tmp_path)
        assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
        assert temp_files(tmp_path) == []
        assert latest_checkpoint(tmp_path) == path
    assert kills_mid_write >= 1, "no kill landed during a write; the test did not test anything"


def test_round_trip_restores_optimizer_scheduler_and_random_draws(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = build_scheduler(optimizer, total_steps=10, warmup_steps=2, schedule="cosine")
    inputs = torch.randn(8, 4)
    for _ in range(3):
        model(inputs).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    random.gauss(0, 1)  # leaves python's cached gaussian set
    np.random.randn()  # leaves numpy's cached gaussian set
    state = {"step": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": capture_rng_state()}
    save_checkpoint(tmp_path / "c.pt", state)

    def draws():
        return (torch.rand(5).tolist(), random.random(), random.gauss(0, 1),
                np.random.rand(3).tolist(), np.random.randn())

    expected = draws()
    torch.manual_seed(123), random.seed(123), np.random.seed(123)  # disturb every RNG
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 3
    restore_rng_state(loaded["rng"])
    assert draws() == expected

    restored_model = torch.nn.Linear(4, 3)
    restored_optimizer = torch.optim.AdamW(restored_model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    restored_scheduler = build_scheduler(restored_optimizer, total_steps=10, warmup_steps=2, schedule="cosine")
    restored_model.load_state_dict(loaded["model"])
    restored_optimizer.load_state_dict(loaded["optimizer"])
    restored_scheduler.load_state_dict(loaded["scheduler"])
    for pair in ((model, optimizer, scheduler), (restored_model, restored_optimizer, restored_scheduler)):
        pair[0](inputs).square().mean().backward()
        pair[1].step()
        pair[2].step()
    for original, restored in zip(model.parameters(), restored_model.parameters()):
        assert torch.equal(original, restored)
    assert restored_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_non_plain_state_is_refused_before_writing(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['rng'\]\[1\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "c.pt", {"rng": np.random.get_state()})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"weights": torch.arange(100_000)})
    truncated.write_bytes(truncated.read_bytes()[:50_000])
    for path in (garbage, truncated):
        with pytest.raises(CheckpointError, match=f"checkpoint {path} is corrupt"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_pruning_and_resume_resolution(tmp_path):
    assert latest_checkpoint(tmp_path / "nowhere") is None
    assert resolve_resume("auto", tmp_path) is None  # fresh start
    for step in (5, 100, 12):
        save_checkpoint(checkpoint_path(tmp_path, step), {"step": step})
    (tmp_path / f"checkpoint-step000000200.pt{TEMP_MARKER}1-ab").write_bytes(b"half")  # a killed save
    (tmp_path / "notes.txt").write_text("x")
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 100)
    assert resolve_resume("auto", tmp_path) == checkpoint_path(tmp_path, 100)
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume(str(checkpoint_path(tmp_path, 5)), tmp_path) == checkpoint_path(tmp_path, 5)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope.pt"), tmp_path)

    assert remove_old_checkpoints(tmp_path, keep=2) == [checkpoint_path(tmp_path, 5)]
    assert remove_stale_temp_files(tmp_path) == [tmp_path / f"checkpoint-step000000200.pt{TEMP_MARKER}1-ab"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "checkpoint-step000000012.pt", "checkpoint-step000000100.pt", "notes.txt"]
