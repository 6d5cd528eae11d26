"""`sam3-lora train` behaves like its peers (yolo train): a used output_dir is never trained into
again unless --resume says so, INFO lines are visible and never cut the progress bar, and the run
folder holds args.yaml, results.csv, results.png and an adapter whose model card the Hub reads."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import yaml
from huggingface_hub import ModelCard
from PIL import Image

from sam3_lora.cli import main
from sam3_lora.synthetic import write_synthetic_coco
from tests.sam3_lora.test_cli import train_config

STEPS = 4


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_coco(tmp_path_factory.mktemp("runs-data"), num_images=6, image_size=112,
                                concepts=("circle", "square"), seed=4)


@pytest.fixture
def config(tiny_model_dir, dataset, tmp_path):
    values = train_config(tiny_model_dir, dataset, tmp_path / "runs" / "shapes")
    values["model"]["base_model"] = "test-org/tiny-sam3"  # the Hub id this local folder stands for
    values["data"]["val_fraction"] = 0.34
    values.update(eval_every=2, checkpoint_every=2, log_every=1)
    values["schedule"]["max_steps"] = STEPS
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_second_run_gets_its_own_folder_and_resume_continues_the_first(config, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    first = capsys.readouterr()
    assert f"adapter: {runs / 'shapes' / 'adapter'}" in first.out
    assert "INFO sam3_lora.model: loaded SAM3" in first.err  # logging is set up and visible

    assert main(["train", "--config", str(config), "--quiet"]) == 0
    second = capsys.readouterr()
    assert f"adapter: {runs / 'shapes2' / 'adapter'}" in second.out and second.out.count("step      ") == STEPS
    assert f"{runs / 'shapes'} holds an earlier run; this run writes to {runs / 'shapes2'}" in second.err

    assert main(["train", "--config", str(config), "--quiet", "--resume", "--set", f"schedule.max_steps={STEPS + 2}"]) == 0
    resumed = capsys.readouterr()
    assert f"adapter: {runs / 'shapes' / 'adapter'}" in resumed.out and resumed.out.count("step      ") == 2
    assert f"INFO sam3_lora.train: resumed from {runs / 'shapes' / 'checkpoints'}" in resumed.err
    assert sorted(path.name for path in runs.iterdir()) == ["shapes", "shapes2"]
    rows = list(csv.DictReader((runs / "shapes" / "results.csv").open()))
    assert [int(row["step"]) for row in rows if row["split"] == "train"] == list(range(1, STEPS + 3))  # none twice

    assert main(["train", "--config", str(config), "--resume", "--set", f"output_dir={tmp_path / 'empty'}"]) == 2
    assert "holds no checkpoint to continue" in capsys.readouterr().err


def test_the_run_folder_holds_args_results_and_a_hub_card(config, tmp_path, capsys):
    assert main(["train", "--config", str(config), "--quiet", "--set", "lora.rank=2"]) == 0
    capsys.readouterr()
    run = tmp_path / "runs" / "shapes"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert args["lora"]["rank"] == 2 and args["output_dir"] == str(run) and args["resume"] is None
    assert args["optim"]["grad_clip"] == 0.1  # defaults filled in: the effective config, not the YAML
    rows = list(csv.DictReader((run / "results.csv").open()))
    train_rows, val_rows = [r for r in rows if r["split"] == "train"], [r for r in rows if r["split"] == "val"]
    assert [int(r["step"]) for r in train_rows] == list(range(1, STEPS + 1))  # one row per logged step
    assert [int(r["step"]) for r in val_rows] == [0, 2, STEPS]  # before, every eval_every, after
    assert list(rows[0])[:4] == ["split", "step", "epoch", "loss"] and "loss_dice" in rows[0] and "lr" in rows[0]
    assert val_rows[0]["segm_mAP"] != "" and train_rows[0]["segm_mAP"] == ""
    with Image.open(run / "results.png") as results:
        assert results.width >= 4 * 300  # the total and every loss term, one panel each
    card = ModelCard.load(run / "adapter" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "test-org/tiny-sam3"
    assert "[More Information Needed]" not in card.text and "| circle |" in card.text
    assert (run / "adapter" / "loss_curve.png").is_file()


def test_a_missing_model_folder_is_one_line_and_exit_2(config, tmp_path):
    done = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "train", "--config", str(config),
                           "--set", f"model.source={tmp_path / 'no-such-model'}"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "no-such-model" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists()


def test_log_lines_never_cut_the_progress_bar(config, tmp_path):
    done = subprocess.run([sys.executable, "-m", "sam3_lora.cli", "train", "--config", str(config)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "%|" in done.stderr  # the bar was drawn
    assert "Loading weights" not in done.stderr and "Writing model shards" not in done.stderr  # no second bar
    # What a terminal shows on each row is the text after the row's last carriage return: a bar or
    # a log line, never both (tqdm.write clears the bar, writes the line, redraws the bar).
    rows = [line.rsplit("\r", 1)[-1] for line in done.stderr.split("\n")]
    assert not [row for row in rows if "%|" in row and ("INFO" in row or "WARNING" in row)]
    assert any(row.startswith("INFO sam3_lora.model: loaded SAM3") for row in rows)
