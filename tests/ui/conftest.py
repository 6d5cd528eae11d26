"""UI-test hooks: each test item gets rep_<phase> (the pytest report), so a browser
fixture can save a screenshot when the test body failed."""
from __future__ import annotations

import pytest


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
