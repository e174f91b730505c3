"""Objects that every capture writes again, kept from going back in time by a stale writer.

In a cluster, a capture shard that was replaced (its node hung, a newer instance took its jobs
over) may still be running for a moment, with captures on their way to storage. Its records
are refused by the database's fence, but an object write reaches the store unchecked: without
more, the old instance could write the job's overwrite object after the new instance did, and
the picture would go back in time.

``FencedSink`` wraps a ``ConditionalSink`` and writes each ``rewritten`` key only over the
version this process wrote last (``If-Match``). The new instance's first write replaces that
version, so the old one's next write is refused by the store itself. A writer that does not
know the key's version (its first write, or after a refusal) reads it, then confirms with the
database that it still owns its shard, and only then writes over what it read:

- a stale writer that reads the new instance's version read it after the takeover committed,
  so its confirmation fails and it writes nothing (``OutputFenced``);
- a stale writer confirmed before the takeover writes over a version the new instance has
  not yet replaced, or is refused because it has.

Either way, nothing the new instance wrote is ever overwritten by the old one. Other objects
(sequence objects, a key per capture) are written as they are: the fence on records makes the
old instance remove those whose records it could not write.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from livesnap.errors import (
    FencedOut,
    OutputError,
    OutputFenced,
    OutputUnavailable,
    StoreError,
    VersionConflict,
)
from livesnap.outputs.base import ConditionalSink, ObjectMeta

# conflicts in a row on one key before the write is given up (a key another program writes
# all the time; each round reads the version again and confirms the owner)
MAX_ROUNDS = 3


class FencedSink:
    """A ``SnapshotSink`` whose ``rewritten`` keys are written only by the shard's owner."""

    def __init__(self, sink: ConditionalSink, confirm_owner: Callable[[], Awaitable[None]]) -> None:
        self.sink = sink
        self._confirm_owner = confirm_owner
        self._versions: dict[str, str] = {}  # key → the version this process wrote last

    def __repr__(self) -> str:
        return f"FencedSink({self.sink!r})"

    @property
    def label(self) -> str:
        return str(getattr(self.sink, "label", repr(self.sink)))

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        if not meta.rewritten:
            await self.sink.put(key, data, meta=meta)
            return
        known = self._versions.pop(key, None)  # popped: a failure leaves it unknown
        for _ in range(MAX_ROUNDS):
            try:
                if known is None:
                    current = await self.sink.version(key)
                    await self._confirm()
                    written = await self.sink.put_over(key, data, meta=meta, version=current)
                else:
                    written = await self.sink.put_over(key, data, meta=meta, version=known)
            except VersionConflict:
                known = None  # someone else wrote it: read it again and confirm the owner
                continue
            if written:
                self._versions[key] = written
            return
        raise OutputError(f"{key} was changed by another writer in each of {MAX_ROUNDS} "
                          "attempts; this capture's object was not written")

    async def delete(self, key: str) -> None:
        self._versions.pop(key, None)
        await self.sink.delete(key)

    async def _confirm(self) -> None:
        try:
            await self._confirm_owner()
        except FencedOut as exc:
            raise OutputFenced(f"not written: {exc.message}") from exc
        except StoreError as exc:  # the database is away: a later attempt may confirm
            raise OutputUnavailable(f"cannot confirm this shard still owns its jobs: "
                                    f"{exc.message}") from exc
