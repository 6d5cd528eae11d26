"""Names from users and files are shown as text: a `|` in a concept name keeps the Train
summary table's columns, and a COCO file_name made of HTML stays text in Annotate."""
from __future__ import annotations

from app.store.dataset_stats import ConceptCount, DatasetSummary
from app.ui.messages import escape_markdown, refusal
from app.ui.train_summary import summary_markdown


def test_a_pipe_in_a_concept_name_keeps_the_table_columns():
    summary = DatasetSummary({"train": 3, "val": 1}, 2, [ConceptCount(1, "crack | wide", 4, 1)])
    row = next(line for line in summary_markdown(summary).splitlines() if "crack" in line)
    assert row == "| `crack \\| wide` | 4 | 1 |"
    assert row.replace("\\|", "").count("|") == 4, "four cell borders: three columns"


def test_html_and_markdown_in_names_are_escaped():
    shown = escape_markdown("<img src=x onerror=alert(1)>_*[x](y)#|&")
    assert shown == "\\<img src=x onerror=alert(1)\\>\\_\\*\\[x\\](y)\\#\\|\\&"
    assert refusal("cannot import", "bad <b>name</b>") == "**Not done:** cannot import: bad \\<b\\>name\\</b\\>."
