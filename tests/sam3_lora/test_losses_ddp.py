"""num_boxes under DDP: two CPU processes (gloo) on the two halves of a batch train
exactly like one process on the whole batch; a single process needs no process group."""
from __future__ import annotations

import socket
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from sam3_lora.dist import all_reduce_mean, all_reduce_sum, is_main_process, rank, world_size
from sam3_lora.losses import build_criterion, compute_num_boxes, compute_num_find_queries
from sam3_lora.model import load_sam3
from tests.sam3_lora.test_losses import assert_same_gradients, gradients, gradients_close, model_outputs, tiny_batch

# Unequal halves on purpose: rank 0 sees 1 + 2 instances, rank 1 sees 0 + 4.
COUNTS = [1, 2, 0, 4]
WORLD_SIZE = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_step(model, batch: dict, rank_local_num_boxes: bool = False) -> dict:
    """Forward, SAM3 loss, backward (DDP averages the gradients); returns the loss dict.

    rank_local_num_boxes: divide by this rank's own instance count, the DDP mistake
    (`normalization="local"`) the public scripts make, to show the test can tell.
    """
    targets = batch["targets"]
    criterion = build_criterion(mask_mode="full")  # points are random: exact equality needs full resolution
    num_boxes = float(sum(len(t["boxes"]) for t in targets)) if rank_local_num_boxes else compute_num_boxes(targets, "cpu")
    result = criterion(model_outputs(model, batch), targets, num_boxes, compute_num_find_queries(targets, "cpu"))
    result["loss"].backward()
    return result


def ddp_worker(process_rank: int, model_dir: str, port: int, out_dir: str) -> None:
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=process_rank,
                                  world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        model, tokenizer = load_sam3(model_dir)
        # The geometry encoder and a few other parameters get no gradient from a text prompt.
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        batch = tiny_batch(tokenizer, COUNTS)
        half = slice(2 * process_rank, 2 * process_rank + 2)
        my_half = {key: value[half] for key, value in batch.items()}
        result = train_step(ddp_model, my_half)
        right = gradients(model)
        model.zero_grad()
        train_step(ddp_model, my_half, rank_local_num_boxes=True)
        torch.save({"num_boxes": result["num_boxes"].item(), "world_size": world_size(), "rank": rank(),
                    "main": is_main_process(), "mean_of_ranks": all_reduce_mean(torch.tensor(float(process_rank))).item(),
                    "gradients": right, "local_gradients": gradients(model)}, Path(out_dir) / f"rank{process_rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_two_processes_on_halves_match_one_process_on_the_batch(tiny_model_dir, tmp_path):
    model, tokenizer = load_sam3(tiny_model_dir)
    train_step(model, tiny_batch(tokenizer, COUNTS))
    single_process = gradients(model)

    mp.spawn(ddp_worker, args=(str(tiny_model_dir), free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    ranks = [torch.load(tmp_path / f"rank{index}.pt", weights_only=True) for index in range(WORLD_SIZE)]
    # Both ranks divide by the same num_boxes = 7 instances / 2 ranks, not by their own 3 and 4.
    assert [result["num_boxes"] for result in ranks] == [3.5, 3.5]
    assert [(result["rank"], result["world_size"], result["main"]) for result in ranks] == [(0, 2, True), (1, 2, False)]
    assert ranks[0]["mean_of_ranks"] == 0.5
    assert_same_gradients(ranks[0]["gradients"], single_process)
    assert_same_gradients(ranks[1]["gradients"], single_process)
    assert not gradients_close(ranks[0]["local_gradients"], single_process)


def test_single_process_needs_no_process_group():
    assert not torch_dist.is_initialized()
    assert (world_size(), rank(), is_main_process()) == (1, 0, True)
    value = torch.tensor([2.0, 3.0])
    summed = all_reduce_sum(value)
    assert torch.equal(summed, value) and summed is not value
    assert torch.equal(all_reduce_mean(value), value)
    assert compute_num_boxes([{"boxes": torch.zeros(3, 4)}], "cpu").item() == 3.0
