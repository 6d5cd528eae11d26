"""DDP on CPU: two gloo processes under torchrun train one adapter, and split the data.

- `python -m torch.distributed.run --nproc-per-node=2 -m sam3_lora.cli train --config x.yaml`
  (gpus: 2, device: cpu) runs to the end with a val split, mid-run checkpoints and
  evals, and leaves one adapter that loads with plain PEFT. An audit hook in every
  process (sitecustomize.py on PYTHONPATH) logs each file it opens for writing,
  creates, renames or removes under the output folder, with its RANK: all of them
  come from rank 0.
- `_setup_distributed` joins the group torchrun describes, and the train loader's
  DistributedSampler gives the ranks disjoint halves of each epoch, a new order per
  epoch (two spawned gloo processes, no model needed).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from peft import PeftModel
from transformers import Sam3Model

from sam3_lora import dist
from sam3_lora.config import TrainConfig
from sam3_lora.synthetic import write_synthetic_coco
from sam3_lora.tiny import build_tiny_tokenizer
from sam3_lora.train import _setup_distributed
from sam3_lora.train_data import build_train_data

REPO = Path(__file__).resolve().parents[2]

# Logs "<RANK> <event> <path>" for every write-like file event under WRITE_AUDIT_DIR.
AUDIT_HOOK = textwrap.dedent('''
    import os, sys
    _log, _root = os.environ.get("WRITE_AUDIT_LOG"), os.environ.get("WRITE_AUDIT_DIR")
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _PATH_EVENTS = ("os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "shutil.rmtree", "os.symlink")

    def _audit(event, args):
        if event == "open":
            path, flags = args[0], args[2]
            if not isinstance(flags, int) or not flags & _WRITE_FLAGS:
                return
        elif event in _PATH_EVENTS:
            path = args[0]
        else:
            return
        if isinstance(path, int):
            return
        path = os.path.abspath(os.fsdecode(path))
        if path.startswith(_root):
            with open(_log, "a") as log:
                log.write(f"{os.environ.get('RANK', '-')} {event} {path}\\n")

    if _log and _root:
        sys.addaudithook(_audit)
''')


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp-data")
    return write_synthetic_coco(root, num_images=12, image_size=112, concepts=("circle", "square"), seed=1)


def test_two_gloo_processes_train_one_adapter_written_by_rank_0(tiny_model_dir, dataset, tmp_path):
    output_dir = tmp_path / "run"
    config = {
        "model": {"source": str(tiny_model_dir)},
        "lora": {"preset": "decoder", "rank": 4, "alpha": 8},
        "data": {"train_annotations": str(dataset), "train_images": str(dataset.parent / "images"),
                 "val_fraction": 0.25, "batch_size": 2},
        "schedule": {"max_steps": 4},
        "loss": {"num_points": 256},
        "device": "cpu", "gpus": 2, "precision": "fp32",
        "eval_every": 2, "checkpoint_every": 2, "log_every": 1, "output_dir": str(output_dir),
    }
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(AUDIT_HOOK)
    audit_log = tmp_path / "writes.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook_dir), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "WRITE_AUDIT_LOG": str(audit_log), "WRITE_AUDIT_DIR": str(output_dir), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-addr=127.0.0.1",
               f"--master-port={free_port()}", "-m", "sam3_lora.cli", "train", "--config", str(config_path), "--quiet"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert done.stdout.count("adapter: ") == 1  # rank 0 reports; rank 1 stays quiet
    assert "segm mAP" in done.stdout
    assert sorted(path.name for path in output_dir.iterdir()) == ["adapter", "args.yaml", "checkpoints", "results.csv",
                                                                  "results.png"]
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == [
        "checkpoint-step000000002.pt", "checkpoint-step000000004.pt"]
    model = PeftModel.from_pretrained(Sam3Model.from_pretrained(tiny_model_dir), output_dir / "adapter")
    assert any(".lora_B." in name and parameter.abs().sum() > 0 for name, parameter in model.named_parameters())

    writes = [line.split(" ", 2) for line in audit_log.read_text().splitlines()]
    writers = {rank for rank, _, _ in writes}
    assert writers == {"0"}, f"files under the output folder were written by ranks {writers}"
    written = {Path(path).name for _, _, path in writes}
    assert "checkpoint-step000000004.pt" in written or any(name.startswith("checkpoint-step000000004.pt.tmp-")
                                                           for name in written)
    assert "adapter_config.json" in written


def _collect_rank_split(rank: int, world: int, port: int, config: dict, out_dir: str) -> None:
    """One spawned rank: join the group as torchrun would, build the train data, save each epoch's indices."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(world),
                       "RANK": str(rank), "LOCAL_RANK": str(rank)})
    cfg = TrainConfig.from_dict(config)
    _setup_distributed(cfg, torch.device("cpu"))
    try:
        data = build_train_data(cfg, build_tiny_tokenizer(), 112)
        orders = []
        for epoch in (0, 1):
            data.sampler.set_epoch(epoch)
            orders.append(list(data.sampler))
        data.close()
        torch.save({"world": dist.world_size(), "rank": dist.rank(), "orders": orders,
                    "dataset_size": len(data.train), "batches_per_epoch": data.batches_per_epoch},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_setup_distributed_joins_the_group_and_the_sampler_splits_each_epoch(dataset, tmp_path):
    config = {"data": {"train_annotations": str(dataset), "train_images": str(dataset.parent / "images"),
                       "val_fraction": 0.0, "batch_size": 2},
              "schedule": {"max_steps": 1}, "device": "cpu", "gpus": 2, "eval_every": 0}
    mp.spawn(_collect_rank_split, args=(2, free_port(), config, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [(r["world"], r["rank"]) for r in ranks] == [(2, 0), (2, 1)]
    size = ranks[0]["dataset_size"]
    per_rank = -(-size // 2)  # DistributedSampler pads an odd set by repeating (per_rank * 2 - size) items
    assert ranks[0]["batches_per_epoch"] == ranks[1]["batches_per_epoch"] == -(-per_rank // 2)
    for epoch in (0, 1):
        first, second = ranks[0]["orders"][epoch], ranks[1]["orders"][epoch]
        assert len(first) == len(second) == per_rank
        assert set(first) | set(second) == set(range(size))
        assert len(set(first) & set(second)) <= per_rank * 2 - size
    assert ranks[0]["orders"][0] != ranks[0]["orders"][1]  # reshuffled per epoch (seed + epoch)


def test_gpus_must_match_the_processes_torchrun_started(dataset, monkeypatch):
    cfg = TrainConfig.from_dict({"data": {"train_annotations": str(dataset), "train_images": str(dataset.parent)},
                                 "schedule": {"max_steps": 1}, "device": "cpu", "gpus": 1})
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="gpus is 1 but torchrun started 2 processes"):
        _setup_distributed(cfg, torch.device("cpu"))
