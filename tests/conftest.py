from __future__ import annotations

from collections.abc import Generator, Iterator

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


@pytest.fixture(autouse=True, scope="module")
def _close_sdk_sessions() -> Iterator[None]:
    """Close the HTTP sessions the Alibaba SDKs cache per ``host:port`` for the whole process.

    Each module starts its own servers on fresh ports, so those sessions (and their pooled
    keep-alive sockets) are dead weight afterwards; left alone they are garbage-collected in
    some later test as "unclosed socket" warnings, which ``filterwarnings = error`` makes fail.
    """
    yield
    from darabonba.core import DaraCore
    from Tea.core import TeaCore

    for cache in (TeaCore._sessions, DaraCore._sessions):
        for session in cache.values():
            session.close()
        cache.clear()


@pytest.fixture(autouse=True, scope="session")
def _stop_leftover_servers() -> Iterator[None]:
    """Stop every ``livesnap serve`` a test started and did not stop (e.g. after a failure)."""
    yield
    for server in list(service.RUNNING):
        server.stop(timeout=5)
