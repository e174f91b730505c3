"""The parts of a node every engine mode wires alike, and the adapters between them.

``livesnap serve`` (``service``), a capture process of a node and a Ray shard (``shardhost``)
all build their job manager, capture supervisor, storage router and callback dispatcher here,
so a setting is wired in one place.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path

from livesnap.callbacks.dispatcher import CallbackDispatcher, callback_client
from livesnap.callbacks.http11 import CallbackClient
from livesnap.callbacks.keys import CallbackKeys, new_key
from livesnap.callbacks.policy import DeliveryPolicy
from livesnap.capture.metrics import CaptureMetrics
from livesnap.capture.recording import recovered_upload
from livesnap.capture.session import SessionOptions
from livesnap.capture.source import SourceOptions
from livesnap.capture.supervisor import CaptureSupervisor
from livesnap.clock import Clock
from livesnap.config import Settings
from livesnap.errors import ClusterMismatch, OutputError, StoreError
from livesnap.jobs.manager import JobManager, Limits, Policy
from livesnap.jobs.models import Job, JobPatch, JobStatus, LastError, StorageTarget
from livesnap.jobs.ports import CaptureReports, StorageInfo, Store
from livesnap.jobs.retry import Backoff
from livesnap.jobs.waiting import WaitPolicy
from livesnap.node.metrics import MeteredOutbox, Metrics
from livesnap.outputs.local import LocalSink
from livesnap.outputs.objectstore import ObjectStoreSink, Timeouts
from livesnap.outputs.router import StorageRouter, TargetState
from livesnap.outputs.spool import MIB, SpoolLimits
from livesnap.store import SqlStore

logger = logging.getLogger(__name__)


class SystemResolver:
    """Host name → addresses through the OS resolver (off the event loop)."""

    async def resolve(self, host: str) -> list[str]:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None)
        return sorted({str(info[4][0]) for info in infos})


class RouterRemover:
    """The manager's view of the storage router: deletes objects, describes targets."""

    def __init__(self, router: StorageRouter) -> None:
        self._router = router

    async def delete(self, account: str, target: StorageTarget, key: str) -> None:
        route = self._router.route(account, *_target(target))
        await route.sink.delete(key)

    def describe(self, account: str, target: StorageTarget) -> StorageInfo:
        args = (account, *_target(target))
        reason = self._router.check(*args)
        if reason:
            return StorageInfo(writable=False, fallback=False, description=reason)
        try:
            route = self._router.route(*args)
        except OutputError as exc:  # e.g. obstore rejected the configured address
            return StorageInfo(writable=False, fallback=False, description=exc.message)
        return StorageInfo(writable=True, fallback=route.fallback, description=route.description)


class StoredSnapshots:
    """The console's view of the storage router: reads stored snapshots back to serve them."""

    def __init__(self, router: StorageRouter) -> None:
        self._router = router

    async def read(self, account: str, target: StorageTarget, key: str) -> bytes | None:
        try:
            sink = self._router.route(account, *_target(target)).sink
            if isinstance(sink, LocalSink):
                return await asyncio.to_thread(sink.path_for(key).read_bytes)
            if isinstance(sink, ObjectStoreSink):
                data, _ = await sink.read(key)
                return data
        except (OutputError, OSError) as exc:
            logger.debug("stored snapshot not readable",
                        extra={"action": "console_read", "key": key, "reason": str(exc)})
        return None


def _target(target: StorageTarget) -> tuple[str, str, str]:
    return target.storage_type.value, target.endpoint, target.bucket


def storage_router(
    settings: Settings, *, spool_dir: Path | None = None,
    confirm_owner: Callable[[], Awaitable[None]] | None = None,
) -> StorageRouter:
    """Local disk under ``<data>/storage``, configured buckets, the spool in ``<data>/spool``
    (a capture shard has its own spool directory, and ``confirm_owner``: its fence check)."""
    data_dir, storage = Path(settings.server.data_dir), settings.storage
    return StorageRouter(
        root=data_dir / "storage",
        spool_dir=spool_dir or data_dir / "spool",
        credentials=storage.storage_credentials(),
        fallback=storage.storage_fallback,
        limits=SpoolLimits(
            max_bytes=storage.spool_max_mb * MIB,
            max_age_s=storage.spool_max_age_s,
            retry_max_s=storage.storage_retry_max_s,
        ),
        timeouts=Timeouts(connect_s=storage.storage_connect_timeout_s,
                          request_s=storage.storage_request_timeout_s),
        confirm_owner=confirm_owner,
    )


def job_manager(
    settings: Settings, *, store: Store, clock: Clock, router: StorageRouter,
    watch_waiting: bool = True,
) -> JobManager:
    """The job manager over ``store``, with the node's limits and blocked networks.

    ``watch_waiting=False`` for a capture shard's manager: the serving process's manager
    finds the jobs that wait for their stream in the store and watches them.
    """
    routes = RouterRemover(router)
    server = settings.server
    policy = Policy(
        limits=Limits(
            jobs_per_account=server.max_jobs_per_account,
            jobs_per_node=server.max_jobs_per_node,
            kept_jobs_per_account=server.max_kept_jobs_per_account,
        ),
        blocked_networks=server.networks(),
        # a job waiting for its stream is probed again as a lost stream is reconnected
        waiting=WaitPolicy(first_s=min(2.0, settings.capture.reconnect_max_s),
                           max_s=settings.capture.reconnect_max_s),
        watch_waiting=watch_waiting,
    )
    return JobManager(store=store, clock=clock, policy=policy, resolver=SystemResolver(),
                      remover=routes, storage=routes)


def capture_supervisor(
    settings: Settings, *, reports: CaptureReports, router: StorageRouter, clock: Clock,
    metrics: CaptureMetrics | None,
) -> CaptureSupervisor:
    """The sessions of this process's jobs, reporting to ``reports``, storing through
    ``router``."""
    return CaptureSupervisor(
        reports=reports, sinks=router, clock=clock, options=session_options(settings),
        max_sessions=settings.server.max_jobs_per_node,
        probe_timeout_s=settings.capture.probe_timeout_s,
        metrics=metrics,
    )


def session_options(settings: Settings) -> SessionOptions:
    capture = settings.capture
    return SessionOptions(
        source=SourceOptions(
            rw_timeout_s=capture.rw_timeout_s, jpeg_quality=capture.jpeg_quality,
            skip_loop_filter=capture.skip_loop_filter, rtsp_transport=capture.rtsp_transport,
            tls_verify=capture.source_tls_verify,
            tls_ca_file=str(capture.source_ca_file or ""),
            blocked_networks=settings.server.networks(),
        ),
        backoff=Backoff(base_s=1.0, cap_s=capture.reconnect_max_s),
        outage_window_s=capture.outage_window_s,
        capture_timeout_s=capture.probe_timeout_s,
        per_tick_min_interval_s=capture.per_tick_min_interval_s,
        share_streams=capture.share_streams,
    )


CALLBACK_CLOSE_S = 3.0  # at shutdown; an unfinished delivery is made again after restart


# One node's dispatcher polls an outbox nobody else writes without saying so (offer, notify):
# when a poll found nothing due, the next one may wait this long. Retries the dispatcher
# scheduled itself wake it on time; one another run scheduled may come this much late.
NODE_IDLE_POLL_S = 5.0


def callback_policy(settings: Settings) -> DeliveryPolicy:
    callbacks = settings.callbacks
    return DeliveryPolicy(
        backoff=Backoff(
            base_s=callbacks.callback_backoff_base_s, factor=2.0,
            cap_s=callbacks.callback_backoff_max_s, jitter=0.5,
        ),
        max_age_s=callbacks.callback_max_age_s,
        retention_s=callbacks.callback_retention_days * 86_400.0,
        connect_timeout_s=callbacks.callback_connect_timeout_s,
        read_timeout_s=callbacks.callback_read_timeout_s,
        total_timeout_s=(callbacks.callback_connect_timeout_s
                         + 2 * callbacks.callback_read_timeout_s),
        concurrency=callbacks.callback_concurrency,
        per_account=callbacks.callback_per_account,
        per_host=callbacks.callback_per_host,
        blocked_networks=settings.server.networks(),
        # in a cluster, shards write events the API nodes' dispatchers only see by polling
        idle_poll_interval_s=None if settings.capture.engine == "ray" else NODE_IDLE_POLL_S,
    )


def callback_dispatcher(
    settings: Settings, store: SqlStore, metrics: Metrics, clock: Clock,
    shared_keys: Mapping[str, str] | None = None,
) -> tuple[CallbackDispatcher, CallbackClient]:
    """The outbox's dispatcher (not started) and the HTTP client it posts with.

    ``shared_keys``: a cluster's callback keys (``agree_with_cluster``), used for the accounts
    ``LIVESNAP_CALLBACK_KEYS`` does not name."""
    delivery = callback_policy(settings)
    keys = {**(shared_keys or {}), **settings.callbacks.configured_callback_keys()}
    callback_keys = CallbackKeys.in_data_dir(settings.server.data_dir, keys)
    client = callback_client(delivery)
    # a cluster's API nodes all poll the one outbox: each event is claimed by one of them
    claimer = (f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
               if settings.capture.engine == "ray" else None)
    dispatcher = CallbackDispatcher(
        store=MeteredOutbox(store, metrics), client=client, clock=clock, keys=callback_keys,
        policy=delivery, claimer=claimer,
    )
    return dispatcher, client


# what every node of a cluster must agree on (its database's ``cluster_settings``)
SHARDS_SETTING = "shards"
NAMESPACE_SETTING = "ray_namespace"
CALLBACK_KEY_SETTING = "callback_key:"  # + account


async def agree_with_cluster(
    settings: Settings, store: SqlStore, accounts: Iterable[str], now_ms: int, *,
    authoritative: bool = False, make_key: Callable[[], str] = new_key,
) -> dict[str, str]:
    """Check this node's cluster settings against the ones its database holds, and return
    the callback key of each account, generated once for the whole cluster: every API node
    signs an account's callbacks with the same key (an account's key from this node's
    ``callback-keys.json``, if it has one, is the one offered).

    The shard count and the Ray namespace are the ones ``livesnap cluster up`` set
    (``authoritative``), or the first node stored. Raises ``ClusterMismatch`` (one line saying
    what differs and what to set) when this node's are not the cluster's.
    """
    for name, mine, option in (
        (SHARDS_SETTING, str(settings.cluster.shards), "LIVESNAP_SHARDS"),
        (NAMESPACE_SETTING, settings.cluster.ray_namespace, "LIVESNAP_RAY_NAMESPACE"),
    ):
        theirs = await store.agree(name, mine, now_ms, replace=authoritative)
        if theirs != mine:
            raise ClusterMismatch(
                f"{option} is {mine!r} on this node but {theirs!r} in the cluster's database "
                f"(set by 'livesnap cluster up' or the first node): every node must use the "
                f"same value")
    configured = settings.callbacks.configured_callback_keys()
    own = CallbackKeys.in_data_dir(settings.server.data_dir, {}).generated()
    return {account: await store.agree(CALLBACK_KEY_SETTING + account,
                                       own.get(account) or make_key(), now_ms)
            for account in sorted(set(accounts)) if account not in configured}


async def note_on_started_jobs(store: SqlStore, note: str, now_ms: int) -> int:
    """Set every started job's ``LastError`` to ``note`` (its status stays); how many."""
    started = await store.jobs_with_status(JobStatus.STARTED)
    for job in started:
        await store.update_job(job.id, JobPatch(last_error=LastError.stream(note)), now_ms=now_ms)
    return len(started)


async def resume_spooled(
    router: StorageRouter, load_job: Callable[[str], Awaitable[Job | None]],
    reports: CaptureReports, clock: Clock,
) -> int:
    """Queue the captures an earlier run left in the spool, ahead of this run's: each is
    stored and recorded when its store answers. A capture whose job is gone, whose storage is
    no longer configured or that has nothing left to store is dropped. How many were queued."""
    queued = 0
    for spooled in router.take_leftovers():
        try:
            job = await load_job(spooled.job_id)
        except StoreError as exc:  # its files stay: the next start takes them again
            logger.warning("spooled snapshot of an earlier run left for the next start: %s",
                           exc.message, extra={"action": "spool_resume_failed",
                                               "job_id": spooled.job_id})
            continue
        if job is None:
            router.discard(spooled, "its job was deleted")
            continue
        upload = recovered_upload(spooled, job, reports=reports, clock=clock)
        if isinstance(upload, str):
            router.discard(spooled, upload)
            continue
        try:
            route = router.route(job.account, *_target(job.storage))
        except OutputError as exc:
            router.discard(spooled, exc.message)
            continue
        router.adopt(spooled, route, upload)
        queued += 1
    if queued:
        logger.info("storing the snapshots an earlier run left in the spool", extra={
            "action": "spool_resumed", "count": queued})
    return queued


def log_storage(router: StorageRouter) -> None:
    """One line per configured storage entry (never its secret) and one for the fallback."""
    for entry in router.credentials:
        logger.info(
            "storage entry: %s %s bucket %s", entry.storage_type, entry.endpoint, entry.bucket,
            extra={"action": "storage_entry", "storage_type": entry.storage_type,
                   "endpoint": entry.endpoint, "bucket": entry.bucket,
                   "accounts": ",".join(entry.accounts or ("(one account)",)),
                   "prefix": entry.prefix or "(none)", "endpoint_url": entry.endpoint_url or ""})
    fallback = ("on: OSS/S3 targets without an entry are written to local disk under "
                f"{router.root}/<account>/" if router.fallback
                else "off: OSS/S3 targets without an entry are refused at Submit")
    logger.info("storage fallback %s", fallback,
                extra={"action": "storage_fallback_mode", "fallback": router.fallback,
                       "entries": len(router.credentials)})


def storage_figures(router: StorageRouter) -> tuple[list[TargetState], dict[str, int]]:
    """Each storage target's state and the totals, for ``/metrics``."""
    return router.target_states(), dataclasses.asdict(router.counts)
