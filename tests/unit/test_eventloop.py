"""The event loop a livesnap process runs on: uvloop where installed, asyncio's if asked."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from pydantic import ValidationError

import livesnap.config
from livesnap import eventloop
from livesnap.config import ServerSettings


async def loop_seen() -> tuple[str, type[asyncio.AbstractEventLoop]]:
    """What the running loop calls itself, and what it is."""
    await asyncio.sleep(0)  # a turn of the loop, not only the coroutine's first step
    return eventloop.running_loop_name(), type(asyncio.get_running_loop())


def test_uvloop_is_installed_with_livesnap():
    # a dependency on Linux: auto means uvloop here
    assert eventloop.uvloop_available()
    assert eventloop.resolve("auto") == "uvloop"


def test_auto_and_uvloop_run_on_uvloop():
    for choice in ("auto", "uvloop"):
        name, kind = eventloop.run(loop_seen(), choice)
        assert name == "uvloop"
        assert issubclass(kind, uvloop.Loop)


def test_asyncio_runs_on_the_standard_library_loop():
    name, kind = eventloop.run(loop_seen(), "asyncio")
    assert name == "asyncio"
    assert not issubclass(kind, uvloop.Loop)
    assert issubclass(kind, asyncio.BaseEventLoop)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert eventloop.resolve("auto") == "asyncio"
    assert eventloop.run(loop_seen(), "auto")[0] == "asyncio"


def test_run_returns_the_result_and_raises_the_error():
    async def fails() -> None:
        raise LookupError("from the coroutine")

    async def answers() -> int:
        await asyncio.sleep(0)
        return 42

    assert eventloop.run(answers(), "uvloop") == 42
    with pytest.raises(LookupError, match="from the coroutine"):
        eventloop.run(fails(), "uvloop")


def test_the_setting_defaults_to_auto_and_takes_the_environment(monkeypatch):
    assert ServerSettings().event_loop == "auto"
    monkeypatch.setenv("LIVESNAP_EVENT_LOOP", "asyncio")
    assert ServerSettings().event_loop == "asyncio"


def test_an_unknown_loop_is_refused(monkeypatch):
    monkeypatch.setenv("LIVESNAP_EVENT_LOOP", "trio")
    with pytest.raises(ValidationError, match="event_loop"):
        ServerSettings()


def test_asking_for_uvloop_where_it_is_missing_says_so(monkeypatch):
    monkeypatch.setattr(livesnap.config, "uvloop_available", lambda: False)
    with pytest.raises(ValidationError, match="uvloop is not installed"):
        ServerSettings(event_loop="uvloop")
    assert ServerSettings(event_loop="auto").event_loop == "auto"
