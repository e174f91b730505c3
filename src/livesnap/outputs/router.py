"""Routing of storage targets to sinks (design.md §4 "Storage routing").

Every route is an account's: ``local`` targets are written under
``<root>/<Account>/<Endpoint>/<Bucket>/``. An ``oss``/``s3`` target with an entry in the storage
config that the account may use goes to that bucket through obstore, each key after the entry's
prefix for the account. A bucket that entries name exactly belongs to those entries alone (a
``*`` entry does not open it to other accounts). Any other ``oss``/``s3`` target falls back to
the account's local disk, the embedded default, and the route says so (``Route.fallback``, and
one log line per target) — unless the fallback is off, in which case it has no route at all and
``check`` says why.

Every route has its own ``TargetUploader`` in front of its sink; all of them share one bounded
spool directory.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from livesnap.config import StorageCredential, normalize_endpoint
from livesnap.errors import OutputError
from livesnap.outputs.base import ConditionalSink, Route, SnapshotSink, SpooledCapture, Upload
from livesnap.outputs.fenced import FencedSink
from livesnap.outputs.local import LocalSink, safe_segment
from livesnap.outputs.objectstore import ObjectStoreSink, Timeouts
from livesnap.outputs.spool import (
    Spool,
    SpoolCounts,
    SpoolLimits,
    TargetUploader,
    UploadObserver,
)

logger = logging.getLogger(__name__)

SinkFactory = Callable[[StorageCredential, str, str], SnapshotSink]
OBJECT_STORE_TYPES = ("oss", "s3")


@dataclass(frozen=True, kw_only=True)
class TargetState:
    """One storage target now (for the metrics): ``type:endpoint/bucket``."""

    name: str
    outage: bool  # the store is unreachable: captures are spooled until it answers
    pending: int  # captures waiting for it, in flight included
    in_flight: int  # uploads running
    oldest_in_flight_s: float  # how long the oldest running upload has taken so far


def find_credential(
    credentials: Sequence[StorageCredential], account: str, storage_type: str, endpoint: str,
    bucket: str,
) -> StorageCredential | None:
    """The config entry ``account`` writes a target with: among the entries naming the bucket
    if there are any, else among the ``*`` entries, the first that allows the account."""
    covering = [c for c in credentials if c.matches(storage_type, endpoint, bucket)]
    exact = [c for c in covering if c.bucket == bucket]
    return next((c for c in exact or covering if c.allows(account)), None)


class StorageRouter:
    """``SinkRouter`` over local disk and obstore buckets, with a shared spool."""

    def __init__(
        self,
        *,
        root: Path,
        spool_dir: Path | None = None,
        credentials: Sequence[StorageCredential] = (),
        fallback: bool = True,
        limits: SpoolLimits | None = None,
        timeouts: Timeouts | None = None,
        sink_factory: SinkFactory | None = None,
        observe_uploads: UploadObserver | None = None,
        confirm_owner: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``confirm_owner``: a cluster shard's check that it still owns its jobs (raises
        ``FencedOut``); given, its overwrite objects are written conditionally where the
        storage entry allows (``outputs.fenced``)."""
        self.root = root
        self._confirm_owner = confirm_owner
        self._observe = observe_uploads
        self.fallback = fallback
        self._credentials = tuple(credentials)
        self._timeouts = timeouts or Timeouts()
        self._sink_factory = sink_factory or self._object_sink
        self.spool = Spool(spool_dir or root.parent / "spool", limits or SpoolLimits())
        self._routes: dict[tuple[str, str, str, str], Route] = {}
        self._uploaders: list[TargetUploader] = []
        self._leftovers, unusable = self.spool.take_leftovers()
        if unusable:
            logger.warning(
                "removed snapshots an earlier run left half-written in the spool (never "
                "stored, no record)", extra={"action": "spool_leftovers", "count": unusable,
                                             "directory": str(self.spool.directory)},
            )

    def take_leftovers(self) -> list[SpooledCapture]:
        """The captures an earlier run left in the spool, oldest first (once: each must then
        be ``adopt``-ed or ``discard``-ed)."""
        left, self._leftovers = self._leftovers, []
        return left

    def adopt(self, spooled: SpooledCapture, route: Route, upload: Upload) -> None:
        """Store a leftover capture through ``route`` (one of this router's), ahead of the
        captures of this run."""
        uploads = route.uploads
        if not isinstance(uploads, TargetUploader):
            raise TypeError("a route of another router")
        uploads.adopt(spooled, upload)

    def discard(self, spooled: SpooledCapture, reason: str) -> None:
        """Give a leftover capture up (its job is gone, or it has nothing left to store)."""
        logger.warning("spooled snapshot of an earlier run dropped: %s", reason, extra={
            "action": "upload_dropped", "job_id": spooled.job_id})
        self.spool.discard(spooled)

    @property
    def credentials(self) -> tuple[StorageCredential, ...]:
        """The configured storage entries (for the start-up log)."""
        return self._credentials

    @property
    def counts(self) -> SpoolCounts:
        """Uploaded / spooled / dropped / failed captures since start (for metrics)."""
        return self.spool.counts

    @property
    def pending(self) -> int:
        """Captures waiting for storage, over all targets."""
        return sum(u.pending for u in self._uploaders)

    @property
    def outages(self) -> list[str]:
        """Targets whose store is unreachable now, each with the reason."""
        return [f"{u.name}: {u.outage}" for u in self._uploaders if u.outage is not None]

    def target_states(self) -> list[TargetState]:
        """Each target written so far (the routes of every account to it together)."""
        by_target: dict[str, list[TargetUploader]] = {}
        for uploader in self._uploaders:
            by_target.setdefault(uploader.name, []).append(uploader)
        return [
            TargetState(name=name, outage=any(u.outage is not None for u in routes),
                        pending=sum(u.pending for u in routes),
                        in_flight=sum(u.in_flight for u in routes),
                        oldest_in_flight_s=max(u.oldest_in_flight_s() for u in routes))
            for name, routes in sorted(by_target.items())
        ]

    def observe_uploads(self, observer: UploadObserver | None) -> None:
        """Report every object write of every route (made so far or later) to ``observer``,
        e.g. ``Metrics.upload``: its duration in seconds and whether it succeeded."""
        self._observe = observer
        for uploader in self._uploaders:
            uploader.observe = observer

    def check(self, account: str, storage_type: str, endpoint: str, bucket: str) -> str:
        """Why ``account`` cannot write this target ("" if it can)."""
        if storage_type not in OBJECT_STORE_TYPES or self.fallback:
            return ""
        if find_credential(self._credentials, account, storage_type, endpoint, bucket):
            return ""
        if any(c.matches(storage_type, endpoint, bucket) for c in self._credentials):
            return (
                f"The storage configured for SnapshotOutput {storage_type} endpoint "
                f"{endpoint} bucket {bucket} is not open to this account, and the local-disk "
                "fallback is off."
            )
        hint = self._nearest(storage_type, endpoint, bucket)
        return (
            f"No storage is configured for SnapshotOutput {storage_type} endpoint {endpoint} "
            f"bucket {bucket}, and the local-disk fallback is off.{hint}"
        )

    def _nearest(self, storage_type: str, endpoint: str, bucket: str) -> str:
        """`` Did you mean …?`` naming the configured target closest to this one ("": none)."""
        def bare(text: str) -> str:  # no scheme, case or trailing slash
            return normalize_endpoint(text).split("://", 1)[-1]

        same_type = [c for c in self._credentials if c.storage_type == storage_type]
        here = sorted({c.bucket for c in same_type
                       if normalize_endpoint(c.endpoint) == normalize_endpoint(endpoint)})
        if here:  # the endpoint is configured: a bucket name off by little?
            near = difflib.get_close_matches(bucket, here, n=1, cutoff=0.75)
            return f" Did you mean bucket {near[0]}?" if near else ""
        endpoints = list(dict.fromkeys(c.endpoint for c in same_type))
        found = [e for e in endpoints if bare(e) == bare(endpoint)]
        found = found or difflib.get_close_matches(endpoint, endpoints, n=1, cutoff=0.75)
        if not found:
            return ""
        buckets = sorted({c.bucket for c in same_type if c.endpoint == found[0]})
        return f" Did you mean endpoint {found[0]} (configured for bucket {', '.join(buckets)})?"

    def route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> Route:
        """``account``'s route to the target (made once); ``OutputError`` if it has none."""
        key = (account, storage_type, endpoint, bucket)
        route = self._routes.get(key)
        if route is None:
            route = self._routes[key] = self._make_route(*key)
        return route

    async def close(self, timeout_s: float) -> None:
        """Let every queue finish within ``timeout_s`` (captures left are counted as dropped)."""
        await asyncio.gather(*(uploader.close(timeout_s) for uploader in self._uploaders))

    def _make_route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> Route:
        reason = self.check(account, storage_type, endpoint, bucket)
        if reason:
            raise OutputError(reason)
        cred = None
        if storage_type in OBJECT_STORE_TYPES:
            cred = find_credential(self._credentials, account, storage_type, endpoint, bucket)
        if cred is None:
            return self._local_route(account, storage_type, endpoint, bucket)
        sink = self._sink_factory(cred, endpoint, bucket)
        label = getattr(sink, "label", None)
        description = label if isinstance(label, str) else f"{storage_type} {endpoint}/{bucket}"
        prefix = cred.key_prefix(account)
        if prefix:
            description += f", keys under {prefix}"
        writer: SnapshotSink = sink
        if self._confirm_owner is not None and cred.writes_conditionally and isinstance(
                sink, ConditionalSink):
            writer = FencedSink(sink, self._confirm_owner)
        return self._with_uploader(sink, description=description, key_prefix=prefix,
                                   name=f"{storage_type}:{endpoint}/{bucket}", fallback=False,
                                   writer=writer)

    def _local_route(self, account: str, storage_type: str, endpoint: str, bucket: str) -> Route:
        directory = self.root / safe_segment(account) / safe_segment(endpoint) / safe_segment(
            bucket)
        fallback = storage_type != "local"
        description = f"local disk {directory}"
        if fallback:
            description += (f" (no storage configured for {storage_type} {endpoint}/{bucket}."
                            f"{self._nearest(storage_type, endpoint, bucket)})")
            logger.warning(
                "no storage configured for this target: writing to local disk instead",
                extra={"action": "storage_fallback", "storage_type": storage_type,
                       "endpoint": endpoint, "bucket": bucket, "account": account,
                       "directory": str(directory)},
            )
        return self._with_uploader(LocalSink(directory), description=description, key_prefix="",
                                   name=f"{storage_type}:{endpoint}/{bucket}", fallback=fallback)

    def _with_uploader(
        self, sink: SnapshotSink, *, description: str, name: str, fallback: bool, key_prefix: str,
        writer: SnapshotSink | None = None,
    ) -> Route:
        """The route to ``sink``; its uploads go through ``writer`` (default: the sink)."""
        uploader = TargetUploader(writer or sink, spool=self.spool, name=name,
                                  observe=self._observe)
        self._uploaders.append(uploader)
        return Route(sink=sink, uploads=uploader, description=description, fallback=fallback,
                     key_prefix=key_prefix)

    def _object_sink(self, cred: StorageCredential, endpoint: str, bucket: str) -> SnapshotSink:
        try:
            return ObjectStoreSink.for_target(cred, endpoint, bucket, timeouts=self._timeouts)
        except Exception as exc:  # obstore rejects a configuration at construction
            raise OutputError(
                f"cannot open {cred.storage_type} bucket {bucket} at {endpoint}: {exc}"
            ) from exc

