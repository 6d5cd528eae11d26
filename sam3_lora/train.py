"""Fine-tune LoRA adapters on SAM3: `train(cfg, on_event) -> TrainResult`.

One optimiser step = `optim.grad_accumulation` micro-batches of `data.batch_size`
find-queries. Every micro-batch is normalised by the num_boxes (and the number of
find-queries) of the WHOLE step, all-reduced over ranks, so k micro-batches on n
GPUs give the gradient of one batch of k*n*batch_size find-queries.

Events (`on_event(dict)`; returning "stop" ends the run cleanly, e.g. on cancel):
  {"type": "start", total_steps, start_step, dataset, val_dataset, parameters}
  {"type": "progress", step, total_steps, epoch}                    every step
  {"type": "step", step, epoch, lr, num_boxes, images_per_s, grad_norm, <loss terms>}
                                                  every log_every steps (means over them)
  {"type": "eval", step, split: "val", <val loss terms>, segm_mAP, bbox_mAP, per_concept}
  {"type": "checkpoint", step, path}
  {"type": "end", step, stopped, adapter_dir}
Only rank 0 emits events and writes files.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from sam3_lora import dist
from sam3_lora.adapter_io import save_adapter
from sam3_lora.checkpoint import (capture_rng_state, checkpoint_path, load_checkpoint, remove_old_checkpoints,
                                  remove_stale_temp_files, resolve_resume, restore_rng_state, save_checkpoint)
from sam3_lora.config import TrainConfig, resolve_device, resolve_precision
from sam3_lora.layer_outputs import forward_with_layer_outputs
from sam3_lora.lora import LoraSettings, apply_lora, trainable_parameter_counts
from sam3_lora.losses import SetCriterion, build_criterion, compute_num_boxes, compute_num_find_queries
from sam3_lora.model import load_sam3, model_image_size
from sam3_lora.schedule import build_scheduler, total_optimizer_steps
from sam3_lora.train_data import TrainData, build_train_data, step_batches
from sam3_lora.train_eval import run_evaluation

log = logging.getLogger(__name__)
EventHandler = Callable[[dict], object]
KEEP_CHECKPOINTS = 2


class NonFiniteLossError(RuntimeError):
    """A loss term (or a model output the loss needs) became NaN or infinite; names the step and the term."""

    def __init__(self, step: int, term: str, value: float, kind: str = "loss term") -> None:
        super().__init__(f"{kind} {term!r} is {value} at step {step}; lower optim.lr, check the data "
                         "(degenerate boxes, empty masks) or use precision fp32")
        self.step, self.term = step, term


@dataclass
class TrainResult:
    adapter_dir: Path
    steps: int
    stopped: bool
    history: list[dict] = field(default_factory=list)  # the step and eval events, in order
    eval_before: dict | None = None
    eval_after: dict | None = None
    dataset: dict = field(default_factory=dict)


def _emit(on_event: EventHandler | None, event: dict) -> bool:
    """Send `event` on rank 0; True when the handler asked to stop (agreed on by all ranks)."""
    wants_stop = False
    if on_event is not None and dist.is_main_process():
        wants_stop = on_event(event) == "stop"
    flag = dist.all_reduce_sum(torch.tensor(float(wants_stop)))
    return bool(flag.item() > 0)


def _setup_distributed(cfg: TrainConfig, device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); one process per GPU (gloo on CPU).

    Returns True when this call created the group, so the caller destroys it: a gloo
    group left to interpreter exit can abort the process ("terminate called without
    an active exception") after training succeeded.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or torch.distributed.is_initialized():
        return False
    if world != cfg.gpus:
        raise ValueError(f"gpus is {cfg.gpus} but torchrun started {world} processes; make them equal")
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend=backend)
    return True


def _device_for_rank(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"gpus is {cfg.gpus} but this machine has {torch.cuda.device_count()} CUDA devices; "
                             "lower gpus")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return device


def train(cfg: TrainConfig, on_event: EventHandler | None = None) -> TrainResult:
    """Run the fine-tune described by `cfg`; see the module docstring for events."""
    device = _device_for_rank(cfg)
    owns_group = _setup_distributed(cfg, device)
    try:
        return _train_on(cfg, on_event, device)
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()


@dataclass
class _Run:
    """Everything one training run works with, built once by `_set_up`."""

    cfg: TrainConfig
    on_event: EventHandler | None
    device: torch.device
    dtype: torch.dtype
    checkpoints: Path
    tokenizer: object
    data: TrainData
    model: torch.nn.Module  # the PEFT model: checkpoints and the adapter are its LoRA weights
    wrapped: torch.nn.Module  # what runs forward: DDP around `model` under torchrun, else `model`
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    total_steps: int
    result: TrainResult


def _train_on(cfg: TrainConfig, on_event: EventHandler | None, device: torch.device) -> TrainResult:
    """Set up, resume if asked, evaluate the base model, train, finish (evaluate, checkpoint, adapter)."""
    run = _set_up(cfg, on_event, device)
    resume_from = resolve_resume(cfg.resume, run.checkpoints)
    start_step, position = (0, (0, 0)) if resume_from is None else _resume(run, resume_from)
    stop = _start(run, start_step)
    step, position, stop = _loop(run, start_step, position, stop)
    _finish(run, step, position, stop, saved_already=resume_from is not None and step == start_step)
    return run.result


def _set_up(cfg: TrainConfig, on_event: EventHandler | None, device: torch.device) -> _Run:
    """Seed every RNG, load SAM3, build the data, LoRA, criterion, optimiser, schedule and scaler."""
    dtype = resolve_precision(cfg.precision, device)
    output_dir = Path(cfg.output_dir)
    checkpoints = output_dir / "checkpoints"
    if dist.is_main_process():
        checkpoints.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(checkpoints)
    # The config promises every RNG; the data stream has its own seeded generators.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    base, tokenizer = load_sam3(cfg.model.source, device=device)
    image_size = cfg.data.image_size or model_image_size(base)
    if image_size != model_image_size(base):
        raise ValueError(f"data.image_size is {image_size} but the model was built for {model_image_size(base)}; "
                         "leave data.image_size out")
    data = build_train_data(cfg, tokenizer, image_size)
    model = apply_lora(base, LoraSettings(components=cfg.lora.preset, rank=cfg.lora.rank,
                                          alpha=cfg.lora.alpha, dropout=cfg.lora.dropout))
    trainable = [p for p in model.parameters() if p.requires_grad]
    wrapped = model
    if dist.is_distributed():
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = build_criterion(cfg.loss, mask_mode=cfg.loss.mask_mode, num_points=cfg.loss.num_points or 1,
                                pos_weight=cfg.loss.pos_weight, scale_by_find_batch_size=cfg.loss.scale_by_find_batch_size)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
    total_steps = total_optimizer_steps(cfg.schedule.epochs, cfg.schedule.max_steps, data.batches_per_epoch,
                                        cfg.optim.grad_accumulation)
    scheduler = build_scheduler(optimizer, total_steps, cfg.schedule.warmup_steps, cfg.schedule.decay)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    result = TrainResult(adapter_dir=output_dir / "adapter", steps=0, stopped=False, dataset=data.summary)
    return _Run(cfg, on_event, device, dtype, checkpoints, tokenizer, data, model, wrapped, criterion, optimizer,
                scheduler, scaler, total_steps, result)


def _resume(run: _Run, path: Path) -> tuple[int, tuple[int, int]]:
    """Restore LoRA weights, optimiser, schedule, scaler, RNGs and history; (step, (epoch, batch_in_epoch))."""
    state = load_checkpoint(path, map_location=run.device)
    set_peft_model_state_dict(run.model, state["lora"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"])
    run.result.history, run.result.eval_before = list(state["history"]), state["eval_before"]
    log.info("resumed from %s at step %d", path, state["step"])
    return state["step"], (state["epoch"], state["batch_in_epoch"])


def _start(run: _Run, start_step: int) -> bool:
    """Emit "start" and, on a fresh run with validation data, evaluate the base model; True = stop asked."""
    stop = _emit(run.on_event, {"type": "start", "total_steps": run.total_steps, "start_step": start_step,
                                "dataset": run.data.summary, "parameters": trainable_parameter_counts(run.model)})
    if start_step == 0 and run.data.val is not None and not stop:
        run.result.eval_before = _evaluate(run, step=0, with_map=True)
        stop = _emit(run.on_event, {"type": "eval", "step": 0, **run.result.eval_before})
    return stop


def _loop(run: _Run, step: int, position: tuple[int, int], stop: bool) -> tuple[int, tuple[int, int], bool]:
    """Optimiser steps until total_steps or a stop; logs, evaluates and checkpoints on their cadence.

    Returns (step, position after it, stopped).
    """
    cfg, data = run.cfg, run.data
    window: list[dict] = []
    batches = step_batches(data, cfg.optim.grad_accumulation, position)
    while step < run.total_steps and not stop:
        micro_batches, position = next(batches)
        started = time.perf_counter()
        terms = train_step(run.wrapped, run.criterion, run.optimizer, run.scaler, micro_batches, run.device,
                           run.dtype, cfg.optim.grad_clip, step + 1)
        run.scheduler.step()
        step += 1
        images = sum(len(b["targets"]) for b in micro_batches) * dist.world_size()
        window.append({**terms, "images_per_s": images / max(time.perf_counter() - started, 1e-9)})
        epoch = position[0] + position[1] / max(data.batches_per_epoch, 1)
        stop = _emit(run.on_event, {"type": "progress", "step": step, "total_steps": run.total_steps, "epoch": epoch})
        if step % cfg.log_every == 0 or step == run.total_steps or stop:
            event = {"type": "step", "step": step, "epoch": epoch, "lr": run.scheduler.get_last_lr()[0],
                     **{name: sum(w[name] for w in window) / len(window) for name in window[0]}}
            window = []
            run.result.history.append(event)
            stop = _emit(run.on_event, event) or stop
        if data.val is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < run.total_steps:
            run.result.history.append({"type": "eval", "step": step, **_evaluate(run, step, with_map=False)})
            stop = _emit(run.on_event, run.result.history[-1]) or stop
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < run.total_steps:
            _save_state(run, step, position)
    return step, position, stop


def _finish(run: _Run, step: int, position: tuple[int, int], stop: bool, saved_already: bool) -> None:
    """Evaluate the adapter (unless stopped), write the last checkpoint (unless a resume took no step,
    so the one it resumed from is it) and the adapter, emit "end"."""
    result = run.result
    if run.data.val is not None and not stop:
        result.eval_after = _evaluate(run, step, with_map=True)
        result.history.append({"type": "eval", "step": step, **result.eval_after})
        _emit(run.on_event, result.history[-1])
    if not saved_already:
        _save_state(run, step, position)
    if dist.is_main_process():
        save_adapter(run.model, result.adapter_dir)
    result.steps, result.stopped = step, stop
    _emit(run.on_event, {"type": "end", "step": step, "stopped": stop, "adapter_dir": str(result.adapter_dir)})


def _evaluate(run: _Run, step: int, with_map: bool) -> dict:
    return run_evaluation(run.wrapped, run.criterion, run.data, run.tokenizer, run.device, run.dtype, step, with_map)


def _save_state(run: _Run, step: int, position: tuple[int, int]) -> None:
    """Checkpoint (rank 0 writes it) and a "checkpoint" event."""
    path = checkpoint_path(run.checkpoints, step)
    if dist.is_main_process():
        save_checkpoint(path, {
            "step": step, "epoch": position[0], "batch_in_epoch": position[1],
            "lora": get_peft_model_state_dict(run.model), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": capture_rng_state(),
            "history": run.result.history, "eval_before": run.result.eval_before, "config": run.cfg.to_dict()})
        remove_old_checkpoints(run.checkpoints, keep=KEEP_CHECKPOINTS)
    # Every rank emits: _emit all-reduces, and a collective on rank 0 alone would pair
    # with the next step's num_boxes all_reduce on the other ranks.
    _emit(run.on_event, {"type": "checkpoint", "step": step, "path": str(path)})


def train_step(model, criterion, optimizer, scaler, micro_batches: list[dict], device: torch.device,
               dtype: torch.dtype, grad_clip: float, step: int) -> dict[str, float]:
    """One optimiser step over `micro_batches`; returns the step's loss terms (sums over micro-batches).

    Every micro-batch loss is divided by the num_boxes / find-query count of the
    whole step, so summing their gradients is the gradient of the whole batch; the
    returned terms are those of the whole batch too (mean over ranks).
    """
    all_targets = [t for batch in micro_batches for t in batch["targets"]]
    num_boxes = compute_num_boxes(all_targets, device)
    num_find_queries = compute_num_find_queries(all_targets, device)
    optimizer.zero_grad(set_to_none=True)
    logged: dict[str, float] = {}
    for index, batch in enumerate(micro_batches):
        targets = [_target_to(t, device) for t in batch["targets"]]
        last = index == len(micro_batches) - 1
        sync = model.no_sync() if hasattr(model, "no_sync") and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                outputs = forward_with_layer_outputs(model, batch["pixel_values"].to(device),
                                                     batch["input_ids"].to(device), batch["attention_mask"].to(device))
            _check_finite_outputs(outputs, step)
            losses = criterion(outputs, targets, num_boxes, num_find_queries)
            _check_finite(losses, step)
            scaler.scale(losses["loss"]).backward()
        for name, value in losses.items():
            if name != "num_boxes":
                logged[name] = logged.get(name, 0.0) + float(value.detach())
    scaler.unscale_(optimizer)
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)
    scaler.step(optimizer)
    scaler.update()
    # Each rank's terms cover its own find-queries over the global num_boxes / world, so the
    # whole batch's term is their mean over ranks (rank 0's alone is a noisy part of it).
    names = sorted(logged)
    averaged = dist.all_reduce_mean(torch.tensor([logged[name] for name in names], dtype=torch.float64, device=device))
    return {**dict(zip(names, averaged.tolist())), "num_boxes": float(num_boxes), "grad_norm": float(grad_norm)}


def _check_finite_outputs(outputs: dict, step: int) -> None:
    """Name a non-finite prediction before the matcher sees it (scipy refuses NaN costs with a ValueError)."""
    layers = [("", outputs)] + [(f"_{layer}", aux) for layer, aux in enumerate(outputs["aux_outputs"])]
    tensors = {f"{name}{suffix}": layer_outputs[name] for suffix, layer_outputs in layers
               for name in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks") if name in layer_outputs}
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors.values()]).all()):
        return  # one host sync per micro-batch; the details only on failure
    for name, tensor in tensors.items():
        bad = ~torch.isfinite(tensor)
        if bad.any():
            raise NonFiniteLossError(step, name, float(tensor.detach()[bad][0]), kind="model output")


def _check_finite(losses: dict[str, torch.Tensor], step: int) -> None:
    if torch.isfinite(losses["loss"]):
        return
    for name, value in losses.items():
        if not name.startswith("weighted/") and name != "loss" and not torch.isfinite(value):
            raise NonFiniteLossError(step, name, float(value))
    raise NonFiniteLossError(step, "loss", float(losses["loss"]))


def _target_to(target: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in target.items()}
