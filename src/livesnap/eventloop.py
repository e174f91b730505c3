"""The event loop a livesnap process runs its asyncio code on.

``uvloop`` (libuv, written in Cython) runs the same asyncio code with less Python per loop
turn: scheduling a callback, waking the loop from another thread, a socket's readiness. A
capture's way from its reader thread to its stored objects, record and callback takes about
twenty such turns, so the loop's own cost is a visible share of what the service adds to the
capture itself (docs/performance.md, "The event loop"). ``auto`` uses uvloop where it is
installed (a dependency on Linux and macOS) and asyncio's own loop elsewhere; ``asyncio``
keeps the standard library's loop.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoopChoice = Literal["auto", "uvloop", "asyncio"]
LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: EventLoopChoice) -> Literal["uvloop", "asyncio"]:
    """Which loop ``choice`` means on this machine."""
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    return choice


def loop_factory(choice: EventLoopChoice) -> LoopFactory | None:
    """A new loop of the kind ``choice`` means; None: asyncio's default."""
    if resolve(choice) == "asyncio":
        return None
    import uvloop

    factory: LoopFactory = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``choice`` means."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: what the running loop is (for logs and status)."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
