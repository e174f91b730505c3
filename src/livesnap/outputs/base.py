"""The snapshot sink: a one-method protocol, and the router that picks a sink per target."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, kw_only=True)
class ObjectMeta:
    content_type: str = "image/jpeg"
    cache_control: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class SnapshotSink(Protocol):
    """Writes one object; the write is atomic (a reader never sees half an image)."""

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        """Store ``data`` under ``key``; raise ``OutputError`` with a reason on failure."""

    async def delete(self, key: str) -> None:
        """Delete ``key``; a missing object is not an error."""


@dataclass(frozen=True, kw_only=True)
class Route:
    """Where a target's objects really go (``fallback`` = local disk standing in)."""

    sink: SnapshotSink
    description: str
    fallback: bool = False


class SinkRouter(Protocol):
    def route(self, storage_type: str, endpoint: str, bucket: str) -> Route: ...
