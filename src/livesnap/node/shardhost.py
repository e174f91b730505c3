"""A capture shard's process: the body of the Ray actor, wired like ``service.py`` wires a node.

Part of the edge (with ``service.py``): it builds the store, storage router, job manager and
capture supervisor for one shard and runs ``cluster.shard.ShardRuntime`` on an asyncio loop in
its own thread. It does not import Ray; ``cluster/rayengine.py`` makes it an actor.

Ray's rules for the actor (docs/cluster.md): ``__init__`` never raises (a raising
constructor kills a restartable actor for good), so the database is opened with retries in
the background; methods are short and thread-safe, and each waits at most ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.metrics_core import Metric

from livesnap import eventloop
from livesnap.callbacks.dispatcher import CallbackDispatcher
from livesnap.clock import SystemClock
from livesnap.config import Settings
from livesnap.errors import LivesnapError, ShardUnavailable
from livesnap.jobs.models import OutboxEvent
from livesnap.logs import setup_logging
from livesnap.node.metrics import Metrics
from livesnap.node.wiring import (
    CALLBACK_CLOSE_S,
    callback_dispatcher,
    capture_supervisor,
    job_manager,
    resume_spooled,
    storage_figures,
    storage_router,
)
from livesnap.outputs.router import StorageRouter
from livesnap.shards.remote import error_reply
from livesnap.shards.runtime import ShardRuntime, ShardStats, TickLedger
from livesnap.store.sql import Fence, SqlStore, open_sql_store

logger = logging.getLogger(__name__)

T = TypeVar("T")
OPEN_RETRY_MAX_S = 5.0


class ShardHost:
    """One capture shard instance (a new one after every restart: a new epoch)."""

    def __init__(
        self, settings: Settings, name: str, shards: list[str], *, fence: bool = True,
        callbacks: bool = False, metrics: Metrics | None = None,
        on_events: Callable[[Sequence[OutboxEvent]], None] | None = None,
    ) -> None:
        """``fence=False``: a capture process of a node (``capturehost``), which its parent
        never runs twice at once; ``callbacks=True``: it delivers the node's callbacks (the
        only capture process), else ``on_events`` gets the events it wrote (several);
        ``metrics`` collects its capture, storage and callback metrics."""
        self.settings = settings
        self.name = name
        self.shards = list(shards)
        self._fence = fence
        self._callbacks = callbacks
        self._on_events = on_events
        self._metrics = metrics
        self._dispatcher: CallbackDispatcher | None = None
        self._sessions: Callable[[], int] = lambda: 0
        self._connections: Callable[[], int] = lambda: 0
        self._spool_bytes: Callable[[], int] = lambda: 0
        self._router: StorageRouter | None = None
        self.pid = os.getpid()
        self.node, self.restarted = _ray_facts()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runtime: ShardRuntime | None = None
        self._ready = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"shard-{name}", daemon=True)
        self._thread.start()

    # the shard's own thread ------------------------------------------------------------------
    def _main(self) -> None:
        server = self.settings.server
        setup_logging(level=server.log_level, json_lines=server.log_json)
        try:
            eventloop.run(self._serve(), server.event_loop)
        except Exception:
            logger.exception("shard crashed", extra={"action": "shard_crash", "shard": self.name})

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        base, epoch = await self._open()
        if base is None:
            return
        clock = SystemClock()
        stats = ShardStats(name=self.name, epoch=epoch, started_at=time.time())
        runtime_box: list[ShardRuntime] = []
        fenced = base.fenced(Fence(self.name, epoch),
                             on_fenced=lambda: runtime_box[0].fence() if runtime_box else None
                             ) if self._fence else base
        settings = self.settings
        server = settings.server
        router = storage_router(
            settings, spool_dir=Path(server.data_dir) / "spool-shards" / self.name,
            confirm_owner=fenced.confirm_owner if self._fence else None)
        if self._metrics is not None:
            router.observe_uploads(self._metrics.upload)
        manager = job_manager(settings, store=fenced, clock=clock, router=router,
                              watch_waiting=False)  # the serving process's manager waits
        ledger = TickLedger(manager, stats)
        supervisor = capture_supervisor(settings, reports=ledger, router=router, clock=clock,
                                        metrics=self._metrics)
        manager.attach_engine(supervisor)
        self._sessions = supervisor.running_count
        self._connections = supervisor.connection_count
        self._spool_bytes = lambda: router.spool.size_bytes
        self._router = router
        client = None
        if self._callbacks:
            self._dispatcher, client = callback_dispatcher(
                settings, base, self._metrics or Metrics(process=False), clock)
            manager.on_events_written(self._dispatcher.offer)
            self._dispatcher.start()
        elif self._on_events is not None:
            manager.on_events_written(self._on_events)
        runtime = ShardRuntime(
            name=self.name, shards=self.shards, epoch=epoch, store=base, engine=supervisor,
            ledger=ledger, stats=stats, reconcile_s=settings.cluster.shard_reconcile_s,
            stop_timeout_s=server.shutdown_timeout_s,
        )
        runtime_box.append(runtime)
        self._runtime = runtime
        await resume_spooled(router, base.load_job, ledger, clock)  # before its jobs resume
        self._ready.set()
        logger.info("shard running", extra={"action": "shard_start", "shard": self.name,
                                             "epoch": epoch, "pid": self.pid})
        try:
            await runtime.run()
        finally:
            if self._dispatcher is not None:
                await self._dispatcher.close(min(CALLBACK_CLOSE_S, server.shutdown_timeout_s))
            await router.close(server.shutdown_timeout_s)
            if client is not None:
                await client.aclose()
            await base.close()
            logger.info("shard stopped", extra={"action": "shard_stop", "shard": self.name,
                                                "epoch": epoch, "fenced": runtime.fenced})

    async def _open(self) -> tuple[SqlStore | None, int]:
        """The store and a new epoch, retried until the database answers (or close())."""
        delay = 0.2
        while not self._closing.is_set():
            store: SqlStore | None = None
            try:
                store = await open_sql_store(self.settings.server.resolved_database_url(),
                                             migrate=False)
                epoch = await store.take_epoch(self.name, int(time.time() * 1000))
                return store, epoch
            except LivesnapError as exc:
                if store is not None:
                    await store.close()
                logger.warning("shard cannot reach the database; retrying", extra={
                    "action": "shard_open", "shard": self.name, "reason": exc.message})
            await asyncio.sleep(delay)
            delay = min(delay * 2, OPEN_RETRY_MAX_S)
        return None, 0

    # called from other threads (the actor's) ------------------------------------------------
    def _call(self, make: Callable[[ShardRuntime], Awaitable[T]], timeout_s: float) -> T:
        if not self._ready.wait(timeout_s) or self._loop is None or self._runtime is None:
            raise ShardUnavailable(f"Shard {self.name} is still starting.")
        runtime = self._runtime

        async def run() -> T:
            return await make(runtime)

        future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return future.result(timeout_s)
        except FutureTimeout:
            future.cancel()
            message = f"Shard {self.name} did not answer in {timeout_s:g} s."
            raise ShardUnavailable(message) from None

    def start(self, job_id: str, probe: bool, timeout_s: float) -> dict[str, Any]:
        try:
            self._call(lambda r: r.start(job_id, probe=probe), timeout_s)
        except LivesnapError as exc:
            return error_reply(exc)
        return {}

    def stop(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        try:
            self._call(lambda r: r.stop(job_id), timeout_s)
        except LivesnapError as exc:
            return error_reply(exc)
        return {}

    def capture(self, job_id: str, timeout_s: float) -> dict[str, Any]:
        try:
            file = self._call(lambda r: r.capture_now(job_id), timeout_s)
        except LivesnapError as exc:
            return error_reply(exc)
        return {"file": file}

    def status(self) -> dict[str, Any]:
        runtime = self._runtime
        stats = asdict(runtime.stats) if runtime is not None else {"name": self.name}
        return {**stats, "pid": self.pid, "node": self.node, "restarted": self.restarted,
                "ready": runtime is not None}

    def launch_settings(self) -> tuple[Settings, list[str]]:
        """The settings and shard names this instance was created with (a rebalance starts
        the shard's next instance with the same)."""
        return self.settings, list(self.shards)

    def notify(self) -> None:
        """Callback events were written elsewhere: the dispatcher polls now."""
        dispatcher, loop = self._dispatcher, self._loop
        if dispatcher is not None and loop is not None:
            loop.call_soon_threadsafe(dispatcher.notify)

    def metric_families(self) -> list[Metric]:
        """This process's metrics (``metrics``), with the session and spool gauges current."""
        if self._metrics is None:
            return []
        self._metrics.sessions.set(self._sessions())
        self._metrics.connections.set(self._connections())
        self._metrics.spool_size(self._spool_bytes())
        if self._router is not None:
            self._metrics.storage_state(*storage_figures(self._router))
        return list(self._metrics.registry.collect())

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop every stream and the shard's loop (tests, ``cluster down``)."""
        self._closing.set()
        if self._runtime is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._runtime.close)
        self._thread.join(timeout_s)


def _ray_facts() -> tuple[str, bool]:
    """(node id, restarted by Ray?) inside a Ray actor; ("", False) anywhere else."""
    ray = sys.modules.get("ray")  # never imported here: only a Ray worker has it loaded
    if ray is None or not ray.is_initialized():
        return "", False
    context = ray.get_runtime_context()
    return context.get_node_id(), bool(context.was_current_actor_reconstructed)
