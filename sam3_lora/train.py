"""Fine-tune LoRA adapters on SAM3: `train(cfg, on_event) -> TrainResult`.

One optimiser step = `optim.grad_accumulation` micro-batches of `data.batch_size`
images, each with all its find-queries (its concepts and negatives), so the ViT runs
once per image (sam3_lora.grouped_forward); loader workers prepare the next batches. Every micro-batch is normalised by the num_boxes (and the number of
find-queries) of the WHOLE step, all-reduced over ranks, so k micro-batches on n
GPUs give the gradient of one batch of k*n*batch_size find-queries.

Events (`on_event(dict)`; returning "stop" ends the run cleanly, e.g. on cancel):
  {"type": "start", total_steps, start_step, dataset, val_dataset, parameters}
  {"type": "progress", step, total_steps, epoch}                    every step
  {"type": "step", step, epoch, lr, num_boxes, images_per_s, grad_norm, <loss terms>}
                                                  every log_every steps (means over them)
  {"type": "eval", step, split: "val", <val loss terms>, segm_mAP, bbox_mAP, per_concept}
  {"type": "saving_checkpoint", step}    before checkpoint `step` is written: make durable now
                                          what a resume from it must not lose (e.g. metric rows)
  {"type": "checkpoint", step, path}      once it is written
  {"type": "end", step, stopped, adapter_dir}
Only rank 0 emits events and writes files.
"""
from __future__ import annotations

import logging
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
from sam3_lora.lora import LoraSettings, apply_lora, trainable_parameter_counts
from sam3_lora.losses import SetCriterion, build_criterion
from sam3_lora.model import load_sam3, model_image_size
from sam3_lora.schedule import build_scheduler, total_optimizer_steps
from sam3_lora.grouped_forward import GroupedSam3, set_vit_checkpointing
from sam3_lora.train_data import TrainData, build_train_data, step_batches
from sam3_lora.train_eval import run_evaluation
from sam3_lora.train_step import NonFiniteLossError, train_step

__all__ = ["NonFiniteLossError", "TrainResult", "train", "train_step"]

log = logging.getLogger(__name__)
EventHandler = Callable[[dict], object]
KEEP_CHECKPOINTS = 2


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
    wrapped: torch.nn.Module  # what runs forward: GroupedSam3 around `model`, in DDP under torchrun
    criterion: SetCriterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    total_steps: int
    result: TrainResult


def _train_on(cfg: TrainConfig, on_event: EventHandler | None, device: torch.device) -> TrainResult:
    """Set up, resume if asked, evaluate the base model, train, finish (evaluate, checkpoint, adapter)."""
    run = _set_up(cfg, on_event, device)
    try:
        resume_from = resolve_resume(cfg.resume, run.checkpoints)
        start_step, position = (0, (0, 0)) if resume_from is None else _resume(run, resume_from)
        stop = _start(run, start_step)
        step, position, stop = _loop(run, start_step, position, stop)
        _finish(run, step, position, stop, saved_already=resume_from is not None and step == start_step)
    finally:
        run.data.close()  # the loader's worker processes
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
    data = build_train_data(cfg, tokenizer, image_size, pin_memory=device.type == "cuda")
    model = apply_lora(base, LoraSettings(components=cfg.lora.preset, rank=cfg.lora.rank,
                                          alpha=cfg.lora.alpha, dropout=cfg.lora.dropout))
    set_vit_checkpointing(model, cfg.checkpoint_vision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    wrapped = GroupedSam3(model, cache_backbone=cfg.data.cache_backbone)
    if dist.is_distributed():
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
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
        images = sum(len(b["pixel_values"]) for b in micro_batches) * dist.world_size()
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
    return run_evaluation(run.wrapped, run.model, run.criterion, run.data, run.tokenizer, run.device, run.dtype, step,
                          with_map)


def _save_state(run: _Run, step: int, position: tuple[int, int]) -> None:
    """Checkpoint (rank 0 writes it) between a "saving_checkpoint" and a "checkpoint" event."""
    path = checkpoint_path(run.checkpoints, step)
    # Every rank emits (here and below): _emit all-reduces, and a collective on rank 0 alone
    # would pair with the next step's num_boxes all_reduce on the other ranks.
    _emit(run.on_event, {"type": "saving_checkpoint", "step": step})
    if dist.is_main_process():
        save_checkpoint(path, {
            "step": step, "epoch": position[0], "batch_in_epoch": position[1],
            "lora": get_peft_model_state_dict(run.model), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(), "rng": capture_rng_state(),
            "history": run.result.history, "eval_before": run.result.eval_before, "config": run.cfg.to_dict()})
        remove_old_checkpoints(run.checkpoints, keep=KEEP_CHECKPOINTS)
    _emit(run.on_event, {"type": "checkpoint", "step": step, "path": str(path)})
