"""`sam3-lora`: train, evaluate, predict, export, push and make a synthetic dataset from the command line.

  sam3-lora synth data/synthetic                       # a learnable toy COCO set
  sam3-lora tiny-model models/tiny-sam3                # a tiny random SAM3 folder (offline demo)
  sam3-lora train --config configs/quick.yaml          # a new run folder each time; --resume continues the last
  sam3-lora evaluate --model facebook/sam3 --adapter runs/x/adapter --annotations a.json --images dir
  sam3-lora predict --image x.png --prompt crack [--adapter dir] --out out/
  sam3-lora predict --folder photos/ --prompt crack --prompt rust --out proposals.json   # or --coco a.json --images dir
  sam3-lora export --merge --adapter runs/x/adapter --out merged/   # a full Sam3Model folder
  sam3-lora push runs/x/adapter --repo-id you/sam3-lora-cracks       # to the Hugging Face Hub

Logging goes to stderr at INFO through tqdm (it never cuts the progress bar); results go to
stdout. Bad input (a config key, a missing file or model folder) is one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from sam3_lora.config import ConfigError

DISTRIBUTION = "sam3-lora-studio"


def _train(args: argparse.Namespace) -> int:
    from sam3_lora.cli_train import run_train

    return run_train(args)


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
    if args.folder or args.coco:
        return _predict_many(args)
    if not args.prompt or len(args.prompt) != 1:
        raise ValueError("--image takes exactly one --prompt")
    args.prompt = args.prompt[0]
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


def _predict_many(args: argparse.Namespace) -> int:
    """--folder / --coco: every image, every phrase, one COCO file of proposals (sam3_lora.predict_folder)."""
    from sam3_lora.predict import load_predictor
    from sam3_lora.predict_folder import coco_items, folder_items, predict_to_coco

    if args.coco:
        if not args.images:
            raise ValueError("--coco needs --images, the folder of the images it names")
        items, categories = coco_items(args.coco, args.images)
        if args.prompt:  # the given phrases; a COCO category of the same name keeps its id
            ids = {c["name"]: c["id"] for c in categories}
            free = iter(range(max(ids.values(), default=0) + 1, 10**9))
            categories = [{"id": ids.get(p) or next(free), "name": p} for p in args.prompt]
    else:
        if not args.prompt:
            raise ValueError("--folder needs at least one --prompt")
        items, categories = folder_items(args.folder), [{"id": i, "name": p} for i, p in enumerate(args.prompt, 1)]
    model, tokenizer = load_predictor(args.model, adapter=args.adapter)
    with tqdm(total=len(items), unit="image", disable=args.quiet) as bar:
        result = predict_to_coco(model, tokenizer, items, categories, score_threshold=args.threshold,
                                 batch=args.batch, on_batch=bar.update)
    out = Path(args.out)
    target = out if out.suffix == ".json" else out / "proposals.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result))
    print(f"{len(result['annotations'])} proposals on {len(result['images'])} images; wrote {target}")
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


def _export(args: argparse.Namespace) -> int:
    if not args.merge:
        raise ConfigError("only --merge is supported: an adapter folder is already a PEFT folder with its model card, "
                          "ready for `sam3-lora push`")
    from sam3_lora.merged_export import export_merged

    out = export_merged(args.adapter, args.out, model_source=args.model, base_model=args.base_model)
    print(f"merged model: {out} (load it with Sam3Model.from_pretrained)")
    return 0


def _push(args: argparse.Namespace) -> int:
    from sam3_lora.hub_push import is_hub_transport_error, push_folder

    try:
        url = push_folder(args.folder, args.repo_id, private=not args.public, commit_message=args.message)
    except Exception as error:  # refused by the Hub (token, rights, name) or unreachable: not a bug of ours
        if not is_hub_transport_error(error):
            raise
        print(f"sam3-lora push: the upload failed: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {args.repo_id}: {url}")
    return 0


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _TqdmHandler(logging.StreamHandler):
    """A logging handler that writes through tqdm.write, so a log line never cuts the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise into the training loop
            self.handleError(record)


def setup_logging() -> None:
    """INFO and up to stderr through tqdm; warnings (e.g. a library's FutureWarning) and transformers'
    own logger go the same way; per-request lines of the HTTP clients stay out."""
    from transformers.utils import logging as transformers_logging

    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.captureWarnings(True)
    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    transformers_logging.set_verbosity_warning()
    logging.getLogger("huggingface_hub").handlers.clear()  # it propagates too: each line would show twice
    for noisy in ("httpx", "httpx2", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3-lora", description="Fine-tune LoRA adapters on SAM3.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="fine-tune a LoRA adapter from a YAML config")
    train.add_argument("--config", required=True, help="YAML file of TrainConfig keys (see configs/)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one key, e.g. --set schedule.max_steps=20 (repeatable)")
    train.add_argument("--resume", nargs="?", const="auto", metavar="CHECKPOINT",
                       help="continue the run in output_dir from its latest checkpoint (or from CHECKPOINT); "
                            "without it a used output_dir is never reused: the run goes to output_dir2, 3, ...")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--exact-output-dir", action="store_true", help=argparse.SUPPRESS)  # torchrun ranks
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="COCO segm and bbox mAP of SAM3 (+ adapter) on a COCO set")
    evaluate.add_argument("--model", default="facebook/sam3", help="hub id or folder of SAM3")
    evaluate.add_argument("--adapter", help="PEFT adapter folder to apply")
    evaluate.add_argument("--annotations", required=True, help="COCO json")
    evaluate.add_argument("--images", required=True, help="folder of the images it names")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser(
        "predict", help="find every instance of a phrase in an image, or of phrases in a folder / COCO file",
        description="--image: an overlay PNG and a COCO JSON of one image and one phrase. --folder / --coco: "
                    "every phrase on every image (one backbone pass per image), one COCO file of proposals "
                    "with scores (OUT/proposals.json, or OUT itself when it ends in .json), with a progress bar.")
    source = predict.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="one image file")
    source.add_argument("--folder", help="a folder of images (png, jpg, bmp, webp, tif; not recursive)")
    source.add_argument("--coco", help="a COCO json whose images to propose for (with --images)")
    predict.add_argument("--images", help="with --coco: the folder of the images it names")
    predict.add_argument("--prompt", action="append",
                         help="noun phrase, e.g. 'crack' (repeatable with --folder / --coco; "
                              "--coco defaults to its category names)")
    predict.add_argument("--model", default="facebook/sam3", help="hub id or folder of SAM3")
    predict.add_argument("--adapter", help="PEFT adapter folder to apply")
    predict.add_argument("--threshold", type=float, default=0.5, help="minimum score (default 0.5)")
    predict.add_argument("--batch", type=int, default=4, help="images per backbone pass (default 4)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--out", default="predictions",
                         help="output folder (or, with --folder / --coco, a .json file name)")
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

    export = commands.add_parser("export", help="write the adapter merged into SAM3 (a full Sam3Model folder)")
    export.add_argument("--merge", action="store_true", help="fold W + (alpha/r) B A into the weights (required)")
    export.add_argument("--adapter", required=True, help="PEFT adapter folder")
    export.add_argument("--out", required=True, help="output folder (replaced atomically)")
    export.add_argument("--model", help="base SAM3, hub id or folder (default: the adapter's base_model_name_or_path)")
    export.add_argument("--base-model", help="Hub id the card names as base model when --model is a folder")
    export.set_defaults(run=_export)

    push = commands.add_parser("push", help="upload an adapter (or merged) folder to the Hugging Face Hub")
    push.add_argument("folder", help="adapter folder (or a folder from export --merge)")
    push.add_argument("--repo-id", required=True, help="your-name/model-name; created if missing")
    push.add_argument("--public", action="store_true", help="make a new repository public (default private)")
    push.add_argument("--message", help="commit message")
    push.set_defaults(run=_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    from sam3_lora.checkpoint import CheckpointError
    from sam3_lora.model import ModelLoadError

    try:
        return args.run(args)
    except (ConfigError, ValueError, FileNotFoundError, CheckpointError) as error:
        print(f"sam3-lora {args.command}: {error}", file=sys.stderr)
        return 2
    except ModelLoadError as error:  # a missing model folder, an unreachable hub id: one line, not a traceback
        print(f"sam3-lora {args.command}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
