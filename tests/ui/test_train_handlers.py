"""The "Train" handlers on a real migrated SQLite store with a synthetic project, called as
the browser would. Jobs are submitted with a recording `send` (no worker); the worker's
side (claim, heartbeat, metric rows, finish) is played with the store functions it uses."""
from __future__ import annotations

import json
import math
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import update

from app.jobs.lifecycle import beat, claim_job, finish_job, get_job, record_adapter
from app.jobs.recipe import preset_values
from app.settings import Settings
from app.store.annotations import save_annotation
from app.store.coco_export import dataset_snapshot
from app.store.coco_import import import_coco
from app.store.dataset_stats import dataset_summary
from app.store.db import write_session
from app.store.models import Job, Metric
from app.store.projects import add_concept, create_project, image_page, set_image_split
from app.studio import open_studio
from app.ui import train_handlers as handlers
from app.ui.curves import CURVE_TERMS, SERIES
from app.ui.messages import REFUSED
from app.ui.train_form import editable_specs
from sam3_lora.synthetic import write_synthetic_coco
from tests.jobs.conftest import write_metric_rows

VIEW = {name: index for index, name in enumerate(handlers.VIEW_OUTPUTS)}
TERMS = list(CURVE_TERMS)


@pytest.fixture(scope="module")
def synthetic_coco(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_coco(folder, num_images=6, image_size=56, concepts=("circle", "square"),
                                max_instances=2, seed=5), folder / "images"


@pytest.fixture
def studio(tmp_path, tiny_model_dir):
    studio = open_studio(Settings(DATA_DIR=tmp_path / "data", SAM3_MODEL=str(tiny_model_dir)))
    yield studio
    studio.engine.dispose()


@pytest.fixture
def project_id(studio, synthetic_coco):
    """circle + square imported on 6 images; 'triangle' without examples; one pending proposal."""
    project = create_project(studio.engine, "Shapes")
    for name in ("circle", "square", "triangle"):
        add_concept(studio.engine, project.id, name)
    json_path, images = synthetic_coco
    import_coco(studio.engine, studio.media_dir, project.id, json_path, images, max_bytes=10 * 1024 * 1024)
    for row in image_page(studio.engine, project.id, 0, 10):  # uploads pick val by hash; start all in train
        set_image_split(studio.engine, row.image.id, "train")
    first_image = image_page(studio.engine, project.id, 0, 1)[0].image
    proposal = json.loads(next(iter(_annotations(studio, project.id))).rle)
    save_annotation(studio.engine, image_id=first_image.id, concept_id=_concept(studio, project.id, "circle"),
                    rle=proposal, source="model", score=0.9)
    return project.id


def _annotations(studio, project_id):
    from sqlmodel import select

    from app.store.db import read_session
    from app.store.models import Annotation, Image

    with read_session(studio.engine) as session:
        return session.exec(select(Annotation).join(Image).where(Image.project_id == project_id)).all()


def _concept(studio, project_id, name):
    from app.store.projects import list_concepts

    return next(c.id for c in list_concepts(studio.engine, project_id) if c.name == name)


def form_values(preset: str = "Quick", **changes) -> list:
    """The Advanced fields as the browser sends them: the preset's values with `changes` (key__sub -> key.sub)."""
    values = handlers.choose_preset(preset)
    index = {spec.key: i for i, spec in enumerate(editable_specs())}
    for key, value in changes.items():
        values[index[key.replace("__", ".")]] = value
    return values


class RecordingSend:
    def __init__(self, fail: bool = False):
        self.sent, self.fail = [], fail

    def __call__(self, job_id: int) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append(job_id)


def start(studio, project_id, send, preset="Quick", view=None, **changes):
    return handlers.start_finetune(studio, project_id, preset, view, TERMS, *form_values(preset, **changes), send=send)


def interactive(update) -> bool:
    return update["interactive"]


# ---------------------------------------------------------------- summary

def test_summary_counts_what_training_uses_and_warns(studio, project_id):
    summary = handlers.refresh_summary(studio, project_id)
    trained = len(dataset_snapshot(studio.engine, project_id))
    assert "**6 images** (6 train · 0 val)" in summary and f"**{trained} instances** used for training" in summary
    assert "1 model proposal(s) await review" in summary  # counted apart, not in the instances
    assert "Concept `triangle` has no examples" in summary
    assert "No image is marked `val`: a random `data.val_fraction`" in summary
    labelled = dataset_summary(studio.engine, project_id).labelled_images
    assert 0 < labelled <= 6 and f"{labelled} with labels" in summary and f"Only {labelled} labelled image(s)" in summary
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| `")}
    assert rows["`triangle`"].replace(" ", "") == "|`triangle`|0|0|"

    for row in image_page(studio.engine, project_id, 0, 2):
        set_image_split(studio.engine, row.image.id, "val")
    summary = handlers.refresh_summary(studio, project_id)
    assert "(4 train · 2 val)" in summary and "No image is marked `val`" not in summary
    counted = sum(int(cell) for line in summary.splitlines() if line.startswith("| `")
                  for cell in line.strip("|").split("|")[1:])
    assert counted == trained
    assert handlers.refresh_summary(studio, None) == "Choose a project in Projects & Data."


def test_a_concept_labelled_only_on_val_images_is_warned_about():
    from app.store.dataset_stats import ConceptCount, DatasetSummary
    from app.ui.train_summary import summary_markdown

    summary = DatasetSummary({"train": 3, "val": 1}, 3, [ConceptCount(1, "cat", 5, 1), ConceptCount(2, "horse", 0, 1)])
    text = summary_markdown(summary)
    assert "Concept `horse` has no training example (0 train, 1 val)" in text
    assert "`cat` has no" not in text


# ---------------------------------------------------------------- starting

def test_fine_tune_queues_a_job_with_the_overrides_and_is_disabled_while_it_is_active(studio, project_id):
    send = RecordingSend()
    message, *view = start(studio, project_id, send, lora__rank=4, schedule__max_steps=12)
    job = get_job(studio.engine, send.sent[0])
    assert message.startswith(f"Job {job.id} queued with the Quick preset")
    counts = dataset_summary(studio.engine, project_id).concepts
    train = sum(c.train_instances for c in counts)
    assert f"trains on {train} labelled instances of `train` images" in message
    config = json.loads(job.config_json)
    assert config["lora"]["rank"] == 4 and config["schedule"]["max_steps"] == 12
    assert config["model"]["source"] == studio.models.status().source  # the SAM3 the studio runs
    assert json.loads(job.dataset_snapshot) == dataset_snapshot(studio.engine, project_id)  # no proposal in it
    assert not interactive(view[VIEW["start"]]) and interactive(view[VIEW["cancel"]])
    assert view[VIEW["timer"]].active is True
    assert view[VIEW["job"]]["value"] == job.id and view[VIEW["jobs"]][0][:2] == [job.id, "queued"]

    shown = handlers.show_project(studio, project_id, None, TERMS)  # a page reload
    assert not interactive(shown[2 + VIEW["start"]])
    message, *_ = start(studio, project_id, send)
    assert message.startswith(REFUSED) and f"already has job {job.id}" in message and send.sent == [job.id]


def test_a_bad_advanced_value_is_refused_naming_the_key_and_creates_nothing(studio, project_id):
    send = RecordingSend()
    for changes, named in [({"lora__rank": 0}, "lora.rank: must be >= 1"),
                           ({"optim__betas": "0.9"}, "optim.betas: expected a list of 2"),
                           ({"data__batch_size": None}, "data.batch_size: is empty"),
                           ({"schedule__epochs": 3}, "schedule.epochs/schedule.max_steps")]:
        message, *view = start(studio, project_id, send, **changes)
        assert message.startswith(REFUSED) and named in message.replace("\\", ""), message  # markdown escapes
        assert interactive(view[VIEW["start"]])
    assert send.sent == [] and handlers.show_project(studio, project_id, None, TERMS)[2 + VIEW["jobs"]] == []
    message, *_ = handlers.start_finetune(studio, None, "Quick", None, TERMS, *form_values(), send=send)
    assert message.startswith(REFUSED) and "choose a project first" in message


def test_presets_fill_the_advanced_fields(studio):
    keys = [spec.key for spec in editable_specs()]
    thorough = dict(zip(keys, handlers.choose_preset("Thorough")))
    assert thorough["lora.preset"] == "full" and thorough["lora.rank"] == 32 and thorough["optim.betas"] == "0.9, 0.999"
    # optional numbers are text boxes: empty = null (a browser number field would send 0)
    assert thorough["schedule.max_steps"] == "" and thorough["schedule.epochs"] == "20"
    assert dict(zip(keys, handlers.choose_preset("Quick")))["schedule.max_steps"] == str(preset_values("Quick")["schedule.max_steps"])


def test_a_down_broker_still_queues_the_job_and_says_so(studio, project_id):
    message, *view = start(studio, project_id, RecordingSend(fail=True))
    assert "The broker did not answer" in message
    assert view[VIEW["jobs"]][0][1] == "queued (waiting for the broker)"


# ---------------------------------------------------------------- the live view

def _rows(step: int, split: str = "train", **values) -> list[dict]:
    return [{"step": step, "split": split, "name": name, "value": value} for name, value in values.items()]


def test_curve_reads_rows_incrementally_with_val_series_and_survives_a_reload(studio, project_id):
    send = RecordingSend()
    _, *view = start(studio, project_id, send)
    job_id = send.sent[0]
    assert claim_job(studio.engine, job_id, "w1")
    beat(studio.engine, job_id, 2, 40)
    write_metric_rows(studio.engine, job_id, _rows(0, "val", loss=9.0, loss_bbox=1.0, segm_mAP=0.1))
    write_metric_rows(studio.engine, job_id, _rows(1, loss=8.0, loss_giou=0.5, loss_bbox_0=3.0, lr=1e-4)
                      + _rows(2, loss=7.0, loss_giou=0.4))

    state = view[VIEW["view"]]
    ticked = handlers.tick(studio, project_id, job_id, state, TERMS)
    frame, state = ticked[VIEW["curve"]], ticked[VIEW["view"]]
    assert isinstance(frame, pd.DataFrame)
    assert tuple(frame["series"].unique()) == SERIES  # every series named: the chart's colours never change
    drawn = frame.dropna()
    assert set(drawn["series"]) == {"total", "giou", "total val", "bbox val"}  # no lr, mAP, aux
    # log10 values: the total and the terms stay readable on one axis
    assert frame[frame.series == "total"][["step", "value"]].values.tolist() == [[1, math.log10(8.0)], [2, math.log10(7.0)]]
    assert frame[frame.series == "giou"]["value"].tolist()[0] == math.log10(0.5)
    last_id = state["after_id"]
    assert ticked[VIEW["job"]]["value"] == job_id  # queued -> running: the dropdown's label changes

    again = handlers.tick(studio, project_id, job_id, state, TERMS)
    assert again[VIEW["curve"]] == {"__type__": "update"} and again[VIEW["job"]] == {"__type__": "update"}

    write_metric_rows(studio.engine, job_id, _rows(3, loss=6.0) + _rows(3, "val", loss=6.5))
    newer = handlers.tick(studio, project_id, job_id, state, TERMS)
    state = newer[VIEW["view"]]
    assert state["after_id"] == last_id + 2  # only the two new rows were read
    frame = newer[VIEW["curve"]].dropna()
    assert frame[frame.series == "total val"]["step"].tolist() == [0, 3]
    assert newer[VIEW["timer"]].active is True
    only_total = handlers.pick_terms(state, ["loss"]).dropna()
    assert set(only_total["series"]) == {"total", "total val"}

    reloaded = handlers.show_project(studio, project_id, None, TERMS)  # a fresh page: no state
    assert reloaded[2 + VIEW["job"]]["value"] == job_id
    assert reloaded[2 + VIEW["curve"]].dropna().equals(frame)


def test_eta_comes_from_the_step_rate_of_the_current_attempt(studio, project_id):
    send = RecordingSend()
    start(studio, project_id, send)
    job_id = send.sent[0]
    claim_job(studio.engine, job_id, "w1")
    write_metric_rows(studio.engine, job_id, _rows(5, loss=1.0))
    beat(studio.engine, job_id, 25, 85)
    job = get_job(studio.engine, job_id)
    with write_session(studio.engine) as session:  # step 5 at t0, step 25 at t0 + 10 s: 2 steps/s
        session.execute(update(Metric).where(Metric.job_id == job_id).values(created_at=job.started_at))
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=job.started_at + timedelta(seconds=10)))
    view = handlers.show_project(studio, project_id, None, TERMS)[2:]
    assert view[VIEW["jobs"]][0][1:5] == ["running", "29%", "25/85", "30 s"]  # (85 - 25) / 2
    assert "step 25 / 85 (29%) · ETA 30 s" in view[VIEW["progress"]] and 'value="25" max="85"' in view[VIEW["progress"]]


def test_cancel_a_queued_job_then_a_running_one(studio, project_id):
    send = RecordingSend()
    _, *view = start(studio, project_id, send)
    message, *view = handlers.cancel_job(studio, project_id, send.sent[0], view[VIEW["view"]], TERMS)
    assert message == f"Job {send.sent[0]} cancelled before it started."
    assert interactive(view[VIEW["start"]]) and view[VIEW["timer"]].active is False

    _, *view = start(studio, project_id, send)
    running = send.sent[1]
    claim_job(studio.engine, running, "w1")
    message, *view = handlers.cancel_job(studio, project_id, running, view[VIEW["view"]], TERMS)
    assert "stops after its current step" in message and get_job(studio.engine, running).cancel_requested
    assert view[VIEW["jobs"]][0][1] == "cancelling"
    message, *_ = handlers.cancel_job(studio, project_id, None, None, TERMS)
    assert message.startswith(REFUSED) and "no job is shown" in message


def test_a_failed_job_shows_its_error_and_frees_the_button(studio, project_id):
    send = RecordingSend()
    start(studio, project_id, send)
    job_id = send.sent[0]
    claim_job(studio.engine, job_id, "w1")
    finish_job(studio.engine, job_id, "failed", error="ConfigError: data.image_size: must be a multiple of 14")
    view = handlers.tick(studio, project_id, job_id, None, TERMS)
    assert view[VIEW["outcome"]] == f"**Job {job_id} failed:** ConfigError: data.image_size: must be a multiple of 14"
    assert view[VIEW["jobs"]][0][6].startswith("ConfigError: data.image_size")
    assert interactive(view[VIEW["start"]]) and not interactive(view[VIEW["cancel"]])
    assert view[VIEW["timer"]].active is False  # nothing is active: the timer stops


def test_a_finished_job_shows_map_before_and_after(studio, project_id):
    send = RecordingSend()
    start(studio, project_id, send)
    job_id = send.sent[0]
    claim_job(studio.engine, job_id, "w1")
    record_adapter(studio.engine, project_id, job_id, f"job-{job_id}", f"adapters/job-{job_id}",
                   metrics={"steps": 40, "eval_before": {"segm_mAP": 0.05, "bbox_mAP": 0.1},
                            "eval_after": {"segm_mAP": 0.42, "bbox_mAP": 0.5}})
    finish_job(studio.engine, job_id, "succeeded")
    outcome = handlers.pick_job(studio, project_id, job_id, None, TERMS)[VIEW["outcome"]]
    assert f"Job {job_id} finished. Adapter **job-{job_id}**" in outcome
    assert "| segm | 0.0500 | 0.4200 |" in outcome and "| bbox | 0.1000 | 0.5000 |" in outcome


def test_entering_the_tab_again_refreshes_the_summary_and_keeps_the_shown_job(studio, project_id):
    send = RecordingSend()
    start(studio, project_id, send)
    first = send.sent[0]
    handlers.cancel_job(studio, project_id, first, None, TERMS)
    start(studio, project_id, send)
    for row in image_page(studio.engine, project_id, 0, 1):
        set_image_split(studio.engine, row.image.id, "val")  # changed in another tab
    summary, *view = handlers.enter_tab(studio, project_id, first, None, TERMS)
    assert "(5 train · 1 val)" in summary
    assert view[VIEW["job"]]["value"] == first and [row[0] for row in view[VIEW["jobs"]]] == [send.sent[1], first]
