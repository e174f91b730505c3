"""Composition root for ``livesnap serve``: builds the store, manager, engine and ASGI app.

Part of the edge (with ``cli.py`` and ``config.py``): with ``wiring``, the only place that
picks concrete adapters. Tests use ``build_service`` to run the whole thing in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette

from livesnap import eventloop
from livesnap.api.app import ApiDeps, BodyLimits, create_app
from livesnap.api.hooks import hook_routes
from livesnap.api.ratelimit import KeyRateLimiter, RateLimit
from livesnap.api.signature import NonceCache
from livesnap.callbacks.dispatcher import CallbackDispatcher
from livesnap.callbacks.http11 import CallbackClient
from livesnap.capture.standin import NoCapture
from livesnap.capture.supervisor import CaptureSupervisor
from livesnap.clock import Clock, SystemClock
from livesnap.config import KeyRing, Settings
from livesnap.console import (
    REVOKED_FILE,
    ConsoleDeps,
    console_routes,
    load_or_create_secret,
)
from livesnap.errors import StoreError
from livesnap.jobs.manager import JobManager
from livesnap.jobs.ports import CaptureEngine, Store
from livesnap.node.capturehost import CaptureProcess, CaptureProcesses
from livesnap.node.httpserver import MAX_HEAD_BYTES, guarded_h11
from livesnap.node.metrics import Metrics, Probes, ops_routes
from livesnap.node.wiring import (
    CALLBACK_CLOSE_S,
    StoredSnapshots,
    agree_with_cluster,
    callback_dispatcher,
    capture_supervisor,
    job_manager,
    log_storage,
    resume_spooled,
    storage_figures,
    storage_router,
)
from livesnap.outputs.local import adopt_legacy_layout
from livesnap.outputs.router import StorageRouter
from livesnap.store import SqlStore, open_sql_store, stats

if TYPE_CHECKING:  # livesnap.cluster only in cluster mode: importing it sets Ray's defaults
    from livesnap.cluster.autobalance import AutoRebalance
    from livesnap.cluster.nodes import Move

logger = logging.getLogger(__name__)


@dataclass
class Service:
    settings: Settings
    store: Store
    manager: JobManager
    app: Starlette
    router: StorageRouter
    dispatcher: CallbackDispatcher | None = None
    metrics: Metrics | None = None


def rate_limiter(settings: Settings) -> KeyRateLimiter | None:
    """The per-access-key request quota, or None when ``rate_limit_rps`` is 0."""
    server = settings.server
    if server.rate_limit_rps <= 0:
        return None
    return KeyRateLimiter(RateLimit(rate=server.rate_limit_rps, burst=server.rate_limit_burst))


def api_deps(
    settings: Settings, manager: JobManager, keys: KeyRing, clock: Clock,
    metrics: Metrics | None = None,
) -> ApiDeps:
    server = settings.server
    return ApiDeps(
        manager=manager, keys=keys, clock=clock, nonces=NonceCache(), host_id=server.host_id,
        body=BodyLimits(max_bytes=server.max_request_bytes, read_timeout_s=server.body_timeout_s),
        limiter=rate_limiter(settings),
        observe=metrics.api_request if metrics is not None else None,
    )


def ops_probes(store: SqlStore, manager: JobManager, router: StorageRouter) -> Probes:
    """What ``/metrics`` and ``/readyz`` read: one GROUP BY, ``SELECT 1``, in-memory counts."""

    async def job_counts() -> dict[tuple[str, str], int]:
        return await stats.job_counts(store)

    async def ping() -> None:
        await stats.ping(store)

    engine = manager.engine
    remote = (engine.metric_families if isinstance(engine, CaptureProcess | CaptureProcesses)
              else None)
    connections = engine.connection_count if isinstance(engine, CaptureSupervisor) else None
    return Probes(job_counts=job_counts, ping=ping, sessions=engine.running_count,
                  connections=connections, spool_bytes=lambda: router.spool.size_bytes,
                  storage=functools.partial(storage_figures, router), remote=remote)


async def _cluster_keys(
    settings: Settings, store: SqlStore, keys: KeyRing, clock: Clock
) -> dict[str, str] | None:
    """A cluster's API node: its settings checked against the cluster's (``ClusterMismatch``
    closes the store), and the callback keys every node shares. None on a single node."""
    if settings.capture.engine != "ray":
        return None
    try:
        return await agree_with_cluster(settings, store, keys.accounts, int(clock.time() * 1000))
    except BaseException:
        await store.close()
        raise


@contextlib.asynccontextmanager
async def build_service(
    settings: Settings, keys: KeyRing, *, clock: Clock | None = None
) -> AsyncIterator[Service]:
    """Open everything, resume started jobs, and close it all in order on exit."""
    clock = clock or SystemClock()
    server, capture = settings.server, settings.capture
    server.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_sql_store(server.resolved_database_url())
    shared_keys = await _cluster_keys(settings, store, keys, clock)
    metrics = Metrics()
    adopt_legacy_layout(server.data_dir / "storage", keys.accounts)
    router = storage_router(settings)
    log_storage(router)
    router.observe_uploads(metrics.upload)  # every object write: livesnap_upload_seconds
    manager = job_manager(settings, store=store, clock=clock, router=router)
    # one dispatcher per outbox: the one capture process delivers the callbacks itself, and
    # events written here (a stop, a delete) wake it; otherwise this process delivers them,
    # handed over in memory (written here, or by several capture processes over their pipes)
    one_child = (capture.capture and capture.engine == "process"
                 and capture.capture_process_count == 1)
    dispatcher: CallbackDispatcher | None = None
    client: CallbackClient | None = None
    if not one_child:
        dispatcher, client = callback_dispatcher(settings, store, metrics, clock,
                                                 shared_keys=shared_keys)
        manager.on_events_written(dispatcher.offer)
    engine: CaptureEngine
    if capture.engine == "ray":
        engine = ray_engine(settings, store)
    elif not capture.capture:
        engine = NoCapture()
    elif dispatcher is not None and capture.engine == "process":
        engine = CaptureProcesses(settings, capture.capture_process_count,
                                  timeout_s=settings.cluster.shard_call_timeout_s,
                                  api_nice=capture.api_nice, on_events=dispatcher.offer)
    elif capture.engine == "process":
        engine = CaptureProcess(settings, timeout_s=settings.cluster.shard_call_timeout_s,
                                api_nice=capture.api_nice)
    else:
        engine = capture_supervisor(settings, reports=manager, router=router, clock=clock,
                                    metrics=metrics)
    manager.attach_engine(engine)
    deps = api_deps(settings, manager, keys, clock, metrics)
    console = ConsoleDeps(manager=manager, keys=keys, reader=StoredSnapshots(router),
                          secret=load_or_create_secret(server.data_dir), now=clock.time,
                          revoked_path=server.data_dir / REVOKED_FILE,
                          per_tick_min_interval_s=capture.per_tick_min_interval_s)
    ops = ops_routes(metrics, ops_probes(store, manager, router))
    hook_token = server.hook_token.get_secret_value() if server.hook_token else None
    hooks = hook_routes(manager, hook_token)
    app = create_app(deps, extra_routes=[*console_routes(console), *ops, *hooks])
    process = engine if isinstance(engine, CaptureProcess | CaptureProcesses) else None
    if isinstance(engine, CaptureProcess):
        manager.on_events_written(lambda _events: engine.notify())
    try:
        if process is not None:
            await process.open()
        await manager.open()
        await resume_spooled(router, store.load_job, manager, clock)
        if capture.engine == "local":  # a capture process or the shards resume their own jobs
            await manager.resume()
            await manager.resume_waiting()  # and every later waiting job is marked here
        else:  # capture processes and shards mark jobs waiting in the store: look for them
            manager.start_waiting_sweep()
        if dispatcher is not None:
            dispatcher.start()
        async with _rebalancing(settings, store):
            yield Service(settings=settings, store=store, manager=manager, app=app,
                          router=router, dispatcher=dispatcher, metrics=metrics)
    finally:
        if dispatcher is not None:
            await dispatcher.close(min(CALLBACK_CLOSE_S, server.shutdown_timeout_s))
        await manager.close(server.shutdown_timeout_s)
        await router.close(server.shutdown_timeout_s)  # records need the store: before it
        if client is not None:
            await client.aclose()
        await store.close()


def ray_engine(settings: Settings, store: SqlStore) -> CaptureEngine:
    """Join the Ray cluster and send capture commands to its shards (docs/cluster.md)."""
    if store.engine.dialect.name != "postgresql":
        raise StoreError("cluster mode (engine ray) needs a PostgreSQL database_url that "
                         "every node shares")
    from livesnap.cluster.rayengine import RayEngine, connect
    from livesnap.shards.assign import shard_names

    cluster = settings.cluster
    connect(cluster.ray_address, cluster.ray_namespace, cluster.ray_temp_dir)
    return RayEngine(shards=shard_names(cluster.shards), namespace=cluster.ray_namespace,
                     timeout_s=cluster.shard_call_timeout_s)


def auto_rebalance(settings: Settings, store: SqlStore) -> AutoRebalance | None:
    """An API node's automatic rebalance (``LIVESNAP_REBALANCE_S``; one API node of the
    cluster at a time, by a lease in the database), or None."""
    cluster = settings.cluster
    if settings.capture.engine != "ray" or cluster.rebalance_s <= 0:
        return None
    from livesnap.cluster.autobalance import AutoRebalance
    from livesnap.cluster.rayengine import rebalance
    from livesnap.node.shardhost import ShardHost
    from livesnap.shards.assign import shard_names

    names = shard_names(cluster.shards)
    holder = f"{socket.gethostname()}:{os.getpid()}"

    def report(line: str) -> None:
        logger.info("rebalance: %s", line, extra={"action": "rebalance"})

    def plan() -> list[Move]:
        return rebalance(ShardHost, names, cluster.ray_namespace,
                         resource=cluster.shard_resource, dry_run=True)

    def move() -> list[Move]:
        return rebalance(ShardHost, names, cluster.ray_namespace,
                         resource=cluster.shard_resource, report=report)

    async def lease(seconds: float) -> bool:
        now_ms = int(time.time() * 1000)
        return await store.take_lease(REBALANCE_LEASE, holder, now_ms,
                                      now_ms + int(seconds * 1000))

    return AutoRebalance(every_s=cluster.rebalance_s, plan=plan, move=move, lease=lease)


REBALANCE_LEASE = "lease:rebalance"


@contextlib.asynccontextmanager
async def _rebalancing(settings: Settings, store: SqlStore) -> AsyncIterator[None]:
    """The API node's automatic rebalance runs inside (cluster mode only)."""
    balancer = auto_rebalance(settings, store)
    if balancer is None:
        yield
        return
    balancer.start()
    try:
        yield
    finally:
        await balancer.close()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling, ticking once a second.

    uvicorn re-raises SIGTERM after ``serve()`` returns, which would kill the process before
    the capture engine and the database are closed; livesnap handles the signals itself.
    uvicorn wakes ten times a second to see whether it should exit and once a second to
    renew its ``Date`` header; an idle service spent a quarter of its CPU on that. Here it
    ticks once a second (the header's resolution) and ``request_exit`` wakes it at once.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._exit_requested = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit_requested.set()

    async def main_loop(self) -> None:
        ticks = 0
        while not await self.on_tick(ticks):
            ticks = (ticks + 10) % 864_000  # on_tick counts tenths of a second
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._exit_requested.wait()


async def serve(settings: Settings, keys: KeyRing) -> None:
    """Run the HTTP server until SIGINT/SIGTERM, then shut down within the configured time."""
    async with build_service(settings, keys) as service:
        config = uvicorn_config(service.app, settings)
        server = _Server(config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _request_exit, server, sig)
        host, port = settings.server.host, settings.server.port
        url = f"{settings.server.scheme}://{host}:{port}"
        loop_name = eventloop.running_loop_name()
        logger.info("listening on %s (event loop: %s)", url, loop_name, extra={
            "action": "serve", "host": host, "port": port, "url": url, "event_loop": loop_name})
        try:
            await server.serve()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
    logger.info("stopped", extra={"action": "shutdown"})


def uvicorn_config(app: Starlette, settings: Settings) -> uvicorn.Config:
    """uvicorn over livesnap's guarded h11 protocol (request-head deadline, ICE-shaped 400s),
    with TLS when a certificate and key are configured."""
    server = settings.server
    return uvicorn.Config(
        app, host=server.host, port=server.port, log_config=None, access_log=False,
        lifespan="off", timeout_graceful_shutdown=5, timeout_keep_alive=server.keep_alive_s,
        http=guarded_h11(header_timeout_s=server.header_timeout_s, host_id=server.host_id),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        ssl_certfile=server.tls_cert, ssl_keyfile=server.tls_key,
    )


def _request_exit(server: _Server, sig: signal.Signals) -> None:
    logger.info("shutting down", extra={"action": "shutdown", "signal": sig.name})
    server.request_exit()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0
