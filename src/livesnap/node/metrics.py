"""Prometheus metrics, ``/metrics`` and ``/readyz`` (``/healthz`` is in ``livesnap.api``).

One :class:`Metrics` per service, in a registry of its own (never the process-global one, so
two services in one test process do not share counters). Components get it as a keyword and
call its hooks: the capture session (``snapshot_stored``, ``capture_failed``, ``reconnect``),
storage (``upload``, ``spool_size``) and the callback dispatcher (``callback``). The job and
stream gauges are computed on each scrape with one GROUP BY query (see docs/metrics.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap import __version__
from livesnap.errors import LivesnapError, StoreError
from livesnap.jobs.models import DeliveryAttempt, JobStatus, OutboxEvent, StreamStatus

logger = logging.getLogger(__name__)

FAILURE_STAGES = ("decode", "store")
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
IO_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
SCRAPE_TIMEOUT_S = 2.0
STORAGE_OUTCOMES = ("uploaded", "spooled", "dropped", "failed")
# gauges that several capture processes report, and that do not add up
MERGED_BY_MAX = frozenset({"livesnap_storage_oldest_upload_seconds"})

JobCounts = Mapping[tuple[str, str], int]


class TargetFigures(Protocol):
    """One storage target's state (``outputs.router.TargetState``)."""

    @property
    def name(self) -> str: ...
    @property
    def outage(self) -> bool: ...
    @property
    def pending(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def oldest_in_flight_s(self) -> float: ...


class Metrics:
    """Every livesnap metric. The hook methods are cheap and safe to call from the loop."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        Info("livesnap_build", "The running livesnap version.", registry=self.registry).info(
            {"version": __version__}
        )
        self._adopted: dict[str, Metric] = {}
        self._gauges()
        self._capture()
        self._io()
        self._api()

    def _gauges(self) -> None:
        r = self.registry
        self.jobs = Gauge("livesnap_jobs", "Jobs by status (all accounts).", ["status"], registry=r)
        self.streams = Gauge("livesnap_streams", "Started jobs by the status of their stream.",
                             ["stream_status"], registry=r)
        self.sessions = Gauge("livesnap_capture_sessions",
                              "Capture sessions running on this node.", registry=r)
        self.connections = Gauge(
            "livesnap_stream_connections",
            "Stream connections open on this node (jobs on the same stream share one).",
            registry=r)
        self.database_up = Gauge("livesnap_database_up",
                                 "1 if the last scrape could read the database, else 0.",
                                 registry=r)
        self.spool = Gauge("livesnap_spool_bytes",
                           "Bytes of snapshots waiting in the local spool for object storage.",
                           registry=r)
        for status in JobStatus:
            self.jobs.labels(status=status.value)
        for stream in StreamStatus:
            self.streams.labels(stream_status=stream.value)

    def _capture(self) -> None:
        r = self.registry
        self.snapshots = Counter("livesnap_snapshots", "Snapshots stored and recorded.",
                                 registry=r)
        self.failures = Counter("livesnap_snapshot_failures",
                                "Captures that gave no stored snapshot, by stage.",
                                ["stage"], registry=r)
        self.lag = Histogram("livesnap_capture_lag_seconds",
                             "Keyframe arrival to snapshot handed to storage.",
                             buckets=LAG_BUCKETS, registry=r)
        self.reconnects = Counter("livesnap_reconnects",
                                  "Stream connections that ended and will be retried.",
                                  registry=r)
        self.rejected = Counter("livesnap_frames_rejected",
                                "Keyframes the frame-quality gate rejected, by verdict.",
                                ["verdict"], registry=r)
        for stage in FAILURE_STAGES:
            self.failures.labels(stage=stage)

    def _io(self) -> None:
        r = self.registry
        self.uploads = Histogram("livesnap_upload_seconds", "Time to store one object.",
                                 buckets=IO_BUCKETS, registry=r)
        self.upload_failures = Counter("livesnap_upload_failures",
                                       "Object writes that failed.", registry=r)
        self.callbacks = Histogram("livesnap_callback_seconds",
                                   "Time of one callback delivery attempt.",
                                   buckets=IO_BUCKETS, registry=r)
        self.callback_failures = Counter("livesnap_callback_failures",
                                         "Callback delivery attempts that failed.", registry=r)
        self.callbacks_pruned = Counter("livesnap_callback_events_pruned",
                                        "Delivered or given-up callback events deleted after "
                                        "the retention.", registry=r)
        target = ["target"]
        self.storage_outage = Gauge(
            "livesnap_storage_outage", "1 while the target's store is unreachable and its "
            "captures are spooled (summed over capture processes).", target, registry=r)
        self.storage_pending = Gauge(
            "livesnap_storage_pending", "Captures waiting for the target, in flight included.",
            target, registry=r)
        self.storage_in_flight = Gauge(
            "livesnap_storage_uploads_in_flight",
            "Uploads to the target writing objects now.", target,
            registry=r)
        self.storage_oldest = Gauge(
            "livesnap_storage_oldest_upload_seconds", "How long the oldest upload to the "
            "target running now has taken so far (0: none running).", target, registry=r)
        self.storage_captures = Counter(
            "livesnap_storage_captures", "Captures by what storage did with them: uploaded, "
            "spooled (written to the spool on the way), dropped (spool limits, shutdown) or "
            "failed (refused by the store).", ["outcome"], registry=r)
        self._storage_seen: dict[str, int] = {}
        for outcome in STORAGE_OUTCOMES:
            self.storage_captures.labels(outcome=outcome)

    def _api(self) -> None:
        r = self.registry
        self.api_requests = Counter(
            "livesnap_api_requests", "API requests answered, by action and by code (OK, or the "
            "ICE error code; action '-' when the request named no known action).",
            ["action", "code"], registry=r)
        self.api_latency = Histogram(
            "livesnap_api_request_seconds", "Time to answer one API request, by action.",
            ["action"], buckets=API_BUCKETS, registry=r)

    # hooks -----------------------------------------------------------------------------------
    def api_request(self, action: str, code: str, seconds: float) -> None:
        self.api_requests.labels(action=action, code=code).inc()
        self.api_latency.labels(action=action).observe(max(seconds, 0.0))

    def snapshot_stored(self, lag_s: float) -> None:
        self.snapshots.inc()
        self.lag.observe(max(lag_s, 0.0))

    def capture_failed(self, stage: str) -> None:
        self.failures.labels(stage=stage).inc()

    def reconnect(self) -> None:
        self.reconnects.inc()

    def frame_rejected(self, verdict: str) -> None:
        self.rejected.labels(verdict=verdict).inc()

    def upload(self, seconds: float, ok: bool) -> None:
        self.uploads.observe(max(seconds, 0.0))
        if not ok:
            self.upload_failures.inc()

    def callback(self, seconds: float, ok: bool) -> None:
        self.callbacks.observe(max(seconds, 0.0))
        if not ok:
            self.callback_failures.inc()

    def spool_size(self, size_bytes: int) -> None:
        self.spool.set(max(size_bytes, 0))

    def storage_state(self, targets: Sequence[TargetFigures], counts: Mapping[str, int]) -> None:
        """Each storage target's state now, and the running totals of what storage did."""
        for t in targets:
            self.storage_outage.labels(target=t.name).set(1 if t.outage else 0)
            self.storage_pending.labels(target=t.name).set(t.pending)
            self.storage_in_flight.labels(target=t.name).set(t.in_flight)
            self.storage_oldest.labels(target=t.name).set(round(t.oldest_in_flight_s, 3))
        for outcome in STORAGE_OUTCOMES:
            now = counts.get(outcome, 0)
            added = now - self._storage_seen.get(outcome, 0)
            if added > 0:
                self.storage_captures.labels(outcome=outcome).inc(added)
            self._storage_seen[outcome] = max(now, self._storage_seen.get(outcome, 0))

    # scrape ----------------------------------------------------------------------------------
    def set_job_counts(self, counts: JobCounts) -> None:
        """Replace the job and stream gauges (statuses absent from ``counts`` become 0)."""
        by_status = dict.fromkeys((s.value for s in JobStatus), 0)
        by_stream = dict.fromkeys((s.value for s in StreamStatus), 0)
        for (status, stream), count in counts.items():
            by_status[status] = by_status.get(status, 0) + count
            # started jobs by their stream, and the jobs (not started) waiting for theirs
            if status == JobStatus.STARTED.value or stream == StreamStatus.WAITING.value:
                by_stream[stream] = by_stream.get(stream, 0) + count
        for status, count in by_status.items():
            self.jobs.labels(status=status).set(count)
        for stream, count in by_stream.items():
            self.streams.labels(stream_status=stream).set(count)

    def adopt(self, families: list[Metric]) -> None:
        """Other processes' metrics of this service (the capture processes'), added to this
        one's on every render until the next ``adopt``; families of the same name add up."""
        adopted: dict[str, Metric] = {}
        for family in families:
            seen = adopted.get(family.name)
            adopted[family.name] = (family if seen is None or seen.type != family.type
                                    else _combined(seen, family))
        self._adopted = adopted

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition for an ``Accept`` header (Prometheus text 0.0.4 unless asked for
        OpenMetrics), and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(_Merged(self.registry, self._adopted)), content_type


class _Merged:
    """A registry's families plus adopted ones of the same names: counts and gauges add up,
    creation times take the earlier."""

    def __init__(self, registry: CollectorRegistry, adopted: Mapping[str, Metric]) -> None:
        self._registry = registry
        self._adopted = adopted

    def collect(self) -> Iterator[Metric]:
        names = set()
        for family in self._registry.collect():
            names.add(family.name)
            other = self._adopted.get(family.name)
            if other is None or other.type != family.type:
                yield family
                continue
            yield _combined(family, other)
        # families only the other processes have (one sample per capture process)
        yield from (f for name, f in self._adopted.items() if name not in names)


def _combined(family: Metric, other: Metric) -> Metric:
    """Two families of one name and type as one: samples with the same labels add up,
    creation times take the earlier."""
    merged = Metric(family.name, family.documentation, family.type, family.unit)
    values: dict[tuple[str, tuple[tuple[str, str], ...]], Sample] = {}
    for sample in [*family.samples, *other.samples]:
        key = (sample.name, tuple(sorted(sample.labels.items())))
        seen = values.get(key)
        if seen is None:
            values[key] = sample
        elif sample.name.endswith("_created"):
            values[key] = seen._replace(value=min(seen.value, sample.value))
        elif family.name in MERGED_BY_MAX:
            values[key] = seen._replace(value=max(seen.value, sample.value))
        else:
            values[key] = seen._replace(value=seen.value + sample.value)
    merged.samples = list(values.values())
    return merged


class _Outbox(Protocol):
    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]: ...

    async def record_attempt(
        self, attempt: DeliveryAttempt, *, delivered: bool, failed: bool, next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]: ...

    def commit_soon(self) -> None: ...

    async def prune_events(self, before_ms: int, limit: int) -> int: ...

    async def claim_event(
        self, event_id: str, claimer: str, now_ms: int, until_ms: int) -> bool: ...


class MeteredOutbox:
    """The callback dispatcher's outbox, observing each recorded delivery attempt."""

    def __init__(self, outbox: _Outbox, metrics: Metrics) -> None:
        self._outbox = outbox
        self._metrics = metrics

    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]:
        return await self._outbox.due_heads(now_ms, limit)

    async def record_attempt(
        self, attempt: DeliveryAttempt, *, delivered: bool, failed: bool, next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]:
        pending = await self._outbox.record_attempt(
            attempt, delivered=delivered, failed=failed, next_attempt_ms=next_attempt_ms,
            may_wait=may_wait,
        )
        status = attempt.status_code
        self._metrics.callback(attempt.latency_ms / 1000, status is not None and
                               200 <= status < 300)
        return pending

    def commit_soon(self) -> None:
        self._outbox.commit_soon()

    async def prune_events(self, before_ms: int, limit: int) -> int:
        deleted = await self._outbox.prune_events(before_ms, limit)
        self._metrics.callbacks_pruned.inc(deleted)
        return deleted

    async def claim_event(self, event_id: str, claimer: str, now_ms: int, until_ms: int) -> bool:
        return await self._outbox.claim_event(event_id, claimer, now_ms, until_ms)


@dataclass(frozen=True, kw_only=True)
class Probes:
    """What the ops endpoints read on each request (built by the composition root)."""

    job_counts: Callable[[], Awaitable[JobCounts]]
    ping: Callable[[], Awaitable[None]]
    sessions: Callable[[], int]
    connections: Callable[[], int] | None = None
    spool_bytes: Callable[[], int] | None = None
    # each storage target's state, and the totals uploaded / spooled / dropped / failed
    storage: Callable[[], tuple[Sequence[TargetFigures], Mapping[str, int]]] | None = None
    remote: Callable[[], Awaitable[list[Metric]]] | None = None  # the capture process's
    timeout_s: float = SCRAPE_TIMEOUT_S


async def refresh(metrics: Metrics, probes: Probes) -> None:
    """Recompute the gauges; a slow or failing database leaves them as they were."""
    metrics.sessions.set(probes.sessions())
    if probes.connections is not None:
        metrics.connections.set(probes.connections())
    if probes.spool_bytes is not None:
        metrics.spool_size(probes.spool_bytes())
    if probes.storage is not None:
        metrics.storage_state(*probes.storage())
    if probes.remote is not None:
        try:  # a restarting capture process: its last figures stay (counters never go back)
            metrics.adopt(await asyncio.wait_for(probes.remote(), probes.timeout_s))
        except (LivesnapError, TimeoutError) as exc:
            logger.warning("metrics: capture process not read", extra={
                "action": "metrics_scrape", "reason": _reason(exc)})
    try:
        counts = await asyncio.wait_for(probes.job_counts(), probes.timeout_s)
    except (StoreError, TimeoutError) as exc:
        metrics.database_up.set(0)
        logger.warning("metrics: database not read", extra={"action": "metrics_scrape",
                                                            "reason": _reason(exc)})
        return
    metrics.database_up.set(1)
    metrics.set_job_counts(counts)


def _reason(exc: Exception) -> str:
    return exc.message if isinstance(exc, LivesnapError) else "timed out"


def ops_routes(metrics: Metrics, probes: Probes) -> list[BaseRoute]:
    """``GET /metrics`` (Prometheus text format) and ``GET /readyz``."""

    async def scrape(request: Request) -> Response:
        await refresh(metrics, probes)
        body, content_type = metrics.render(request.headers.get("accept", ""))
        return Response(body, media_type=content_type)

    async def ready(_: Request) -> Response:
        try:
            await asyncio.wait_for(probes.ping(), probes.timeout_s)
        except (StoreError, TimeoutError) as exc:
            logger.warning("not ready", extra={"action": "readyz", "reason": _reason(exc)})
            return JSONResponse({"status": "unavailable", "reason": _reason(exc)}, 503)
        return JSONResponse({"status": "ready"})

    return [
        Route("/metrics", scrape, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
    ]
