"""SAM3 proposals in the Annotate tab: Find all <concept>, threshold, clicks and boxes on the overlay.

Find all runs `predict` once with the concept's name and keeps every instance scoring
>= PROPOSAL_FLOOR; they are saved at once as annotations with source "model" and their
score (the image becomes "proposed"), replacing the still-unreviewed model proposals of
that concept on the image. The threshold slider only hides proposals below it (no
model run). The backbone runs once per image: studio.models.cache holds its features.

Clicks (+ / -) and two box corners segment ONE object with SAM3's click tracker
(sam3_lora.interactive.segment_object, the ViT features shared with Find all): the
result replaces the selected instance as a model proposal when the sequence starts on it
(first click, or the box's centre, inside its mask), else it becomes a new instance,
which the following clicks then refine (its mask goes in as a prompt with all the clicks).
A lone first click is ambiguous: the tracker gives 3 candidates and "Other mask" (m)
puts the next one in.
Model errors (adapter deleted, phrase too long, weights unreadable) become a message
naming the cause; nothing saved is touched.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from app.store.adapters import AdapterNotFound
from app.store.annotations import RevisionConflict, delete_annotation, list_annotations, save_annotation
from app.store.masks import mask_to_rle
from app.store.proposals import proposer_label
from app.store.models import Annotation, Concept
from app.studio import Studio
from app.ui.annotate_edits import conflict_message
from app.ui.annotate_overlay import to_image_pixels
from app.ui.annotate_undo import change_of, push_undo
from app.ui.annotate_view import (
    DEFAULT_THRESHOLD, annotation_mask, concepts_by_id, copy_session, image_pixels, is_shown, open_image_row,
    render, select,
)
from app.ui.messages import count_of, refusal
from app.ui.proposal_choices import BASE_CHOICE, adapter_folder_of_choice
from sam3_lora.interactive import segment_object
from sam3_lora.predict import Instance, predict

logger = logging.getLogger(__name__)

PROPOSAL_FLOOR = 0.05  # kept from one Find all; the slider shows those >= its value without a model run
CLICK_FLOOR = 0.0  # a click asks for one object: take the best answer, however unsure
MODE_SELECT, MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX = "Select instance", "+ click", "− click", "Box corners"
CLICK_MODES = (MODE_SELECT, MODE_POSITIVE, MODE_NEGATIVE, MODE_BOX)


class ProposalError(ValueError):
    """The proposal model could not run; the message names the cause."""


def _model_name(choice: str | None) -> str:
    return "base SAM3" if choice in (None, "", BASE_CHOICE) else f"adapter #{choice}"


def proposal_model(studio: Studio, choice: str | None) -> tuple:
    """(model, tokenizer) of the chosen proposal model; ProposalError says why not."""
    try:
        folder = adapter_folder_of_choice(studio, choice)
    except AdapterNotFound:
        raise ProposalError(
            f"the proposal model {_model_name(choice)} no longer exists (deleted?); choose another under Proposal model"
        ) from None
    except ValueError as error:
        raise ProposalError(f"the proposal model {choice!r} is unusable: {error}") from None
    if folder is not None and not (folder / "adapter_config.json").is_file():
        raise ProposalError(f"the files of {_model_name(choice)} are missing from {folder.name}; choose another model")
    try:
        return studio.models.get(folder)
    except Exception as error:  # any load failure is reported, never a stack trace in the browser
        logger.exception("loading proposal model %s failed", choice)
        raise ProposalError(f"could not load {_model_name(choice)}: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


def _run_model(what: str, run) -> list[Instance]:
    """Call the model; ValueError (e.g. a phrase over 32 tokens) and any other failure -> ProposalError."""
    try:
        return run()
    except ValueError as error:
        raise ProposalError(f"{what}: {_first_line(error)}") from None
    except Exception as error:
        logger.exception("%s failed", what)
        raise ProposalError(f"{what} failed: {type(error).__name__}: {_first_line(error)}") from None


def _concept(concepts: dict[int, Concept], concept_id: Any) -> Concept:
    if concept_id in (None, "") or int(concept_id) not in concepts:
        raise ValueError("choose a concept first (add one under Projects & Data)")
    return concepts[int(concept_id)]


def find_all(
    studio: Studio, session: dict[str, Any], threshold: float | None, model_choice: str | None, concept_id: int | None
) -> tuple:
    """Run SAM3 with the concept's name on the open image, save the proposals, select the best one."""
    session = copy_session(session)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    try:
        image = open_image_row(studio, session)
        concept = _concept(concepts_by_id(studio, image.project_id), concept_id)
        model, tokenizer = proposal_model(studio, model_choice)
        pixels = image_pixels(studio, image)
        instances = _run_model(f"Find all {concept.name!r}", lambda: predict(
            model, tokenizer, pixels, concept.name, score_threshold=PROPOSAL_FLOOR, cache=studio.models.cache))
    except ValueError as error:
        return render(studio, session, threshold, refusal("Find all did not run", error), editor=False)
    changes, kept = [], 0
    for old in list_annotations(studio.engine, image.id):
        if old.source == "model" and old.concept_id == concept.id:
            try:
                changes.append(change_of(old, delete_annotation(studio.engine, old.id, old.revision, author="find all")))
            except (RevisionConflict, ValueError):  # someone is editing it right now: leave it be
                kept += 1
    replaced = len(changes)
    created, failure = [], ""
    for instance in instances:
        if not instance.mask.any():  # an empty mask is no instance (and the store refuses it)
            continue
        try:
            saved = save_annotation(studio.engine, image_id=image.id, concept_id=concept.id, rle=mask_to_rle(instance.mask),
                                    source="model", score=min(max(instance.score, 0.0), 1.0), author="find all",
                                    proposed_by=proposer_label(model_choice))
        except ValueError as error:  # e.g. the concept was deleted meanwhile: keep what is saved, say why
            failure = " " + refusal("the other proposals were not saved", error)
            break
        changes.append(change_of(None, saved))
        created.append(saved)
    push_undo(session, f"Find all {concept.name}", image.id, changes)
    select(session, created[0] if created else None)  # predict sorts by score: the first is the best
    message = _find_all_message(concept.name, model_choice, created, replaced, kept, threshold) + failure
    return render(studio, session, threshold, message)


def _find_all_message(name: str, model_choice: str | None, created: list, replaced: int, kept: int, threshold: float) -> str:
    if not created:
        message = f"Find all **{name}** ({_model_name(model_choice)}): no proposal scored {PROPOSAL_FLOOR} or more."
    else:
        above = sum(a.score >= threshold for a in created)
        message = (
            f"Find all **{name}** ({_model_name(model_choice)}): {count_of(len(created), 'proposal')}, scores "
            f"{created[-1].score:.2f}–{created[0].score:.2f}, {above} at or above the threshold {threshold:.2f}. "
            f"Selected the best, #{created[0].id}: correct it with the brush and Save (s), or Accept (a) / Reject (r)."
        )
    if replaced:
        message += f" Replaced {count_of(replaced, 'earlier unreviewed proposal')} of {name}."
    if kept:
        message += (f" {count_of(kept, 'proposal')} changed by someone else meanwhile "
                    f"{'was' if kept == 1 else 'were'} left as {'it is' if kept == 1 else 'they are'}.")
    return message


def change_threshold(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    """Show the proposals at or above the new threshold (no model run; the editor keeps its edit)."""
    session = copy_session(session)
    return render(studio, session, threshold, "", editor=False)


def clear_clicks(studio: Studio, session: dict[str, Any], threshold: float | None) -> tuple:
    session = copy_session(session)
    session["clicks"], session["corner"], session["box"] = [], None, None
    return render(studio, session, threshold, "Prompt clicks cleared.", editor=False, listing=False)


def _instance_at(studio: Studio, session: dict[str, Any], threshold: float, x: float, y: float):
    """The smallest shown instance covering pixel (x, y), or None."""
    hits = []
    for annotation in list_annotations(studio.engine, int(session["image_id"])):
        mask = annotation_mask(annotation)
        row, column = int(y), int(x)
        if is_shown(annotation, threshold, session.get("selected")) and 0 <= row < mask.shape[0] \
                and 0 <= column < mask.shape[1] and mask[row, column]:
            hits.append((annotation.area, annotation))
    return min(hits, key=lambda pair: pair[0])[1] if hits else None


def overlay_click(
    studio: Studio, session: dict[str, Any], threshold: float | None, mode: str | None,
    model_choice: str | None, concept_id: int | None, x: float, y: float,
) -> tuple:
    """A click at pixel (x, y) of the overlay picture (small images are shown enlarged: see
    annotate_overlay.to_image_pixels), by mode: select the instance there, add a + / - prompt
    click (and segment), or place a box corner (the second one runs the box prompt)."""
    session = copy_session(session)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    try:
        shown = open_image_row(studio, session)
    except ValueError as error:
        return render(studio, session, threshold, refusal("", error), editor=False)
    x, y = to_image_pixels(float(x), float(y), (shown.height, shown.width))
    if mode in (None, MODE_SELECT):
        hit = _instance_at(studio, session, threshold, x, y)
        if hit is None:
            return render(studio, session, threshold, f"No shown instance at ({x:.0f}, {y:.0f}).", editor=False)
        select(session, hit)
        return render(studio, session, threshold, f"Selected #{hit.id} (revision {hit.revision}).", listing=False)
    if mode == MODE_BOX and session.get("corner") is None:
        session["corner"] = [x, y]
        return render(studio, session, threshold, f"Box corner at ({x:.0f}, {y:.0f}): click the opposite corner.", editor=False)
    # the selected instance is refined by a click sequence that starts on it; one that starts elsewhere adds an instance
    starts = not session["clicks"] and session.get("box") is None
    anchor = ((session["corner"][0] + x) / 2, (session["corner"][1] + y) / 2) if mode == MODE_BOX else (x, y)
    target = _selected_covering(studio, session, anchor) if starts else _selected_covering(studio, session, None)
    if mode == MODE_BOX:
        (x0, y0), session["corner"] = session["corner"], None
        session["box"] = [min(x0, x), min(y0, y), max(x0, x) + 1, max(y0, y) + 1]  # both corner pixels inside
        session["clicks"] = [] if starts else session["clicks"]
    else:
        session["clicks"] = [*session["clicks"], [x, y, 1 if mode == MODE_POSITIVE else 0]]
    session["candidate"] = 0
    return segment_clicked(studio, session, threshold, model_choice, concept_id, target)


def segment_clicked(studio: Studio, session: dict[str, Any], threshold: float, model_choice: str | None,
                    concept_id: int | None, target: Annotation | None) -> tuple:
    """Run the click tracker on the session's clicks / box (+ `target`'s mask as a prompt) and save
    candidate number session["candidate"] (best predicted IoU first) into `target` or a new instance."""
    clicks, box = session["clicks"], session.get("box")
    points = [(cx, cy) for cx, cy, _ in clicks]
    labels = [label for _, _, label in clicks]
    if box is None and 1 not in labels:
        return render(studio, session, threshold, "Add a + click on the object first.", editor=False)
    try:
        image = open_image_row(studio, session)
        concept = _concept(concepts_by_id(studio, image.project_id), concept_id)
        model, _ = proposal_model(studio, model_choice)
        tracker = _run_model("loading the click tracker", studio.models.tracker)
        pixels = image_pixels(studio, image)
        # refining: the instance's current mask is a prompt too; the lone first click has none (multimask)
        mask = annotation_mask(target) if target is not None and (len(clicks) > 1 or box is not None) else None
        found = _run_model("segmenting the clicked object", lambda: segment_object(
            model, tracker, pixels, points, labels, box=box, mask=mask,
            cache=studio.models.cache, tracker_cache=studio.models.tracker_cache))
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot segment", error), editor=False)
    found = [inst for inst in found if inst.mask.any()]
    what = _prompt_words(labels, box)
    if not found:
        return render(studio, session, threshold, f"No object fits the {what}; move or add clicks.", editor=False)
    choice = int(session.get("candidate") or 0) % len(found)
    if len(found) > 1:
        what += f", candidate {choice + 1} of {len(found)} (Other mask: m)"
    return _save_refined(studio, session, threshold, image.id, concept, found[choice], what, target)


def other_candidate(studio: Studio, session: dict[str, Any], threshold: float | None,
                    model_choice: str | None, concept_id: int | None) -> tuple:
    """An ambiguous lone click has 3 candidate masks (part / object / group): put the next one into the instance."""
    session = copy_session(session)
    threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
    if len(session["clicks"]) != 1 or session.get("box") is not None:
        return render(studio, session, threshold, "Other mask needs a single + click: only its answer is ambiguous.",
                      editor=False)
    session["candidate"] = int(session.get("candidate") or 0) + 1
    return segment_clicked(studio, session, threshold, model_choice, concept_id, _selected_covering(studio, session, None))


def _prompt_words(labels: list[int], box: list[float] | None) -> str:
    words = [f"{labels.count(1)} + / {labels.count(0)} − clicks"] if labels else []
    if box is not None:
        words.append(f"box ({box[0]:.0f}, {box[1]:.0f})–({box[2]:.0f}, {box[3]:.0f})")
    return " and ".join(words)


def _selected_covering(studio: Studio, session: dict[str, Any], point: tuple[float, float] | None) -> Annotation | None:
    """The selected annotation if it covers image pixel `point` (None: whatever it covers), else None."""
    if session.get("selected") is None:
        return None
    selected = next((a for a in list_annotations(studio.engine, int(session["image_id"])) if a.id == session["selected"]), None)
    if selected is None or point is None:
        return selected
    mask = annotation_mask(selected)
    row, column = int(point[1]), int(point[0])
    return selected if 0 <= row < mask.shape[0] and 0 <= column < mask.shape[1] and mask[row, column] else None


def _save_refined(studio: Studio, session: dict[str, Any], threshold: float, image_id: int, concept: Concept,
                  instance: Instance, what: str, before: Annotation | None) -> tuple:
    """The refined instance replaces `before` (as a model proposal) or, with before None, becomes a new one."""
    score = min(max(instance.score, 0.0), 1.0)
    try:
        saved = save_annotation(
            studio.engine, image_id=image_id, concept_id=before.concept_id if before else concept.id,
            rle=mask_to_rle(np.asarray(instance.mask, dtype=bool)), annotation_id=before.id if before else None,
            base_revision=session["base_revision"] if before else None, source="model", score=score,
        )
    except RevisionConflict as conflict:
        session["base_revision"] = conflict.current_revision
        return render(studio, session, threshold, conflict_message(conflict, "Click"), editor=False)
    except ValueError as error:
        return render(studio, session, threshold, refusal("cannot save the refined instance", error), editor=False)
    push_undo(session, f"Refine #{saved.id}" if before else f"Add #{saved.id}", image_id, [change_of(before, saved)])
    prompt = {key: session.get(key) for key in ("clicks", "corner", "box", "candidate")}
    select(session, saved)
    session.update(prompt)  # further clicks refine the same instance
    verb = "Refined" if before else "Added"
    return render(studio, session, threshold,
                  f"{verb} #{saved.id} from the {what} (score {score:.2f}); it is a proposal until you Accept (a).")
