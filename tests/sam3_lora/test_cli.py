"""`sam3-lora` end to end on the tiny SAM3: help, --version, synth, tiny-model, train, evaluate, predict
(run folders and records: test_cli_runs.py; export and push: test_export_push.py).

Config mistakes exit with status 2 and a message naming the key (checked on a real
process once, in-process otherwise: `main(argv)` is what the console script calls).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from pycocotools.coco import COCO

from sam3_lora.cli import main
from sam3_lora.coco import load_coco
from sam3_lora.model import load_sam3, model_image_size
from sam3_lora.synthetic import write_synthetic_coco

COMMANDS = ["train", "evaluate", "predict", "synth", "tiny-model", "export", "push"]
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synthetic_coco(tmp_path_factory.mktemp("cli-data"), num_images=6, image_size=112,
                                concepts=("circle", "square"), seed=2)


def train_config(tiny_model_dir: Path, annotations: Path, output_dir: Path) -> dict:
    return {
        "model": {"source": str(tiny_model_dir)},
        "lora": {"preset": "decoder", "rank": 4, "alpha": 8},
        "data": {"train_annotations": str(annotations), "train_images": str(annotations.parent / "images"),
                 "val_fraction": 0.0, "batch_size": 2},
        "schedule": {"max_steps": 50},
        "loss": {"num_points": 256},
        "device": "cpu", "eval_every": 0, "checkpoint_every": 0, "log_every": 1, "output_dir": str(output_dir),
    }


@pytest.mark.parametrize("command", [[], *[[name] for name in COMMANDS]], ids=["top", *COMMANDS])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: sam3-lora {' '.join(command)}".rstrip())
    if not command:
        assert all(name in out for name in COMMANDS)


def test_version_is_the_package_version(capsys):
    version = re.search(r'^version = "(.+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.M).group(1)
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"sam3-lora {version}"


def test_the_console_script_is_installed_and_runs():
    script = Path(sys.executable).parent / "sam3-lora"
    done = subprocess.run([str(script), "synth", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--concepts" in done.stdout


def test_unknown_config_key_exits_2_naming_it(tiny_model_dir, dataset, tmp_path):
    values = train_config(tiny_model_dir, dataset, tmp_path / "run")
    values["optim"] = {"warmup": 10}  # a real-looking typo: warmup lives in schedule.warmup_steps
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(values))
    done = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "optim.warmup" in done.stderr and "schedule.warmup_steps" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("change, key", [
    ({"optim": {"lr": -1.0}}, "optim.lr"),
    ({"data": {"image_size": 100}}, "data.image_size"),
    ({"lora": {"preset": "everything"}}, "lora.preset"),
])
def test_bad_config_value_exits_2_naming_the_key(change, key, tiny_model_dir, dataset, tmp_path, capsys):
    values = train_config(tiny_model_dir, dataset, tmp_path / "run")
    for section, entries in change.items():
        values[section] = {**values.get(section, {}), **entries}
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(config)]) == 2
    assert key in capsys.readouterr().err


def test_bad_override_exits_2(tiny_model_dir, dataset, tmp_path, capsys):
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump(train_config(tiny_model_dir, dataset, tmp_path / "run")))
    assert main(["train", "--config", str(config), "--set", "schedule.max_step=3"]) == 2
    assert "schedule.max_step" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "--set", "schedule.max_steps"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_synth_writes_a_coco_set(tmp_path, capsys):
    folder = tmp_path / "synthetic"
    assert main(["synth", str(folder), "--images", "5", "--size", "112", "--concepts", "circle", "ring",
                 "--seed", "3"]) == 0
    assert str(folder / "annotations.json") in capsys.readouterr().out
    coco = load_coco(folder / "annotations.json")
    assert len(coco.getImgIds()) == 5 and [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "ring"]
    assert all(Image.open(folder / "images" / info["file_name"]).size == (112, 112) for info in coco.imgs.values())


def test_tiny_model_writes_a_loadable_sam3(tmp_path):
    assert main(["tiny-model", str(tmp_path / "tiny"), "--size", "112"]) == 0
    model, tokenizer = load_sam3(tmp_path / "tiny")
    assert model_image_size(model) == 112 and tokenizer("circle")["input_ids"]


def test_train_then_evaluate_and_predict_with_the_adapter(tiny_model_dir, dataset, tmp_path, capsys):
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(train_config(tiny_model_dir, dataset, tmp_path / "run")))
    assert main(["train", "--config", str(config), "--quiet", "--set", "schedule.max_steps=2"]) == 0
    out = capsys.readouterr().out
    adapter = tmp_path / "run" / "adapter"
    assert f"adapter: {adapter}" in out and (adapter / "adapter_model.safetensors").is_file()
    assert out.count("step      ") == 2  # log_every 1 and the override's 2 steps, not the YAML's 50
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-step000000002.pt").is_file()

    assert main(["evaluate", "--model", str(tiny_model_dir), "--adapter", str(adapter),
                 "--annotations", str(dataset), "--images", str(dataset.parent / "images")]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout is the JSON alone; the progress bar is on stderr
    assert report["images"] == 6 and set(report["per_concept"]) == {"circle", "square"}
    for key in ("segm_mAP", "segm_mAP50", "bbox_mAP", "bbox_mAP50"):
        assert 0.0 <= report[key] <= 1.0

    image = dataset.parent / "images" / "000001.png"
    out_dir = tmp_path / "predictions"
    assert main(["predict", "--image", str(image), "--prompt", "circle", "--model", str(tiny_model_dir),
                 "--adapter", str(adapter), "--threshold", "0", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    overlay, results_json = out_dir / "000001_overlay.png", out_dir / "000001_instances.json"
    assert Image.open(overlay).size == Image.open(image).size
    written = json.loads(results_json.read_text())
    count = len(written["annotations"])
    assert count > 0 and f"{count} instances" in printed  # threshold 0 keeps every query that survives NMS
    ground_truth = COCO(str(results_json))  # the file is a COCO set (images, categories, annotations)...
    results = ground_truth.loadRes(written["annotations"])  # ...and its annotations load as COCO results
    assert len(results.getAnnIds()) == count
    for annotation in results.loadAnns(results.getAnnIds()):
        assert 0.0 <= annotation["score"] <= 1.0 and annotation["segmentation"]["size"] == [112, 112]
        assert annotation["category_id"] == ground_truth.getCatIds(catNms=["circle"])[0]


def test_predict_of_a_missing_image_exits_2(tiny_model_dir, tmp_path, capsys):
    assert main(["predict", "--image", str(tmp_path / "nope.png"), "--prompt", "circle",
                 "--model", str(tiny_model_dir), "--out", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err
