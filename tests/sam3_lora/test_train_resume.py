"""Stopping and resuming a run, stale temp files, and non-finite losses.

- A run stopped at step k (on_event returns "stop") and resumed with `resume: auto`
  gives the per-step losses of an uninterrupted run, and the same adapter. The run is
  built to exercise every RNG and every piece of stream position a resume restores:
  LoRA dropout and point-sampled mask losses (torch RNG), augmentation and negatives
  (seeded per epoch), gradient accumulation with a short last step per epoch, and a
  stop in the middle of the second epoch.
- The same after a SIGKILL (trainer and loader workers) right after the step-4
  checkpoint: the resumed steps' losses are bit-identical to the uninterrupted run's,
  with 2 loader workers in every run.
- A stale temp file in checkpoints/ (a save killed mid-write) is removed at start.
- A non-finite loss raises NonFiniteLossError naming the step and the term, both for
  an injected NaN and for a real blow-up (lr 1e30); the last good checkpoint stays
  loadable with weights_only and a resume from it finishes the run.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

import sam3_lora.train as train_module
import sam3_lora.train_step as train_step_module
from sam3_lora.checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint
from sam3_lora.config import TrainConfig
from sam3_lora.synthetic import write_synthetic_coco
from sam3_lora.train import NonFiniteLossError, train
from tests.waiting import wait_until, work_deadline_s

REPO = Path(__file__).resolve().parents[2]

STEPS = 8
STOP_AT = 4
LOSS_TERMS = ("loss", "loss_bbox", "loss_giou", "loss_ce", "loss_presence", "loss_mask", "loss_dice")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """5 images, 2 concepts: 9 find-queries, 5 micro-batches of 1 image per epoch, so steps of 2 + 2 + 1 batches."""
    root = tmp_path_factory.mktemp("resume-data")
    return write_synthetic_coco(root, num_images=5, image_size=112, concepts=("circle", "square"), seed=3)


def make_config(tiny_model_dir: Path, annotations: Path, output_dir: Path, **changes) -> TrainConfig:
    values = {
        "model": {"source": str(tiny_model_dir)},
        "lora": {"preset": "decoder", "rank": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train_annotations": str(annotations), "train_images": str(annotations.parent / "images"),
                 "val_fraction": 0.0, "batch_size": 1, "negatives_per_image": 1,
                 "num_workers": 2},
        "optim": {"lr": 1e-3, "grad_accumulation": 2},
        "schedule": {"max_steps": STEPS, "warmup_steps": 2},
        "loss": {"num_points": 500},
        "device": "cpu", "precision": "fp32", "seed": 7,
        "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "output_dir": str(output_dir),
    }
    for key, value in changes.items():
        section, _, leaf = key.rpartition(".")
        (values[section] if section else values)[leaf] = value
    return TrainConfig.from_dict(values)


def step_losses(history: list[dict]) -> dict[int, dict[str, float]]:
    return {event["step"]: {term: event[term] for term in LOSS_TERMS}
            for event in history if event["type"] == "step"}


@pytest.fixture(scope="module")
def whole_run(tiny_model_dir, dataset, tmp_path_factory) -> tuple:
    """The uninterrupted run (2 loader workers, a checkpoint every 2 steps, which changes no number):
    (result, [(event type, step, whether that step's checkpoint file existed when the event came)])."""
    run_dir = tmp_path_factory.mktemp("whole")
    seen: list[tuple[str, int, bool]] = []

    def on_event(event: dict) -> None:
        step = event.get("step", event.get("start_step"))
        seen.append((event["type"], step, checkpoint_path(run_dir / "checkpoints", step).exists()))

    result = train(make_config(tiny_model_dir, dataset, run_dir, checkpoint_every=2), on_event)
    assert result.steps == STEPS
    return result, seen


@pytest.fixture(scope="module")
def whole(whole_run):
    return whole_run[0]


def test_a_checkpoint_is_announced_after_every_step_up_to_it_and_before_its_file_exists(whole_run):
    """What a resume from checkpoint k skips (the rows of steps <= k) must be made durable on
    "saving_checkpoint" k: every step event up to k came before it, and the file is not there yet."""
    _, seen = whole_run
    saving = [index for index, (kind, _, _) in enumerate(seen) if kind == "saving_checkpoint"]
    assert [seen[index][1] for index in saving] == [2, 4, 6, 8]
    for index in saving:
        _, step, file_existed = seen[index]
        assert not file_existed, f"checkpoint {step} was written before it was announced"
        assert [s for kind, s, _ in seen[:index] if kind == "step"] == list(range(1, step + 1))
        assert seen[index + 1] == ("checkpoint", step, True)


def test_stopped_and_resumed_run_matches_an_uninterrupted_one(tiny_model_dir, dataset, whole, tmp_path):

    stopped_dir = tmp_path / "stopped"
    stopped = train(make_config(tiny_model_dir, dataset, stopped_dir),
                    lambda event: "stop" if event["type"] == "progress" and event["step"] == STOP_AT else None)
    assert stopped.stopped and stopped.steps == STOP_AT
    assert latest_checkpoint(stopped_dir / "checkpoints") == checkpoint_path(stopped_dir / "checkpoints", STOP_AT)
    state = load_checkpoint(checkpoint_path(stopped_dir / "checkpoints", STOP_AT))
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2), "the stop should fall inside the second epoch"
    # A save killed mid-write leaves a temp file; the next start removes it.
    stale = stopped_dir / "checkpoints" / f"{checkpoint_path('.', 99).name}.tmp-12345-deadbeef"
    stale.write_bytes(b"half a checkpoint")

    events: list[dict] = []
    resumed = train(make_config(tiny_model_dir, dataset, stopped_dir, resume="auto"), events.append)
    assert not stale.exists()
    assert events[0]["type"] == "start" and events[0]["start_step"] == STOP_AT
    assert [event["step"] for event in events if event["type"] == "step"] == list(range(STOP_AT + 1, STEPS + 1))
    assert resumed.steps == STEPS and not resumed.stopped

    expected, got = step_losses(whole.history), step_losses(resumed.history)
    assert sorted(got) == sorted(expected) == list(range(1, STEPS + 1))
    assert got == expected  # bit-identical, loader workers on
    whole_lora = load_file(whole.adapter_dir / "adapter_model.safetensors")
    resumed_lora = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert whole_lora.keys() == resumed_lora.keys()
    for key in whole_lora:
        assert torch.equal(resumed_lora[key], whole_lora[key]), key


# Trains until its step-STOP_AT checkpoint is saved, says so, then waits to be killed
# (its loader workers alive, the next step's batches prefetched).
PARKED_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sam3_lora.config import TrainConfig
    from sam3_lora.train import train

    def on_event(event):
        if event["type"] == "checkpoint" and event["step"] == int(sys.argv[2]):
            Path(sys.argv[3]).write_text("saved")
            time.sleep(600)

    train(TrainConfig.from_yaml(sys.argv[1]), on_event)
""")


def test_a_run_killed_after_a_checkpoint_resumes_bit_identically(tiny_model_dir, dataset, whole, tmp_path):
    run_dir, marker = tmp_path / "killed", tmp_path / "saved"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(make_config(tiny_model_dir, dataset, run_dir, checkpoint_every=2).to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-c", PARKED_RUN, str(config), str(STOP_AT), str(marker)],
                               env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: marker.exists() or process.poll() is not None, "the run saves its step-4 checkpoint",
                   work_deadline_s(30, STOP_AT, 3), lambda: "")
        assert marker.exists(), process.communicate()[0].decode()[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the trainer and its loader workers, no clean-up
        process.wait()
    resumed = train(make_config(tiny_model_dir, dataset, run_dir, checkpoint_every=2, resume="auto"))
    expected = step_losses(whole.history)
    got = step_losses(resumed.history)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert {step: got[step] for step in range(STOP_AT + 1, STEPS + 1)} == \
        {step: expected[step] for step in range(STOP_AT + 1, STEPS + 1)}  # bit-identical after the kill


def nan_at_third_call(function, corrupt):
    """`function` whose 3rd call's result goes through `corrupt` (grad_accumulation 1: call n is step n)."""
    calls = {"count": 0}

    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        calls["count"] += 1
        return corrupt(result) if calls["count"] == 3 else result

    return wrapped


def nan_presence_output(outputs: dict) -> dict:
    return {**outputs, "presence_logits": outputs["presence_logits"] * math.nan}


def nan_giou_term(losses: dict) -> dict:
    # A loss that goes NaN with finite predictions (e.g. 0/0 in GIoU of two degenerate boxes).
    return {**losses, "loss_giou": losses["loss_giou"] * math.nan, "loss": losses["loss"] * math.nan}


@pytest.mark.parametrize("where, term", [("output", "presence_logits"), ("loss", "loss_giou")])
def test_an_injected_nan_names_step_and_term_and_keeps_the_last_checkpoint(where, term, tiny_model_dir, dataset,
                                                                          tmp_path, monkeypatch):
    if where == "output":
        monkeypatch.setattr(train_step_module, "forward_with_layer_outputs",
                            nan_at_third_call(train_step_module.forward_with_layer_outputs, nan_presence_output))
    else:
        real_build = train_module.build_criterion
        monkeypatch.setattr(train_module, "build_criterion",
                            lambda *args, **kwargs: nan_at_third_call(real_build(*args, **kwargs), nan_giou_term))
    cfg = make_config(tiny_model_dir, dataset, tmp_path / "run", checkpoint_every=1, **{"optim.grad_accumulation": 1})
    with pytest.raises(NonFiniteLossError) as raised:
        train(cfg)
    assert (raised.value.step, raised.value.term) == (3, term)
    assert f"'{term}' is nan at step 3" in str(raised.value)

    checkpoints = tmp_path / "run" / "checkpoints"
    assert latest_checkpoint(checkpoints) == checkpoint_path(checkpoints, 2)
    state = load_checkpoint(checkpoint_path(checkpoints, 2))  # weights_only=True
    assert state["step"] == 2 and all(torch.isfinite(tensor).all() for tensor in state["lora"].values())
    assert not (tmp_path / "run" / "adapter").exists()  # a failed run publishes no adapter

    monkeypatch.undo()
    resumed = train(make_config(tiny_model_dir, dataset, tmp_path / "run", checkpoint_every=1, resume="auto",
                                **{"optim.grad_accumulation": 1}))
    assert resumed.steps == STEPS and (resumed.adapter_dir / "adapter_model.safetensors").is_file()


def test_a_real_blow_up_is_named_not_a_matcher_crash(tiny_model_dir, dataset, tmp_path):
    # lr 1e30: step 1 is computed with finite weights, its update makes them ~1e30, and
    # step 2's predictions overflow. Without the output check the Hungarian matcher
    # would fail first with scipy's "cost matrix is not finite" ValueError.
    cfg = make_config(tiny_model_dir, dataset, tmp_path / "run", checkpoint_every=1,
                      **{"optim.lr": 1e30, "schedule.warmup_steps": 0, "optim.grad_accumulation": 1})
    with pytest.raises(NonFiniteLossError) as raised:
        train(cfg)
    error = raised.value
    assert error.step == 2
    assert error.term.split("_")[0] in ("pred", "presence", "loss"), error.term
    assert f"'{error.term}'" in str(error) and "step 2" in str(error) and "optim.lr" in str(error)
    assert load_checkpoint(checkpoint_path(tmp_path / "run" / "checkpoints", 1))["step"] == 1
