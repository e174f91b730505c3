"""pytest fixtures over :mod:`tests.support.servers` (loaded from ``tests/conftest.py``).

Session-scoped servers are started lazily, the first time a test asks for them, so unit tests
that use none of them never pay for nginx or PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.seaweed import SeaweedServer
from tests.support.servers import (
    PostgresServer,
    Publisher,
    RtmpOrigin,
    make_clip,
    wait_stream_live,
)


class ClipFactory(Protocol):
    """Signature of the ``make_test_clip`` fixture."""

    def __call__(self, kind: str = "720p", *, seconds: int = 10) -> Path: ...


class PublisherFactory(Protocol):
    """Signature of the ``publisher_factory`` fixture."""

    def __call__(
        self, clip: Path | None = None, key: str | None = None, *, wait: bool = True
    ) -> Publisher: ...


@pytest.fixture(scope="session")
def rtmp_origin() -> Iterator[RtmpOrigin]:
    """One nginx-rtmp origin for the whole session (application ``live``)."""
    with RtmpOrigin() as origin:
        yield origin


@pytest.fixture(scope="session")
def make_test_clip() -> ClipFactory:
    """``make_test_clip(kind="720p", *, seconds=10) -> Path``: a cached pre-encoded FLV clip."""

    def factory(kind: str = "720p", *, seconds: int = 10) -> Path:
        return make_clip(kind, seconds=seconds)

    return factory


@pytest.fixture(scope="session")
def clip_720p(make_test_clip: ClipFactory) -> Path:
    """10 s of 1280x720 testsrc2, H.264 with B-frames, GOP 2 s."""
    return make_test_clip("720p")


@pytest.fixture
def publisher_factory(
    request: pytest.FixtureRequest, rtmp_origin: RtmpOrigin
) -> Iterator[PublisherFactory]:
    """``publisher_factory(clip=None, key=None, *, wait=True) -> Publisher``.

    Starts an ffmpeg publisher looping ``clip`` (default: the 720p clip) into
    ``rtmp_origin.url(key)`` (default key: a fresh random one) and, with ``wait``, returns only
    once ``/stat`` shows the stream live. Read ``publisher.url`` to play it. Every publisher
    made here is stopped at teardown.
    """
    started: list[Publisher] = []

    def factory(
        clip: Path | None = None, key: str | None = None, *, wait: bool = True
    ) -> Publisher:
        clip_path = clip if clip is not None else request.getfixturevalue("clip_720p")
        stream_key = key if key is not None else f"test-{uuid.uuid4().hex[:10]}"
        publisher = Publisher(clip_path, rtmp_origin.url(stream_key))
        started.append(publisher)
        publisher.start()
        if wait:
            try:
                wait_stream_live(rtmp_origin, stream_key, publisher=publisher)
            except TimeoutError as exc:
                raise TimeoutError(f"{exc}; ffmpeg said: {publisher.errors!r}") from None
        return publisher

    yield factory
    for publisher in started:
        publisher.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL cluster for the whole session."""
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """SQLAlchemy async URL (``postgresql+asyncpg://…``) of a fresh, empty database."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    """One SeaweedFS S3 server for the session (auth on, loopback, bucket ``snapshots``).

    Tests that stop the store start their own ``SeaweedServer`` instead of stopping this one.
    """
    with SeaweedServer() as server:
        yield server
