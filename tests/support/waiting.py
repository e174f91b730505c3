"""Polling for the tests that drive real servers: wait for a condition, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str, step: float = 0.5,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call ``predicate`` every ``step`` s until it returns something truthy, and return that.

    After ``timeout`` s, fail with ``what``, the last value and ``detail()`` if given.
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step)
    extra = f"; {detail()}" if detail else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r}){extra}")
