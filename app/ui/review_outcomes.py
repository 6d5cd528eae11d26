"""The Models tab's "Proposals reviewed" table: per proposing model (base SAM3, each adapter) and
concept, how many proposals people accepted unchanged, edited, rejected (app.store.proposal_outcomes).
A rising accepted share from one adapter to the next is labelling getting faster."""
from __future__ import annotations

from typing import Any

from app.store.adapters import list_adapters
from app.store.proposal_outcomes import accepted_share, proposal_outcomes
from app.studio import Studio
from app.ui.messages import escape_markdown

HEADER = ["| model | concept | accepted unchanged | edited | rejected | accepted share |", "|---|---|---:|---:|---:|---:|"]


def _model_order(label: str) -> tuple[int, str]:
    """base first, then adapters by id."""
    if label == "base":
        return (-1, label)
    return (int(label.split(":", 1)[1]), label) if label.startswith("adapter:") and label[8:].isdigit() else (10**9, label)


def outcomes_markdown(studio: Studio, project_id: Any) -> str:
    """Markdown table (HEADER) of the project's review outcomes, or a line saying there are none yet."""
    if project_id in (None, ""):
        return ""
    outcomes = proposal_outcomes(studio.engine, int(project_id))
    if not outcomes:
        return "No proposal has been reviewed yet: accept, edit or reject proposals in Annotate to see how each model does."
    names = {f"adapter:{a.id}": f"{a.name} (#{a.id})" for a in list_adapters(studio.engine, int(project_id))}
    lines = ["**Proposals reviewed** (per model that proposed them)", "", *HEADER]
    for label in sorted(outcomes, key=_model_order):
        model = "base SAM3" if label == "base" else names.get(label, f"{label} (deleted)")
        for concept, counts in sorted(outcomes[label].items()):
            share = accepted_share(counts)
            lines.append(f"| {escape_markdown(model)} | {escape_markdown(concept)} | {counts['accepted']} | "
                         f"{counts['edited']} | {counts['rejected']} | {'-' if share is None else f'{share:.0%}'} |")
    return "\n".join(lines)
