"""The migrations build exactly the models' schema, run from the command line and from
several processes at once, and a downgrade/upgrade round trip keeps every row."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, select
from sqlmodel import SQLModel

from app.store.annotations import delete_annotation, save_annotation
from app.store.db import make_engine, write_session
from app.store.migrate import alembic_config, current_revision, downgrade_database, upgrade_database
from app.store.models import Adapter, Job, Metric, PrelabelMark
from app.store.projects import add_concept, create_project
from tests.store.conftest import add_image, box_rle

REPO_ROOT = Path(__file__).resolve().parents[2]


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_differences(engine: Engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, SQLModel.metadata)


def test_migrated_schema_matches_the_models(engine):
    assert head_revision() == "0004"
    assert current_revision(engine.url.render_as_string(hide_password=False)) == "0004"
    assert schema_differences(engine) == []


def test_alembic_command_from_repo_root_creates_the_data_dir(tmp_path):
    data_dir = tmp_path / "not" / "yet" / "there"
    environment = {**os.environ, "DATA_DIR": str(data_dir), "DATABASE_URL": ""}
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Running upgrade 0001 -> 0002" in completed.stderr and "Running upgrade 0002 -> 0003" in completed.stderr
    assert "Running upgrade 0003 -> 0004" in completed.stderr
    assert current_revision(f"sqlite:///{data_dir / 'studio.db'}") == "0004"


def test_concurrent_upgrades_of_a_fresh_database_all_succeed(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh' / 'studio.db'}"
    script = f"from app.store.migrate import upgrade_database; upgrade_database({url!r})"
    runners = [subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    errors = [runner.communicate(timeout=120)[1] for runner in runners]
    assert [runner.returncode for runner in runners] == [0, 0, 0], errors
    assert current_revision(url) == "0004"


def populate(engine: Engine) -> None:
    """One of every kind of row, including edited, deleted and conflicting annotations."""
    project = create_project(engine, "bridges")
    crack = add_concept(engine, project.id, "crack")
    rust = add_concept(engine, project.id, "rust")
    images = [add_image(engine, project.id) for _ in range(3)]
    first = save_annotation(engine, image_id=images[0].id, concept_id=crack.id, rle=box_rle(30, 40, 1, 2, 5, 6))
    save_annotation(engine, image_id=images[0].id, concept_id=rust.id, rle=box_rle(30, 40, 3, 3, 4, 4),
                    annotation_id=first.id, base_revision=1)
    try:
        save_annotation(engine, image_id=images[0].id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 2, 2),
                        annotation_id=first.id, base_revision=1)
    except ValueError:
        pass  # the conflict row is what we want in the table
    second = save_annotation(engine, image_id=images[1].id, concept_id=rust.id, rle=box_rle(30, 40, 10, 10, 3, 3),
                             source="model", score=0.75)
    delete_annotation(engine, second.id, base_revision=1, author="ann")
    with write_session(engine) as session:
        job = Job(project_id=project.id, config_json="{}", dataset_snapshot="[[1, 2]]")
        session.add(job)
        session.flush()
        session.add_all([Metric(job_id=job.id, step=step, name="loss", value=1.0 / (step + 1)) for step in range(5)])
        session.add(Adapter(project_id=project.id, job_id=job.id, name="v1", path="adapters/1"))
        session.add(PrelabelMark(job_id=job.id, image_id=images[0].id, proposals=2, presence_json='{"1": 0.5}'))


def all_rows(engine: Engine) -> dict[str, list[tuple]]:
    with engine.connect() as connection:
        return {table.name: [tuple(row) for row in connection.execute(select(table).order_by(*table.primary_key))]
                for table in SQLModel.metadata.sorted_tables}


NEW_IN_0003 = {"concept": ("coco_id", "supercategory"), "image": ("coco_id",)}
NEW_IN_0004 = {"job": ("kind",), "annotation": ("proposed_by",), "project": ("prelabel_after_finetune",),
               "prelabelmark": ("*",)}
NEW_SINCE_0003 = {**NEW_IN_0003, **NEW_IN_0004}


def rows_without(engine: Engine, dropped: dict[str, tuple[str, ...]]) -> dict[str, list[tuple]]:
    """Every row of every table, leaving out the columns a later migration added."""
    with engine.connect() as connection:
        return {
            table.name: [tuple(row) for row in connection.execute(
                select(*[c for c in table.columns if c.name not in dropped.get(table.name, ())])
                .order_by(*table.primary_key))]
            for table in SQLModel.metadata.sorted_tables if "*" not in dropped.get(table.name, ())
        }


def rows_without_columns(rows: dict[str, list[tuple]], dropped: dict[str, tuple[str, ...]]) -> dict[str, list[tuple]]:
    keep = {table.name: [i for i, c in enumerate(table.columns) if c.name not in dropped.get(table.name, ())]
            for table in SQLModel.metadata.sorted_tables}
    return {name: [tuple(row[i] for i in keep[name]) for row in table_rows] for name, table_rows in rows.items()
            if "*" not in dropped.get(name, ())}


def test_downgrade_and_upgrade_keep_every_row(tmp_path):
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    populate(engine)
    before = all_rows(engine)
    assert {name: len(rows) for name, rows in before.items()} == {
        "project": 1, "concept": 2, "image": 3, "annotation": 2, "annotationhistory": 5,
        "job": 1, "metric": 5, "adapter": 1, "prelabelmark": 1,
    }
    engine.dispose()

    downgrade_database(url, "-1")
    assert current_revision(url) == "0003"
    engine = make_engine(url)
    assert "prelabelmark" not in inspect(engine).get_table_names()
    assert "kind" not in {column["name"] for column in inspect(engine).get_columns("job")}
    assert rows_without(engine, NEW_IN_0004) == rows_without_columns(before, NEW_IN_0004)
    engine.dispose()

    downgrade_database(url, "-1")
    assert current_revision(url) == "0002"
    engine = make_engine(url)
    assert "coco_id" not in {column["name"] for column in inspect(engine).get_columns("concept")}
    assert "coco_id" not in {column["name"] for column in inspect(engine).get_columns("image")}
    assert rows_without(engine, NEW_SINCE_0003) == rows_without_columns(before, NEW_SINCE_0003)
    engine.dispose()

    downgrade_database(url, "0001")
    assert current_revision(url) == "0001"
    engine = make_engine(url)
    index_names = {index["name"] for index in inspect(engine).get_indexes("annotation")}
    assert "ix_annotation_image_id_deleted" not in index_names
    assert rows_without(engine, NEW_SINCE_0003) == rows_without_columns(before, NEW_SINCE_0003)
    engine.dispose()

    upgrade_database(url)
    engine = make_engine(url)
    assert current_revision(url) == "0004"
    marks = {"prelabelmark": ("*",)}  # dropped with their table: a job's resume record, not anyone's labels
    assert rows_without(engine, marks) == rows_without_columns(before, marks)
    assert schema_differences(engine) == []
    engine.dispose()
