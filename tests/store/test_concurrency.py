"""Real processes on one database: simultaneous saves at the same revision (one wins,
one gets RevisionConflict, no "database is locked", both attempts in history), and
readers that keep working while another process holds a long write transaction."""
from __future__ import annotations

import multiprocessing
import time

import pytest

from app.store.annotations import RevisionConflict, annotation_history, get_annotation, save_annotation
from app.store.db import make_engine, write_session
from app.store.models import Concept
from app.store.projects import add_concept, create_project, image_page, list_concepts
from tests.store.conftest import add_image, box_rle, engine_url

ROUNDS = 20
SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters: no inherited connections or locks


def race_saver(url: str, name: str, left: int, ids: tuple[int, int, int], bases, barrier, results) -> None:
    """For each base revision received: wait for the other saver, then save at that base."""
    image_id, concept_id, annotation_id = ids
    engine = make_engine(url)
    for base_revision in iter(bases.get, None):
        barrier.wait(timeout=60)
        try:
            save_annotation(engine, image_id=image_id, concept_id=concept_id, rle=box_rle(30, 40, 0, left, 5, 5),
                            annotation_id=annotation_id, base_revision=base_revision, author=name)
            results.put((name, "saved"))
        except RevisionConflict as conflict:
            results.put((name, f"conflict {conflict.base_revision}->{conflict.current_revision}"))
        except Exception as error:  # "database is locked" or anything else: reported, and fails the test
            results.put((name, f"error {error!r}"))
    engine.dispose()


def test_simultaneous_saves_at_the_same_revision(engine):
    project = create_project(engine, "race")
    concept = add_concept(engine, project.id, "dent")
    image = add_image(engine, project.id)
    annotation = save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, 0, 0, 3, 3))
    ids = (image.id, concept.id, annotation.id)
    barrier, results = SPAWN.Barrier(2), SPAWN.Queue()
    savers = {}
    for name, left in (("left", 0), ("right", 20)):
        bases = SPAWN.Queue()
        process = SPAWN.Process(target=race_saver, args=(engine_url(engine), name, left, ids, bases, barrier, results))
        process.start()
        savers[name] = (process, bases)
    try:
        for round_number in range(ROUNDS):
            base_revision = get_annotation(engine, annotation.id).revision
            assert base_revision == 1 + round_number
            for _, bases in savers.values():
                bases.put(base_revision)
            outcomes = dict(results.get(timeout=120) for _ in savers)
            winners = [name for name, outcome in outcomes.items() if outcome == "saved"]
            assert len(winners) == 1, outcomes
            [loser] = set(outcomes) - set(winners)
            assert outcomes[loser] == f"conflict {base_revision}->{base_revision + 1}", outcomes
    finally:
        for process, bases in savers.values():
            bases.put(None)
        for process, _ in savers.values():
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    assert [process.exitcode for process, _ in savers.values()] == [0, 0]

    assert get_annotation(engine, annotation.id).revision == 1 + ROUNDS
    history = annotation_history(engine, annotation.id)
    saved = [row for row in history if row.outcome == "saved"]
    refused = [row for row in history if row.outcome == "conflict"]
    assert [row.revision for row in saved] == list(range(1, ROUNDS + 2))
    assert sorted(row.revision for row in refused) == list(range(1, ROUNDS + 1))  # one refused attempt per round
    assert {row.author for row in saved[1:]} | {row.author for row in refused} <= {"left", "right"}


def long_writer(url: str, project_id: int, holding, committed) -> None:
    """Add a concept inside a write transaction held open for 2 s."""
    engine = make_engine(url)
    with write_session(engine) as session:
        session.add(Concept(project_id=project_id, name="written slowly"))
        session.flush()
        holding.set()
        time.sleep(2.0)
    committed.set()
    engine.dispose()


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_readers_and_a_queued_writer_succeed_while_a_write_transaction_is_open(engine):
    project = create_project(engine, "busy")
    concept = add_concept(engine, project.id, "dent")
    image = add_image(engine, project.id)
    save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, 0, 0, 3, 3))
    holding, committed = SPAWN.Event(), SPAWN.Event()
    writer = SPAWN.Process(target=long_writer, args=(engine_url(engine), project.id, holding, committed))
    writer.start()
    try:
        assert holding.wait(timeout=60), "the writer never opened its transaction"
        reads_during_hold = 0
        read_until = time.monotonic() + 1.0
        while time.monotonic() < read_until:
            names = [c.name for c in list_concepts(engine, project.id)]
            [row] = image_page(engine, project.id, offset=0, limit=10)
            assert names == ["dent"] and row.annotation_count == 1  # uncommitted work is invisible
            reads_during_hold += 1
        assert not committed.is_set() and reads_during_hold >= 3
        # a write queued behind the open transaction waits for it (busy_timeout) instead of failing
        add_concept(engine, project.id, "queued write")
        assert committed.wait(timeout=10)
    finally:
        writer.join(timeout=60)
    assert writer.exitcode == 0
    assert [c.name for c in list_concepts(engine, project.id)] == ["dent", "written slowly", "queued write"]
