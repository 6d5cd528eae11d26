"""`sam3-lora train`: the run folder, the progress bar and loss lines, the records, the model card.

    config (YAML + --set)  ->  run folder: output_dir, or output_dir2, 3, ... when it holds an
                               earlier run, unless a resume is asked (--resume, or the config's
                               `resume` key), which continues in output_dir itself
    train(cfg, on_event)       one tqdm bar (created once the model has loaded, so no loading bar
                               of transformers cuts through it), a line per logged step / eval /
                               checkpoint, results.csv and results.png, args.yaml at the start
    adapter/                   + the model card (README.md with Hub metadata, loss_curve.png)

Under `gpus > 1` this process picks the folder, then re-runs itself under torchrun with that
exact folder (`--exact-output-dir`), so all ranks agree on it. Started by torchrun directly,
every rank picks it alike, before any file of the run exists.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tqdm import tqdm

from sam3_lora.checkpoint import resolve_resume
from sam3_lora.config import ConfigError, TrainConfig
from sam3_lora.hub_ids import base_model_id, is_hub_id
from sam3_lora.run_records import RunRecords, next_run_folder, write_args

log = logging.getLogger("sam3_lora.cli")


def with_override(cfg: TrainConfig, override: str) -> TrainConfig:
    """'schedule.max_steps=20' -> a new validated config (the value is parsed as YAML)."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. schedule.max_steps=20")
    values = cfg.to_dict()
    node = values
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(raw)
    return TrainConfig.from_dict(values)


def choose_run_folder(cfg: TrainConfig, resume: str | None, exact: bool = False) -> TrainConfig:
    """The config this run trains: output_dir kept when resuming (or `exact`), else the next free run folder.

    `resume` is the --resume value ("auto" = the latest checkpoint in output_dir, or a checkpoint
    path); with nothing to resume it is an error. Without it, the config's own `resume` key keeps
    output_dir too (its "auto" starts afresh there when no checkpoint exists, as a worker does).
    """
    values = cfg.to_dict()
    if resume is not None:
        if resolve_resume(resume, Path(cfg.output_dir) / "checkpoints") is None:
            raise ConfigError(f"--resume: {cfg.output_dir} holds no checkpoint to continue; leave --resume out to "
                              "start a new run")
        values["resume"] = resume
    elif cfg.resume is None and not exact:
        folder = next_run_folder(cfg.output_dir)
        if folder != Path(cfg.output_dir) and int(os.environ.get("RANK", "0")) == 0:
            log.info("%s holds an earlier run; this run writes to %s (--resume continues %s instead)",
                     cfg.output_dir, folder, cfg.output_dir)
        values["output_dir"] = str(folder)
    return TrainConfig.from_dict(values)


def check_model_source(source: str) -> None:
    """A model.source that is neither a folder here nor shaped like a Hub id is refused before anything runs."""
    if not Path(source).is_dir() and not is_hub_id(source):
        raise ConfigError(f"model.source: no model folder {source!r} here (and it is not a Hub id such as "
                          "facebook/sam3); `sam3-lora tiny-model DIR` writes a tiny one for trials")


def _torchrun(cfg: TrainConfig) -> int:
    """Re-run this very command under torchrun, one process per GPU, in the chosen folder.

    Through this interpreter (a `torchrun` on PATH may belong to another environment);
    --standalone picks a free port.
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.gpus}",
               "-m", "sam3_lora.cli", *sys.argv[1:], "--set", f"output_dir={cfg.output_dir}", "--exact-output-dir"]
    return subprocess.call(command)


class _Console:
    """on_event of train() for the terminal: the bar, one line per logged step / eval / checkpoint."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: tqdm | None = None

    def __call__(self, event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            self.bar = tqdm(total=event["total_steps"], initial=event["start_step"], unit="step", disable=self.quiet)
            counts = event["parameters"]
            tqdm.write(f"trainable LoRA parameters: {counts['trainable']:,} of {counts['base']:,} base; "
                       f"train set: {event['dataset']['train']['instances']} instances")
            for warning in event["dataset"]["warnings"]:
                tqdm.write(f"warning: {warning}")
        elif kind == "progress" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
        elif kind == "step":
            terms = " ".join(f"{name[5:]}={event[name]:.3f}" for name in sorted(event)
                             if name.startswith("loss_") and not name[-1].isdigit())
            tqdm.write(f"step {event['step']:>6} loss={event['loss']:.3f} {terms} lr={event['lr']:.2e} "
                       f"num_boxes={event['num_boxes']:.0f} {event['images_per_s']:.1f} img/s")
        elif kind == "eval":
            maps = f" segm_mAP={event['segm_mAP']:.3f} bbox_mAP={event['bbox_mAP']:.3f}" if "segm_mAP" in event else ""
            tqdm.write(f"eval  {event['step']:>6} val_loss={event['loss']:.3f}{maps}")
        elif kind == "checkpoint":
            tqdm.write(f"checkpoint {event['path']}")
        elif kind == "end" and self.bar is not None:
            self.bar.close()


def write_run_card(cfg: TrainConfig, result) -> Path:
    """The adapter's model card: base model by its Hub id (model.base_model, or model.source when that is one)."""
    from sam3_lora.model_card import ModelCardFacts, write_model_card

    run_name = Path(cfg.output_dir).name
    status = f"stopped at step {result.steps}" if result.stopped else f"complete: {result.steps} steps"
    facts = ModelCardFacts(
        title=f"SAM3 LoRA adapter {run_name}", base_model=base_model_id(cfg.model.source, cfg.model.base_model),
        config=cfg.to_dict(), dataset_name=Path(cfg.data.train_annotations).parent.name or run_name, status=status,
        history=result.history, dataset=result.dataset, eval_before=result.eval_before, eval_after=result.eval_after)
    return write_model_card(result.adapter_dir, facts)


def run_train(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_yaml(args.config)
    for override in args.set or []:
        cfg = with_override(cfg, override)
    check_model_source(cfg.model.source)
    main_process = int(os.environ.get("RANK", "0")) == 0
    if cfg.gpus > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(choose_run_folder(cfg, args.resume, args.exact_output_dir))
    # Every rank decides alike: nothing of this run is written before train()'s first collective.
    cfg = choose_run_folder(cfg, args.resume, args.exact_output_dir)
    from sam3_lora.train import train  # torch, transformers, peft: only once the config is known good
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # our bar is the only one while training
    console, records = _Console(quiet=args.quiet or not main_process), RunRecords(cfg.output_dir)

    def on_event(event: dict) -> None:
        if event["type"] == "start":
            write_args(Path(cfg.output_dir), cfg.to_dict())
        console(event)
        records(event)

    result = train(cfg, on_event)
    if not main_process:
        return 0  # only rank 0 writes the adapter and computes mAP
    write_run_card(cfg, result)
    print(f"adapter: {result.adapter_dir}")
    print(f"records: {Path(cfg.output_dir) / 'results.csv'}, {Path(cfg.output_dir) / 'results.png'}")
    if result.eval_before and result.eval_after:
        print(f"segm mAP {result.eval_before['segm_mAP']:.3f} -> {result.eval_after['segm_mAP']:.3f}; "
              f"bbox mAP {result.eval_before['bbox_mAP']:.3f} -> {result.eval_after['bbox_mAP']:.3f}")
    return 0
