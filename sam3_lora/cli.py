"""`sam3-lora`: train, evaluate, predict and make a synthetic dataset from the command line.

  sam3-lora synth data/synthetic                       # a learnable toy COCO set
  sam3-lora tiny-model models/tiny-sam3                # a tiny random SAM3 folder (offline demo)
  sam3-lora train --config configs/quick.yaml          # progress bar + a loss line per log_every
  sam3-lora evaluate --model facebook/sam3 --adapter runs/x/adapter --annotations a.json --images dir
  sam3-lora predict --image x.png --prompt crack [--adapter dir] --out out/
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from sam3_lora.config import ConfigError, TrainConfig


def _train(args: argparse.Namespace) -> int:
    cfg = TrainConfig.from_yaml(args.config)
    for override in args.set or []:
        cfg = _with_override(cfg, override)
    if cfg.gpus > 1 and "WORLD_SIZE" not in os.environ:
        # One process per GPU: re-run this very command under torchrun, through this interpreter
        # (a `torchrun` on PATH may belong to another environment); --standalone picks a free port.
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.gpus}",
                   "-m", "sam3_lora.cli", *sys.argv[1:]]
        return subprocess.call(command)
    from sam3_lora.train import train

    bar = tqdm(total=1, unit="step", disable=args.quiet or int(os.environ.get("RANK", "0")) != 0)

    def on_event(event: dict) -> None:
        kind = event["type"]
        if kind == "start":
            bar.reset(total=event["total_steps"])
            bar.update(event["start_step"])
            counts = event["parameters"]
            tqdm.write(f"trainable LoRA parameters: {counts['trainable']:,} of {counts['base']:,} base; "
                       f"train set: {event['dataset']['train']['instances']} instances")
            for warning in event["dataset"]["warnings"]:
                tqdm.write(f"warning: {warning}")
        elif kind == "progress":
            bar.update(event["step"] - bar.n)
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

    result = train(cfg, on_event)
    bar.close()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # only rank 0 writes the adapter and computes mAP
    print(f"adapter: {result.adapter_dir}")
    if result.eval_before and result.eval_after:
        print(f"segm mAP {result.eval_before['segm_mAP']:.3f} -> {result.eval_after['segm_mAP']:.3f}; "
              f"bbox mAP {result.eval_before['bbox_mAP']:.3f} -> {result.eval_after['bbox_mAP']:.3f}")
    return 0


def _with_override(cfg: TrainConfig, override: str) -> TrainConfig:
    """'schedule.max_steps=20' -> a new validated config (the value is parsed as YAML)."""
    import yaml

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


def _evaluate(args: argparse.Namespace) -> int:
    from sam3_lora.coco import load_coco
    from sam3_lora.evaluate import evaluate
    from sam3_lora.predict import load_predictor

    model, tokenizer = load_predictor(args.model, adapter=args.adapter)
    coco = load_coco(args.annotations)
    bar = tqdm(total=len(coco.getImgIds()), unit="image")
    result = evaluate(model, tokenizer, coco, args.images, on_image=lambda done, total: bar.update(1))
    bar.close()
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from sam3_lora.overlay import draw_overlay, instances_to_coco
    from sam3_lora.predict import load_predictor, predict

    model, tokenizer = load_predictor(args.model, adapter=args.adapter)
    image = Image.open(args.image).convert("RGB")
    instances = predict(model, tokenizer, image, args.prompt, score_threshold=args.threshold)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    draw_overlay(image, instances).save(out / f"{stem}_overlay.png")
    (out / f"{stem}_instances.json").write_text(json.dumps(instances_to_coco(instances, image.size, args.image), indent=1))
    for instance in instances:
        print(f"{instance.phrase}: score {instance.score:.3f} box {[round(v, 1) for v in instance.box]}")
    print(f"{len(instances)} instances; wrote {out / f'{stem}_overlay.png'} and {out / f'{stem}_instances.json'}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from sam3_lora.synthetic import write_synthetic_coco

    path = write_synthetic_coco(args.folder, num_images=args.images, image_size=args.size,
                                concepts=tuple(args.concepts), seed=args.seed)
    print(f"wrote {path} and {Path(args.folder) / 'images'}")
    return 0


def _tiny_model(args: argparse.Namespace) -> int:
    from sam3_lora.tiny import save_tiny_sam3

    print(f"wrote a tiny random SAM3 (its masks mean nothing until trained) to {save_tiny_sam3(args.folder, args.size)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-lora", description="Fine-tune LoRA adapters on SAM3.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a LoRA adapter from a YAML config")
    train.add_argument("--config", required=True, help="YAML file of TrainConfig keys (see configs/)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one key, e.g. --set schedule.max_steps=20 (repeatable)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="COCO segm and bbox mAP of SAM3 (+ adapter) on a COCO set")
    evaluate.add_argument("--model", default="facebook/sam3", help="hub id or folder of SAM3")
    evaluate.add_argument("--adapter", help="PEFT adapter folder to apply")
    evaluate.add_argument("--annotations", required=True, help="COCO json")
    evaluate.add_argument("--images", required=True, help="folder of the images it names")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="find every instance of a phrase in an image")
    predict.add_argument("--image", required=True, help="image file")
    predict.add_argument("--prompt", required=True, help="noun phrase, e.g. 'crack'")
    predict.add_argument("--model", default="facebook/sam3", help="hub id or folder of SAM3")
    predict.add_argument("--adapter", help="PEFT adapter folder to apply")
    predict.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    predict.add_argument("--out", default="predictions", help="folder for the overlay PNG and COCO JSON")
    predict.set_defaults(run=_predict)

    synth = commands.add_parser("synth", help="write a synthetic COCO dataset of coloured shapes")
    synth.add_argument("folder", help="output folder (annotations.json + images/)")
    synth.add_argument("--images", type=int, default=40, help="number of images (default 40)")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels (default 224)")
    synth.add_argument("--concepts", nargs="+", default=["circle", "square", "triangle"], help="shape names")
    synth.add_argument("--seed", type=int, default=0, help="random seed")
    synth.set_defaults(run=_synth)

    tiny = commands.add_parser("tiny-model", help="save a tiny random SAM3 (tests, offline demo)")
    tiny.add_argument("folder", help="output folder")
    tiny.add_argument("--size", type=int, default=112, help="input size, a multiple of 56 (default 112)")
    tiny.set_defaults(run=_tiny_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as error:
        print(f"sam3-lora {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
