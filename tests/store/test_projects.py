"""Projects, concepts and the gallery page: validation, uniqueness, colours, and an
image_page that counts only live annotations, pages correctly and is one query."""
from __future__ import annotations

import pytest
from sqlalchemy import event

from app.store.annotations import delete_annotation, list_annotations, save_annotation
from app.store.projects import (
    CONCEPT_PALETTE, MAX_NAME_LENGTH, add_concept, count_images, create_project, delete_concept, get_image,
    image_page, list_concepts, list_projects, rename_concept, set_image_split, set_image_status,
)
from tests.store.conftest import add_image, box_rle


def test_projects_are_named_uniquely(engine):
    first = create_project(engine, "  street   signs ")
    assert first.name == "street signs"
    create_project(engine, "bridges")
    assert [p.name for p in list_projects(engine)] == ["street signs", "bridges"]
    with pytest.raises(ValueError, match="a project named 'street signs' already exists"):
        create_project(engine, "street signs")
    with pytest.raises(ValueError, match="project name is empty"):
        create_project(engine, "   ")
    with pytest.raises(ValueError, match=f"at most {MAX_NAME_LENGTH}"):
        create_project(engine, "x" * (MAX_NAME_LENGTH + 1))
    assert len(list_projects(engine)) == 2


def test_concept_phrases_are_trimmed_bounded_and_unique_per_project(engine):
    project = create_project(engine, "roofs")
    other = create_project(engine, "walls")
    crack = add_concept(engine, project.id, "  hairline \t crack ")
    assert crack.name == "hairline crack"
    assert add_concept(engine, project.id, "y" * MAX_NAME_LENGTH).name == "y" * MAX_NAME_LENGTH
    with pytest.raises(ValueError, match="concept phrase is empty"):
        add_concept(engine, project.id, " ")
    with pytest.raises(ValueError, match=f"{MAX_NAME_LENGTH + 1} characters long"):
        add_concept(engine, project.id, "y" * (MAX_NAME_LENGTH + 1))
    with pytest.raises(ValueError, match="already has a concept named 'hairline crack'"):
        add_concept(engine, project.id, "Hairline Crack")
    with pytest.raises(ValueError, match="project 999999 does not exist"):
        add_concept(engine, 999999, "crack")
    assert add_concept(engine, other.id, "hairline crack").project_id == other.id
    assert [c.name for c in list_concepts(engine, project.id)] == ["hairline crack", "y" * MAX_NAME_LENGTH]


def test_concept_colours_come_from_the_palette_without_repeats(engine):
    project = create_project(engine, "palette")
    chosen = add_concept(engine, project.id, "chosen", color="#E6194B")
    assert chosen.color == "#e6194b"
    with pytest.raises(ValueError, match="not of the form #rrggbb"):
        add_concept(engine, project.id, "bad", color="red")
    automatic = [add_concept(engine, project.id, f"thing {i}").color for i in range(len(CONCEPT_PALETTE) - 1)]
    assert set(automatic) == set(CONCEPT_PALETTE) - {"#e6194b"}  # the taken colour is skipped, none repeats
    assert add_concept(engine, project.id, "one more").color in CONCEPT_PALETTE


def test_rename_and_delete_concept(engine):
    project = create_project(engine, "roofs")
    crack = add_concept(engine, project.id, "crack")
    moss = add_concept(engine, project.id, "moss")
    image = add_image(engine, project.id)
    kept = save_annotation(engine, image_id=image.id, concept_id=crack.id, rle=box_rle(30, 40, 0, 0, 2, 2))
    gone = save_annotation(engine, image_id=image.id, concept_id=moss.id, rle=box_rle(30, 40, 4, 4, 2, 2))
    save_annotation(engine, image_id=image.id, concept_id=moss.id, rle=box_rle(30, 40, 8, 8, 2, 2))
    delete_annotation(engine, gone.id, base_revision=1)

    renamed = rename_concept(engine, crack.id, " roof crack ", color="#00FF00")
    assert (renamed.name, renamed.color) == ("roof crack", "#00ff00")
    with pytest.raises(ValueError, match="already has a concept named 'moss'"):
        rename_concept(engine, crack.id, "MOSS")
    assert rename_concept(engine, crack.id, "Roof Crack").name == "Roof Crack"  # its own name in other case is fine

    assert delete_concept(engine, moss.id) == 1  # one live annotation went with it (plus the deleted one)
    assert [c.name for c in list_concepts(engine, project.id)] == ["Roof Crack"]
    assert [a.id for a in list_annotations(engine, image.id, include_deleted=True)] == [kept.id]
    with pytest.raises(ValueError, match=f"concept {moss.id} does not exist"):
        delete_concept(engine, moss.id)


def test_image_page_counts_live_annotations_and_pages_in_upload_order(engine):
    project = create_project(engine, "gallery")
    neighbour = create_project(engine, "neighbour")
    concept = add_concept(engine, project.id, "dent")
    add_image(engine, neighbour.id)
    images = [add_image(engine, project.id) for _ in range(7)]
    for index, image in enumerate(images):  # image i gets i annotations, the first of them deleted when i >= 2
        saved = [save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, k, k, 2, 2))
                 for k in range(index)]
        if index >= 2:
            delete_annotation(engine, saved[0].id, base_revision=1)
    expected_counts = [0, 1, 1, 2, 3, 4, 5]

    whole = image_page(engine, project.id, offset=0, limit=100)
    assert [row.image.id for row in whole] == [image.id for image in images]
    assert [row.annotation_count for row in whole] == expected_counts
    pages = [image_page(engine, project.id, offset=offset, limit=3) for offset in (0, 3, 6)]
    assert [len(page) for page in pages] == [3, 3, 1]
    assert [row for page in pages for row in page] == whole
    assert image_page(engine, project.id, offset=7, limit=3) == []
    assert count_images(engine, project.id) == 7 and count_images(engine, neighbour.id) == 1

    set_image_status(engine, images[0].id, "unlabelled")
    unlabelled = image_page(engine, project.id, offset=0, limit=10, status="unlabelled")
    assert [row.image.id for row in unlabelled] == [images[0].id]
    assert count_images(engine, project.id, status="reviewed") == 6
    with pytest.raises(ValueError, match="status 'done' is not one of"):
        image_page(engine, project.id, offset=0, limit=10, status="done")
    with pytest.raises(ValueError, match="offset must be >= 0 and limit >= 1"):
        image_page(engine, project.id, offset=-1, limit=10)


def test_image_page_is_a_single_query(engine):
    project = create_project(engine, "one query")
    concept = add_concept(engine, project.id, "dent")
    for _ in range(5):
        image = add_image(engine, project.id)
        save_annotation(engine, image_id=image.id, concept_id=concept.id, rle=box_rle(30, 40, 0, 0, 2, 2))
    statements: list[str] = []

    def remember(_connection, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", remember)
    try:
        rows = image_page(engine, project.id, offset=1, limit=3)
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    assert [row.annotation_count for row in rows] == [1, 1, 1]
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1, statements


def test_image_split_status_and_lookup(engine):
    project = create_project(engine, "splits")
    image = add_image(engine, project.id)
    assert set_image_split(engine, image.id, "val").split == "val"
    assert set_image_status(engine, image.id, "proposed").status == "proposed"
    fetched = get_image(engine, image.id)
    assert (fetched.split, fetched.status, fetched.width, fetched.height) == ("val", "proposed", 40, 30)
    with pytest.raises(ValueError, match=f"image {image.id}: split 'test' is not one of train, val"):
        set_image_split(engine, image.id, "test")
    with pytest.raises(ValueError, match="status 'maybe'"):
        set_image_status(engine, image.id, "maybe")
    with pytest.raises(ValueError, match="image 999999 does not exist"):
        set_image_split(engine, 999999, "train")
    with pytest.raises(ValueError, match="image 999999 does not exist"):
        get_image(engine, 999999)
