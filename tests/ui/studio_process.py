"""Start and stop `python -m app.main` as a real process on a free port (shared by the UI tests)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90  # gradio's import alone takes several seconds on a shared CPU


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def studio_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("STUDIO_USERS", "DATABASE_URL", "REDIS_URL", "HOST", "PORT", "SAM3_MODEL")}
    env.update(DATA_DIR=str(tmp_path / "data"), GRADIO_ANALYTICS_ENABLED="False", **extra)
    return env


def start_studio(tmp_path: Path, worker: bool = False, **extra: str) -> tuple[subprocess.Popen, str]:
    """Start the studio (with its embedded worker when `worker`); return (process, base url) once GET / answers."""
    port = free_port()
    log_path = tmp_path / f"studio-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "app.main", "--port", str(port), "--with-worker" if worker else "--no-worker"],
        cwd=REPO_ROOT, env=studio_env(tmp_path, **extra), stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"sam3-studio exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(url + "/", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    process.kill()
    raise AssertionError(f"sam3-studio did not answer within {START_TIMEOUT_S}s:\n{log_path.read_text()}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
