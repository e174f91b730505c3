"""The snapshot sink protocol, the upload queue in front of it, and the router per target.

The capture session never waits for object storage: it hands each capture to the route's
``UploadQueue`` (an ``Upload``: the JPEG, its object keys, and what to call once it is stored)
and goes on. The queue writes the objects, retries and spools while the store is away, and
calls ``on_stored`` (which writes the file record) only after every object is stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, kw_only=True)
class ObjectMeta:
    content_type: str = "image/jpeg"
    cache_control: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    # the key is written again by every capture of its job (the overwrite object and its
    # latest pointer): where a stale writer may exist, it is written only over the version
    # this writer last saw (``outputs.fenced``)
    rewritten: bool = False


class SnapshotSink(Protocol):
    """Writes one object; the write is atomic (a reader never sees half an image)."""

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        """Store ``data`` under ``key``; raise ``OutputError`` with a reason on failure."""

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing object is not an error."""


@runtime_checkable
class ConditionalSink(SnapshotSink, Protocol):
    """A sink that can write a key only over a given version of it (S3's ``If-Match``)."""

    async def version(self, key: str) -> str | None:
        """The key's current version (its ETag), or None if there is no such object."""

    async def put_over(self, key: str, data: bytes, *, meta: ObjectMeta,
                       version: str | None) -> str:
        """Store ``data`` only if the key is at ``version`` (None: only if it does not exist);
        the new version. ``VersionConflict`` if the key is elsewhere, ``OutputError`` as
        :meth:`put` for other failures."""


@runtime_checkable
class SharingSink(SnapshotSink, Protocol):
    """A sink that can store a second object with the same bytes without writing them again
    (local disk: a hard link)."""

    async def put_same(self, key: str, data: bytes, *, meta: ObjectMeta, same_as: str) -> None:
        """Store ``data`` under ``key``, as :meth:`put`; ``same_as`` is an object this upload
        stored with the same bytes, which the sink may share instead of writing them."""


@dataclass(frozen=True, kw_only=True)
class PendingObject:
    """One object of a capture: its key, headers and bytes (None: the capture's picture)."""

    key: str
    meta: ObjectMeta
    data: bytes | None = None  # small side objects only (the latest pointer): kept in memory


@dataclass(frozen=True, kw_only=True)
class Upload:
    """One capture on its way to storage: the same JPEG under one or two keys.

    ``on_stored`` runs once every object is stored (it records the file); ``on_trouble`` runs
    with a message while the capture waits for an unreachable store (``lost=False``) or when
    it is given up (``lost=True``: dropped from a full spool, or refused by the store).
    """

    job_id: str
    data: bytes
    objects: tuple[PendingObject, ...]
    on_stored: Callable[[], Awaitable[None]]
    on_trouble: Callable[[str, bool], Awaitable[None]]
    # what the owner needs to make this upload again after a restart (opaque here): written
    # with the capture into the spool; "" = not worth keeping across a restart
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SpooledCapture:
    """A capture an earlier process left in the spool: its picture in ``path`` from
    ``offset``, its objects, and the ``note`` its ``Upload`` carried."""

    seq: int
    path: Path
    offset: int  # where the picture starts in the file
    size: int
    created: float  # wall-clock seconds it was captured (queued)
    job_id: str
    objects: tuple[PendingObject, ...]
    note: str


class UploadQueue(Protocol):
    """Takes captures for one target and stores them in order, in the background."""

    async def submit(self, upload: Upload) -> None:
        """Queue ``upload``; returns without waiting for the store (at most a local write)."""


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where an account's objects for a target really go (``fallback`` = local disk standing
    in); every object key it writes starts with ``key_prefix`` (a bucket shared by accounts)."""

    sink: SnapshotSink
    uploads: UploadQueue
    description: str
    fallback: bool = False
    key_prefix: str = ""


class SinkRouter(Protocol):
    def route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> Route: ...
