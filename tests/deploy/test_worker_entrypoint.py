"""docker/worker-entrypoint.sh shares a host's GPUs out among worker replicas, one lock each.

Run for real with bash and flock; a stand-in `nvidia-smi` on PATH lists two GPUs (or
fails, as on a host without the NVIDIA runtime). The command after the script prints the
CUDA_VISIBLE_DEVICES it was given and then waits on stdin, so it holds its GPUs until
the test closes its input.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.deploy.entry_points import REPO_ROOT

ENTRYPOINT = REPO_ROOT / "docker" / "worker-entrypoint.sh"
SHOW_AND_HOLD = ["bash", "-c", 'echo "gpus=${CUDA_VISIBLE_DEVICES-unset} order=${CUDA_DEVICE_ORDER-unset}"; read -r _']


@pytest.fixture
def host(tmp_path) -> dict[str, str]:
    """Environment of a worker container on a 2-GPU host: fake nvidia-smi, a lock folder, a short retry."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n[ \"$*\" = '--query-gpu=index --format=csv,noheader' ] || exit 9\necho 0\necho 1\n")
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GPU_LOCK_DIR": str(tmp_path / "locks"),
            "GPU_WAIT_S": "0.2"}


def start(env: dict[str, str], **extra: str) -> subprocess.Popen:
    return subprocess.Popen([str(ENTRYPOINT), *SHOW_AND_HOLD], env={**env, **extra}, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def first_line(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip()


def release(proc: subprocess.Popen) -> str:
    """Close the worker's stdin (it exits, dropping its locks); returns its stderr. One still
    waiting for a GPU does not read its stdin: it is killed."""
    try:
        return proc.communicate("\n", timeout=10)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[1]


def test_each_replica_takes_a_gpu_of_its_own_and_a_spare_one_waits(host):
    workers = []
    try:
        workers.append(start(host))
        assert first_line(workers[0]) == "gpus=0 order=PCI_BUS_ID"
        workers.append(start(host))
        assert first_line(workers[1]) == "gpus=1 order=PCI_BUS_ID"
        workers.append(start(host))  # a third replica on a 2-GPU host
        assert "fewer than 1 of the GPUs 0 1 are free" in workers[2].stderr.readline()
        release(workers[0])  # a worker stops: the spare one gets its GPU
        assert first_line(workers[2]) == "gpus=0 order=PCI_BUS_ID"
    finally:
        for proc in workers:
            if proc.poll() is None:
                release(proc)


def test_a_worker_for_multi_gpu_jobs_takes_several(host):
    both = start(host, WORKER_GPUS="2")
    try:
        assert first_line(both) == "gpus=0,1 order=PCI_BUS_ID"
    finally:
        release(both)


@pytest.mark.parametrize("gpus, message", [("3", "WORKER_GPUS=3 but this host has 2 GPU(s): 0 1"),
                                           ("two", "WORKER_GPUS must be a whole number >= 1")])
def test_an_impossible_request_stops_with_the_reason(host, gpus, message):
    result = subprocess.run([str(ENTRYPOINT), "true"], env={**host, "WORKER_GPUS": gpus}, capture_output=True,
                            text=True, timeout=10)
    assert result.returncode != 0 and message in result.stderr


def test_without_a_gpu_the_worker_runs_unpinned(host, tmp_path):
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    proc = start(host)
    assert first_line(proc) == "gpus=unset order=unset"
    assert "no GPU visible" in release(proc)
