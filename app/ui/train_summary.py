"""The Train tab's dataset summary: what a fine-tune of the project would learn from, and
what is wrong with it (warnings). Plain markdown from app.store.dataset_stats."""
from __future__ import annotations

from sqlalchemy import Engine

from app.store.dataset_stats import DatasetSummary, dataset_summary

# Below this many labelled images a fine-tune mostly memorises; ten is already very few
# (few-shot detection benchmarks start at 10 shots per class).
MIN_LABELLED_IMAGES = 10


def _escape(name: str) -> str:
    """A name as a code span; `|` escaped, since GFM splits table cells on it even inside code spans."""
    return "`" + " ".join(str(name).replace("`", "'").replace("|", "\\|").split()) + "`"


def dataset_warnings(summary: DatasetSummary) -> list[str]:
    """One line per problem, most blocking first."""
    warnings = []
    if not summary.concepts:
        warnings.append("The project has no concepts: add one in Projects & Data, then label it.")
    elif summary.instances == 0:
        warnings.append("Nothing to train on yet: no human-drawn, accepted or imported mask "
                        "(proposals count once accepted in Annotate).")
    for concept in summary.concepts:
        if summary.instances and concept.instances == 0:
            warnings.append(f"Concept {_escape(concept.name)} has no examples: the fine-tune cannot learn it "
                            "(label some, or delete the concept).")
        elif summary.instances and concept.train_instances == 0:
            warnings.append(f"Concept {_escape(concept.name)} has no training example ({concept.train_instances} train, "
                            f"{concept.val_instances} val): the fine-tune cannot learn it (label it on a `train` image).")
    if summary.images_by_split["val"] == 0:
        warnings.append("No image is marked `val`: a random `data.val_fraction` of the training images is "
                        "held out for validation (mark images `val` in Projects & Data to choose them).")
    elif summary.instances:
        for concept in summary.concepts:
            if concept.train_instances and not concept.val_instances:
                warnings.append(f"Concept {_escape(concept.name)} has no example on a `val` image: "
                                "its mAP is not measured.")
    if 0 < summary.labelled_images < MIN_LABELLED_IMAGES:
        warnings.append(f"Only {summary.labelled_images} labelled image(s): expect a noisy adapter; "
                        f"{MIN_LABELLED_IMAGES} or more are advised.")
    return warnings


def summary_markdown(summary: DatasetSummary) -> str:
    splits = summary.images_by_split
    lines = [
        f"**{summary.images} images** ({splits['train']} train · {splits['val']} val), "
        f"{summary.labelled_images} with labels · **{summary.instances} instances** used for training",
        "",
    ]
    if summary.concepts:
        lines += ["| Concept | train | val |", "|---|---:|---:|"]
        lines += [f"| {_escape(c.name)} | {c.train_instances} | {c.val_instances} |" for c in summary.concepts]
        lines.append("")
    if summary.pending_proposals:
        lines.append(f"{summary.pending_proposals} model proposal(s) await review in Annotate; "
                     "they are not used until accepted.")
        lines.append("")
    lines += [f"- ⚠️ {warning}" for warning in dataset_warnings(summary)]
    return "\n".join(lines).rstrip()


def project_summary(engine: Engine, project_id: int | None) -> str:
    if project_id in (None, ""):
        return "Choose a project in Projects & Data."
    return summary_markdown(dataset_summary(engine, int(project_id)))
