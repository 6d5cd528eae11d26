"""The review queue: a project's proposed images, the ones the model is least sure of first.

A person's next correction is most useful where the model hesitates. For image i with
live unreviewed proposals P_i (source "model", not deleted), each with score s, and the
presence p_c of each concept c from the image's latest pre-label run (PrelabelMark),
at the review threshold t (the Annotate slider, clamped to [0.01, 0.99]):

    u_score(s)    = 1 - |s - t| / max(t, 1 - t)      1 at the threshold, 0 at a sure 0 or 1
    u_presence(p) = 1 - 2 |p - 0.5|                  1 when "is the concept here?" is a coin toss
    uncertainty_i = max( max_{a in P_i} u_score(s_a),  max_c u_presence(p_c) )     in [0, 1]

An image without proposals or presence scores has uncertainty 0. The queue is the
"proposed" images by decreasing uncertainty, ties by id (upload order). Reviewing an
image (any human save) takes it out of the queue, so "next" after a review is the head
of the queue, and "next" without one is the image after it in the queue.
"""
from __future__ import annotations

import json

from sqlalchemy import Engine, false, func, select

from app.store.db import read_session
from app.store.models import Annotation, Image, PrelabelMark

__all__ = ["LEAST_CERTAIN", "image_uncertainty", "review_queue", "queue_neighbour", "least_certain_proposal"]

LEAST_CERTAIN = "least certain first"  # the Annotate filter choice that walks this queue


MIN_THRESHOLD, MAX_THRESHOLD = 0.01, 0.99  # the slider's ends rank by closeness to that end


def _check_threshold(threshold: float) -> float:
    """t in [0, 1], clamped to [MIN_THRESHOLD, MAX_THRESHOLD] (u_score needs 0 < t < 1)."""
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"review threshold must be between 0 and 1, got {threshold}")
    return min(max(threshold, MIN_THRESHOLD), MAX_THRESHOLD)


def image_uncertainty(scores: list[float], presence: list[float], threshold: float) -> float:
    """uncertainty_i of the module docstring for one image's proposal scores and concept presences."""
    threshold = _check_threshold(threshold)
    width = max(threshold, 1.0 - threshold)
    terms = [1.0 - abs(s - threshold) / width for s in scores] + [1.0 - 2.0 * abs(p - 0.5) for p in presence]
    return max([0.0, *terms])


def review_queue(engine: Engine, project_id: int, threshold: float) -> list[tuple[int, float]]:
    """[(image_id, uncertainty), ...] of the project's "proposed" images, least certain first."""
    threshold = _check_threshold(threshold)
    with read_session(engine) as session:
        image_ids = list(session.scalars(select(Image.id).where(Image.project_id == project_id,
                                                                 Image.status == "proposed")))
        if not image_ids:
            return []
        closest = dict(session.execute(  # the score nearest the threshold decides u_score's maximum
            select(Annotation.image_id, func.min(func.abs(Annotation.score - threshold)))
            .where(Annotation.image_id.in_(image_ids), Annotation.source == "model", Annotation.deleted == false(),
                   Annotation.score.is_not(None))
            .group_by(Annotation.image_id)).all())
        latest = (select(PrelabelMark.image_id, func.max(PrelabelMark.id).label("mark_id"))
                  .where(PrelabelMark.image_id.in_(image_ids), PrelabelMark.skipped == false())
                  .group_by(PrelabelMark.image_id).subquery())
        presence = dict(session.execute(select(PrelabelMark.image_id, PrelabelMark.presence_json)
                                        .join(latest, PrelabelMark.id == latest.c.mark_id)).all())
    ranked = []
    for image_id in image_ids:
        scores = [threshold + closest[image_id]] if image_id in closest else []  # same |s - t| as the nearest score
        ranked.append((image_id, image_uncertainty(scores, list(json.loads(presence.get(image_id, "{}")).values()),
                                                   threshold)))
    return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))


def queue_neighbour(engine: Engine, project_id: int, image_id: int | None, step: int, threshold: float) -> int | None:
    """The image after (step > 0) / before (step < 0) `image_id` in the review queue; the head of the
    queue when image_id is None or has left it (reviewed). None when there is no such image."""
    if step == 0:
        raise ValueError("step must be +1 (next) or -1 (previous), got 0")
    order = [image for image, _ in review_queue(engine, project_id, threshold)]
    if not order:
        return None
    if image_id not in order:
        return order[0]
    position = order.index(image_id) + (1 if step > 0 else -1)
    return order[position] if 0 <= position < len(order) else None


def least_certain_proposal(engine: Engine, image_id: int, threshold: float) -> Annotation | None:
    """The image's live unreviewed model proposal whose score is nearest the threshold (max u_score), or None."""
    threshold = _check_threshold(threshold)
    with read_session(engine) as session:
        return session.scalars(
            select(Annotation).where(Annotation.image_id == image_id, Annotation.source == "model",
                                     Annotation.deleted == false(), Annotation.score.is_not(None))
            .order_by(func.abs(Annotation.score - threshold), Annotation.id).limit(1)).first()
