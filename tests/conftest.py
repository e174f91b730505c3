from __future__ import annotations

from collections.abc import Generator

import pytest

from tests.support import service

pytest_plugins = ["tests.support.fixtures"]

LOG_TAIL = 12_000  # characters of each server log shown with a failure


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every ``livesnap serve`` log the test started to its failure report,
    so a failure seen only in CI says what the server was doing."""
    report = yield
    if report.failed:
        for server in service.STARTED:
            report.sections.append((f"livesnap serve log ({server.log_path.name})",
                                    server.log()[-LOG_TAIL:]))
    if call.when == "teardown":
        service.STARTED.clear()
    return report
