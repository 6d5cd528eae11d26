"""UI-test hooks: each test item gets rep_<phase> (the pytest report), so a browser
fixture can save a screenshot when the test body failed; a failed test's report carries
the tail of every studio log in its tmp_path (tests.ui.studio_process writes them there),
so a failure on CI shows what the server did."""
from __future__ import annotations

from pathlib import Path

import pytest

LOG_TAIL_CHARS = 20_000


def studio_log_tails(tmp_path: Path) -> list[tuple[str, str]]:
    """(section title, last LOG_TAIL_CHARS of the log) for each studio-<port>.log under tmp_path."""
    return [(f"studio log {log.name}", log.read_text(errors="replace")[-LOG_TAIL_CHARS:])
            for log in sorted(tmp_path.glob("studio-*.log"))]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
    if report.failed and report.when == "call" and isinstance(tmp_path, Path):
        report.sections.extend(studio_log_tails(tmp_path))
    return report
