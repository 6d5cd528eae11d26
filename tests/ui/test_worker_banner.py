"""The banner under the title carries the embedded worker's state (Studio.worker_status, fed by
the WorkerSupervisor) beside the model line, and keeps refreshing while there is a worker."""
from __future__ import annotations

from dataclasses import replace

from app.settings import Settings
from app.studio import open_studio
from app.ui.layout import refresh_banner, studio_banner


def test_the_banner_shows_the_worker_state_and_keeps_polling_for_it(tmp_path, tiny_model_dir):
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL=str(tiny_model_dir)))
    try:
        studio.models.status()  # the model has loaded: without a worker the timer stops
        text, timer = refresh_banner(studio)
        assert text == f"Model: SAM3 from `{tiny_model_dir}`" and timer.active is False

        state = ["Worker: running."]
        with_worker = replace(studio, worker_status=lambda: state[0])
        assert studio_banner(with_worker) == f"Model: SAM3 from `{tiny_model_dir}`  \nWorker: running."
        state[0] = "⚠️ Worker: killed by SIGKILL; restarting in 2 s (1 exit in a row)."
        text, timer = refresh_banner(with_worker)
        assert text.endswith(state[0]) and timer.active and timer.value == 10.0  # a worker can die at any time
    finally:
        studio.engine.dispose()
