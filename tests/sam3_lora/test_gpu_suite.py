"""bench/gpu_suite.py runs end to end on a CPU with --tiny and prints its one table.

The suite is meant for one H100/H200; this smoke test keeps its code paths (presets
read from configs/, train() through the loader, FLOP counting, the largest-batch
search, Find all cached / uncached, the pre-label model pass) working where there is no GPU. No timing is checked.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_suite_runs_tiny_on_a_cpu_and_prints_every_row(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--tiny", "--time-budget", "600"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout.split("GPU suite on ", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "preset" not in line]
    measured = {tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in rows[:6]}
    assert measured == {(preset, mode) for preset in ("decoder", "balanced", "full") for mode in ("points", "full")}
    for row in rows[:6]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert float(cells[4]) > 0, row  # images/s through train()
        assert cells[7].startswith(">= 2"), row  # batches 1 and 2 fit the tiny model
    assert "| full     | points | 32 / 0.1 / 1" in table and "| on " in table  # the full preset checkpoints the ViT
    assert "| fp32 | " in table and " ms | " in table and "bf16 refused" in table
    prelabel = table.split("Pre-label model pass", 1)[1]
    rates = {int(cells[0]): float(cells[1]) for cells in
             ([cell.strip() for cell in line.strip("|").split("|")] for line in prelabel.splitlines()[3:] if line.startswith("| "))}
    assert set(rates) == {1, 2} and min(rates.values()) > 0, prelabel
