"""The training engine learns: on CPU, the tiny SAM3 fine-tuned on a synthetic set.

Claims, all from one run of `train(cfg, on_event)` (module fixture):
- the training loss falls >= 2.3x: mean of the first logged window (steps 1-10)
  over the mean of the last five (steps 451-500);
- val segm mAP after training is above the base model's by > 0.1 (eval_before vs eval_after);
- the adapter loads with plain `PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny),
  adapter)` and `evaluate` on it gives the same segm / bbox mAP as the run reported;
- the events come in the documented order with the documented keys.

The run is not bit-identical across machines: the thread count and the CPU's vector
kernels (AVX-512, AVX2, none) round differently, and training amplifies the difference.
Measured with the old recipe (lr 5e-3, no warmup) on one machine by varying only those:
the loss ratio ranged 2.67-3.93 (another machine saw 1.67 and failed). So each claim is
checked against its spread over perturbed runs (ATEN_CPU_CAPABILITY default / AVX2 /
AVX512, 1 and 2 threads, tiny-model seeds 0-2), and the thresholds sit at half or less
of the worst run. Measured with SAM3's presence loss (0.5 x BCE, issue 11), 8 runs:
- loss ratio (first window over the mean of the last five) 4.77-4.93, asserted >= 2.3
  (5.6-6.0 with the plain-BCE presence: halving presence lowers the first window,
  where the presence terms start near 20 x log 2 per layer, and not the end of the
  run, where presence is ~0);
- final dice / first dice 0.078-0.086 and presence / first presence < 2e-4, asserted < 0.5;
- val loss after / before 0.19-0.22, asserted < 0.5; val segm mAP 0 -> 0.32-0.54,
  asserted to rise by > 0.1.

Recipe, and why (~35 s of training on 2 cores):
- One concept ("circle"), one instance per image, 120 images at 112 px, no
  augmentation: the smallest task that still has every loss term and negatives
  (the ~1/8 empty images give presence targets of 0). With three concepts a tiny
  model with frozen random features cannot tell the phrases apart in a test's
  budget (the lead measured presence stuck at log 2).
- Tiny SAM3 saved with 30 queries: SAM3 has 200 queries for a few dozen objects, so
  matched queries are a small share of the IoU-aware classification mean. With 10
  queries that share is large and the term, whose floor rises with box IoU
  (soft target p^0.25 IoU^0.75), dominates the total (loss_ce ~0.53 vs ~0.2).
- The "full" preset (LoRA also on the ViT), rank 16 = half the tiny width 32: the
  random ViT features must adapt; with the decoder preset presence stays at the
  base rate (0.37 nats) and masks stall at dice ~0.3.
- lr 2e-3 after 25 warmup steps, cosine, 500 steps of batch 4. At 5e-3 without warmup
  the first steps overshoot: presence and query logits reach SAM3's clamps (+-10 /
  +-12), where their gradient is zero, and whether a negative stays stuck at "present"
  depends on rounding (the 1.67x machine). Warmup and the lower peak keep every
  perturbed run on one path (spread above).
- SAM3's loss weights and its points-mode mask loss, unchanged.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoTokenizer, Sam3Model

from sam3_lora.checkpoint import latest_checkpoint, load_checkpoint
from sam3_lora.config import TrainConfig
from sam3_lora.coco import load_coco
from sam3_lora.data import split_image_ids
from sam3_lora.evaluate import evaluate
from sam3_lora.synthetic import write_synthetic_coco
from sam3_lora.tiny import save_tiny_sam3
from sam3_lora.train import TrainResult, train

STEPS = 500
LOG_EVERY = 10
LR, WARMUP = 2e-3, 25
VAL_FRACTION = 0.2

# The module's one run (~35 s on two idle cores) is set up inside the first test, so the
# suite's 300 s per-test hang guard would also time the training on a loaded machine
# (measured over 300 s with two CPU burners and other suites beside it): the guard here
# is sized to that run, and is still a guard against a hang, not a timing.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One fine-tune of the recipe in the module docstring; its config, result and events."""
    root = tmp_path_factory.mktemp("train")
    tiny_dir = save_tiny_sam3(root / "tiny-sam3", num_queries=30)
    annotations = write_synthetic_coco(root / "data", num_images=120, image_size=112, concepts=("circle",),
                                       max_instances=1, seed=0)
    cfg = TrainConfig.from_dict({
        "model": {"source": str(tiny_dir)},
        "lora": {"preset": "full", "rank": 16, "alpha": 32, "dropout": 0.0},
        "data": {"train_annotations": str(annotations), "train_images": str(root / "data" / "images"),
                 "val_fraction": VAL_FRACTION, "batch_size": 4, "negatives_per_image": 1,
                 "augment": {"hflip_prob": 0.0, "scale_jitter": [1.0, 1.0]}},
        "optim": {"lr": LR, "weight_decay": 0.0},
        "schedule": {"max_steps": STEPS, "warmup_steps": WARMUP, "decay": "cosine"},
        "device": "cpu", "precision": "fp32", "seed": 0,
        "eval_every": 0, "checkpoint_every": 0, "log_every": LOG_EVERY, "output_dir": str(root / "run"),
    })
    events: list[dict] = []
    result = train(cfg, events.append)
    return {"cfg": cfg, "result": result, "events": events, "tiny_dir": tiny_dir, "annotations": annotations}


def test_loss_falls_at_least_2_3_fold(run):
    steps = [event for event in run["result"].history if event["type"] == "step"]
    assert [event["step"] for event in steps] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    first, last = steps[0]["loss"], sum(event["loss"] for event in steps[-5:]) / 5
    assert first / last >= 2.3, f"loss {first:.2f} -> {last:.2f} fell only {first / last:.2f}x"
    # Not one term carrying the total: masks and presence learn too.
    assert steps[-1]["loss_dice"] < 0.5 * steps[0]["loss_dice"]
    assert steps[-1]["loss_presence"] < 0.5 * steps[0]["loss_presence"]


def test_val_segm_map_rises_above_the_base_model(run):
    result: TrainResult = run["result"]
    before, after = result.eval_before, result.eval_after
    assert before["split"] == after["split"] == "val" and before["images"] == after["images"] > 0
    assert after["segm_mAP"] > before["segm_mAP"] + 0.1, (before["segm_mAP"], after["segm_mAP"])
    assert after["loss"] < before["loss"] / 2  # the val loss falls too: not memorised
    assert set(after["per_concept"]) == {"circle"}


def test_adapter_loads_with_plain_peft_and_reproduces_the_evaluation(run):
    result: TrainResult = run["result"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {path.name for path in result.adapter_dir.iterdir()}
    model = PeftModel.from_pretrained(Sam3Model.from_pretrained(run["tiny_dir"]), result.adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(run["tiny_dir"])
    coco = load_coco(run["annotations"])
    _, val_ids = split_image_ids(coco.getImgIds(), VAL_FRACTION, run["cfg"].seed)  # the split train() made
    reloaded = evaluate(model, tokenizer, coco, Path(run["annotations"]).parent / "images", val_ids).to_dict()
    assert reloaded["images"] == result.eval_after["images"] == len(val_ids)
    for key in ("segm_mAP", "segm_mAP50", "bbox_mAP", "bbox_mAP50"):
        assert reloaded[key] == pytest.approx(result.eval_after[key], abs=1e-9), key


def test_events_follow_the_documented_protocol(run):
    events, result = run["events"], run["result"]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    start, end = events[0], events[-1]
    assert start["total_steps"] == STEPS and start["start_step"] == 0
    assert start["parameters"]["vision"] > 0 and start["parameters"]["other"] == 0
    assert start["dataset"]["train"]["instances_per_concept"]["circle"] > 0
    assert [event["step"] for event in events if event["type"] == "progress"] == list(range(1, STEPS + 1))
    assert [event["step"] for event in events if event["type"] == "eval"] == [0, STEPS]
    assert end == {"type": "end", "step": STEPS, "stopped": False, "adapter_dir": str(result.adapter_dir)}
    assert result.steps == STEPS and not result.stopped
    step = next(event for event in events if event["type"] == "step")
    for key in ("epoch", "lr", "num_boxes", "images_per_s", "grad_norm", "loss", "loss_bbox", "loss_giou",
                "loss_ce", "loss_presence", "loss_mask", "loss_dice", "loss_bbox_0", "weighted/loss_ce"):
        assert key in step, key
    assert step["lr"] == pytest.approx(LR * LOG_EVERY / WARMUP)  # the first logged step is in the warmup


def test_final_checkpoint_is_plain_and_holds_the_run(run):
    checkpoints = Path(run["cfg"].output_dir) / "checkpoints"
    path = latest_checkpoint(checkpoints)
    assert path is not None and path.name == f"checkpoint-step{STEPS:09d}.pt"
    state = load_checkpoint(path)  # weights_only=True
    assert state["step"] == STEPS and state["config"] == run["cfg"].to_dict()
    assert state["eval_before"]["segm_mAP"] == run["result"].eval_before["segm_mAP"]
    assert all(torch.isfinite(tensor).all() for tensor in state["lora"].values())
