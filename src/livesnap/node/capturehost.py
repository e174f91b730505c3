"""Capture in a child process of ``livesnap serve`` (``engine = "process"``).

Part of the edge (with ``service.py`` and ``shardhost.py``). The serving process keeps the
HTTP API, the console and every read; one child process does what capture needs: the stream
readers, storage, file records and callback delivery. It is a capture shard
(``shardhost.ShardHost``) that owns every job; the two share the database, and commands go
over a pipe. Why: in one process the API's requests and the captures' hand-offs share one
event loop and the GIL, so API load delays captures and records (docs/performance.md, "API
under load"); apart, each has its own.

* The child picks up the started jobs itself (the shard's reconcile) and delivers every
  callback (one dispatcher per outbox); events written by the API wake it (``notify``).
* A child that dies is started again, with backoff; the new one takes a new epoch and picks
  its jobs up from the database, counting the ticks missed meanwhile as a shard takeover does.
  No fence is needed: a new child starts only after the old one has exited.
* The child ignores SIGINT and SIGTERM (a terminal or a service manager signals the whole
  process group): it stops its streams and exits when its parent tells it to, or when its
  parent is gone (the pipe closes, also after a SIGKILL).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from livesnap.capture.source import tune_malloc
from livesnap.config import Settings
from livesnap.errors import ShardUnavailable
from livesnap.jobs.models import OutboxEvent
from livesnap.node.metrics import Metrics
from livesnap.node.shardhost import ShardHost
from livesnap.shards.assign import owner
from livesnap.shards.remote import RemoteEngine, error_reply, raise_reply

logger = logging.getLogger(__name__)

__all__ = ["CHILD_SHARD", "CaptureProcess", "CaptureProcesses", "child_main"]

CHILD_SHARD = "local"  # the child's shard name: the only shard, so it owns every job
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
HEALTHY_S = 60.0  # a child that lived this long restarts after the shortest delay again
_NO_REPLY = 0  # request id of a message that gets no answer (notify)


class CaptureProcess(RemoteEngine):
    """The serving process's ``CaptureEngine``: commands go to the capture child.

    One child (``name`` ``local``, ``names`` ``[local]``) owns every job and delivers the
    callbacks. One of several (:class:`CaptureProcesses`) owns the jobs rendezvous hashing
    gives its name among ``names``, and hands the callback events it writes to ``on_events``
    (the serving process's dispatcher) instead of delivering them.
    """

    def __init__(
        self, settings: Settings, *, timeout_s: float, api_nice: int = 0,
        name: str = CHILD_SHARD, names: Sequence[str] = (CHILD_SHARD,),
        on_events: Callable[[list[OutboxEvent]], None] | None = None,
    ) -> None:
        self._settings = settings
        self.name = name
        self._names = list(names)
        self._on_events = on_events
        self._timeout_s = timeout_s
        self._api_nice = api_nice
        self._ctx = multiprocessing.get_context("spawn")  # no inherited threads or locks
        # a child inherits the nice value of the thread that starts it, and may not lower it:
        # every child is started from this thread, which keeps the original priority
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="capture-spawn")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._reader: threading.Thread | None = None
        self._gone = asyncio.Event()
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._started_at = 0.0
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        """The child's process id (None before ``open``)."""
        return None if self._proc is None else self._proc.pid

    # lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        """Start the child, lower this process's priority by ``api_nice``, and start a task
        that starts the child again whenever it dies."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()
        if self._api_nice > 0:
            renice_threads(self._api_nice, keep={self._spawner_tid()})
        self._watcher = self._loop.create_task(self._watch(), name="capture-process-watch")

    def _spawner_tid(self) -> int:
        return self._spawner.submit(threading.get_native_id).result()

    def _start_child(self) -> tuple[BaseProcess, Connection]:
        """(On the spawner thread.) A new child and the parent's end of its pipe."""
        parent_end, child_end = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main,
            args=(self._settings, child_end, self.name, self._names, self._on_events is None),
            name=f"livesnap-capture-{self.name}", daemon=False)
        proc.start()
        child_end.close()  # the child's copy is the only one left: its exit closes the pipe
        return proc, parent_end

    async def _spawn(self) -> None:
        assert self._loop is not None
        proc, parent_end = await self._loop.run_in_executor(self._spawner, self._start_child)
        self._proc, self._conn, self._started_at = proc, parent_end, time.monotonic()
        self._gone = asyncio.Event()
        self._reader = threading.Thread(target=self._read, args=(parent_end, self._gone),
                                        name="capture-pipe", daemon=True)
        self._reader.start()
        logger.info("capture process started", extra={"action": "capture_process",
                                                       "pid": proc.pid, "shard": self.name})

    def _read(self, conn: Connection, gone: asyncio.Event) -> None:
        """The reader thread: replies to their futures; the end of the pipe to ``gone``."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                rid, reply = conn.recv()
            except (EOFError, OSError):
                break
            if rid == _NO_REPLY:  # the child wrote callback events
                if self._on_events is not None:
                    loop.call_soon_threadsafe(self._on_events, reply["events"])
                continue
            loop.call_soon_threadsafe(self._answer, rid, reply)
        loop.call_soon_threadsafe(self._lost, conn, gone)

    def _answer(self, rid: int, reply: dict[str, Any]) -> None:
        future = self._pending.pop(rid, None)
        if future is not None and not future.done():
            future.set_result(reply)

    def _lost(self, conn: Connection, gone: asyncio.Event) -> None:
        if conn is self._conn:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ShardUnavailable("The capture process stopped."))
            self._pending.clear()
        gone.set()

    async def _watch(self) -> None:
        delay = RESTART_MIN_S
        while not self._closing:
            await self._gone.wait()
            if self._closing:
                return
            proc = self._proc
            assert proc is not None
            await asyncio.to_thread(proc.join, 5.0)
            if proc.is_alive():  # it closed the pipe but did not exit
                proc.kill()
                await asyncio.to_thread(proc.join, 5.0)
            lived = time.monotonic() - self._started_at
            delay = RESTART_MIN_S if lived >= HEALTHY_S else delay
            logger.error("capture process exited; starting it again", extra={
                "action": "capture_process", "pid": proc.pid, "exit_code": proc.exitcode,
                "lived_s": round(lived, 1), "restart_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_MAX_S)
            if not self._closing:
                self.restarts += 1
                await self._spawn()

    async def shutdown(self, timeout_s: float) -> None:
        """Tell the child to stop its streams and exit; kill it if it has not in time."""
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
        proc, conn = self._proc, self._conn
        if proc is None or conn is None:
            return
        if not self._gone.is_set():
            try:
                conn.send((_NO_REPLY, "close", (timeout_s,)))
            except OSError as exc:  # it died just now
                logger.warning("capture process not told to close", extra={
                    "action": "capture_process", "reason": str(exc)})
        await asyncio.to_thread(proc.join, timeout_s + 5.0)
        if proc.is_alive():
            logger.error("capture process did not exit in time; killing it", extra={
                "action": "capture_process", "pid": proc.pid})
            proc.kill()
            await asyncio.to_thread(proc.join, 5.0)
        conn.close()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 5.0)
        self._spawner.shutdown(wait=False)

    # commands ------------------------------------------------------------------------------
    async def _call(self, method: str, *args: Any) -> dict[str, Any]:
        conn, loop = self._conn, self._loop
        if conn is None or loop is None or self._gone.is_set():
            raise ShardUnavailable("The capture process is restarting.")
        rid = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[rid] = future
        try:
            conn.send((rid, method, args))
            async with asyncio.timeout(self._timeout_s + 2):
                reply = await future
        except (OSError, TimeoutError) as exc:
            raise ShardUnavailable(
                f"The capture process did not answer ({type(exc).__name__}).") from None
        finally:
            self._pending.pop(rid, None)
        raise_reply(reply)
        return reply

    async def _command(self, method: str, job_id: str, *args: Any) -> dict[str, Any]:
        return await self._call(method, job_id, *args, self._timeout_s)

    def notify(self) -> None:
        """Callback events were written here: the child's dispatcher polls now."""
        conn = self._conn
        if conn is None or self._gone.is_set():
            return  # a new child polls the outbox when it starts
        try:
            conn.send((_NO_REPLY, "notify", ()))
        except OSError as exc:  # it died just now; the restarted child polls on start
            logger.debug("capture process not notified", extra={"reason": str(exc)})

    async def status(self) -> dict[str, Any]:
        """The child's shard report (``ShardHost.status``)."""
        return await self._call("status")

    async def metric_families(self) -> list[Metric]:
        """The child's metrics: capture, storage and callbacks (merged into ``/metrics``)."""
        families: list[Metric] = (await self._call("metrics")).get("families", [])
        return families


class CaptureProcesses(RemoteEngine):
    """Capture in ``count`` child processes, ``local-0`` … (``LIVESNAP_CAPTURE_PROCESSES``):
    each owns the jobs rendezvous hashing of the job id gives it, as a cluster's shards do,
    and is restarted on its own when it dies. The callback events they write come to
    ``on_events`` (the serving process's dispatcher, one per outbox); ``notify`` is not needed.
    """

    def __init__(
        self, settings: Settings, count: int, *, timeout_s: float, api_nice: int = 0,
        on_events: Callable[[list[OutboxEvent]], None],
    ) -> None:
        names = [f"{CHILD_SHARD}-{i}" for i in range(count)]
        self._names = names
        self._api_nice = api_nice
        self._last: dict[str, list[Metric]] = {}  # each child's metrics, as last read
        self.children = {
            name: CaptureProcess(settings, timeout_s=timeout_s, name=name, names=names,
                                 on_events=on_events)
            for name in names}

    def owner(self, job_id: str) -> CaptureProcess:
        return self.children[owner(job_id, self._names)]

    async def open(self) -> None:
        """Start every child, then lower this process's priority by ``api_nice``, every
        child's spawner thread excepted (so restarted children keep the capture's)."""
        for child in self.children.values():
            await child.open()
        if self._api_nice > 0:
            renice_threads(self._api_nice,
                           keep={c._spawner_tid() for c in self.children.values()})

    async def shutdown(self, timeout_s: float) -> None:
        await asyncio.gather(*(c.shutdown(timeout_s) for c in self.children.values()))

    async def _command(self, method: str, job_id: str, *args: Any) -> dict[str, Any]:
        return await self.owner(job_id)._command(method, job_id, *args)

    async def metric_families(self) -> list[Metric]:
        """Every child's metrics (``Metrics.adopt`` adds up families of the same name; a child
        that does not answer counts with its last figures), and per child its sessions,
        connections and restarts (label ``process``)."""
        families: list[Metric] = []
        sessions = GaugeMetricFamily(
            "livesnap_capture_process_sessions",
            "Capture sessions running in each capture process.", labels=["process"])
        connections = GaugeMetricFamily(
            "livesnap_capture_process_connections",
            "Stream connections open in each capture process.", labels=["process"])
        restarts = CounterMetricFamily(
            "livesnap_capture_process_restarts",
            "Times each capture process was started again after it died.", labels=["process"])
        for name, child in self.children.items():
            with contextlib.suppress(ShardUnavailable):  # restarting: its last figures
                self._last[name] = await child.metric_families()
            own = self._last.get(name, [])
            families += own
            sessions.add_metric([name], _value(own, "livesnap_capture_sessions"))
            connections.add_metric([name], _value(own, "livesnap_stream_connections"))
            restarts.add_metric([name], child.restarts)
        return [*families, sessions, connections, restarts]


def _value(families: list[Metric], name: str) -> float:
    """The value of an unlabelled gauge among ``families`` (0 if absent)."""
    return next((s.value for f in families if f.name == name for s in f.samples), 0.0)


def renice_threads(increment: int, *, keep: set[int]) -> None:
    """Make every thread of this process but ``keep`` ``increment`` nicer (Linux keeps a nice
    value per thread; threads started later inherit their creator's). Raising one's own
    nice value needs no privilege."""
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        if tid in keep:
            continue
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(os.getpriority(os.PRIO_PROCESS, tid)
                                                     + increment, 19))
        except (ProcessLookupError, FileNotFoundError):
            continue  # the thread ended meanwhile


# the child ---------------------------------------------------------------------------------
class _ParentPipe:
    """The child's end of the pipe: answers to commands, and events handed over."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # command threads and the shard's loop send
        self.host: ShardHost | None = None

    def send(self, message: tuple[int, dict[str, Any]]) -> None:
        with self._lock:
            try:
                self._conn.send(message)
            except OSError as exc:  # the parent is gone (a new one polls the outbox)
                logger.warning("nothing sent: parent gone", extra={"reason": str(exc)})

    def forward(self, events: Sequence[OutboxEvent]) -> None:
        """(On the shard's loop, after their commit.) Callback events for the parent."""
        self.send((_NO_REPLY, {"events": list(events)}))

    def answer(self, rid: int, method: str, args: tuple[Any, ...]) -> None:
        host = self.host
        assert host is not None
        try:
            if method == "metrics":
                reply: dict[str, Any] = {"families": host.metric_families()}
            elif method == "status":
                reply = host.status()
            elif method in ("start", "stop", "capture"):
                reply = getattr(host, method)(*args)
            else:
                reply = error_reply(ShardUnavailable(f"Unknown command {method!r}."))
        except Exception as exc:  # a bug here must not leave the caller waiting
            logger.exception("capture command failed", extra={"action": method})
            reply = error_reply(ShardUnavailable(f"Capture command failed: {exc}"))
        self.send((rid, reply))


def child_main(
    settings: Settings, conn: Connection, name: str = CHILD_SHARD,
    names: Sequence[str] = (CHILD_SHARD,), callbacks: bool = True,
) -> None:
    """A capture process: the capture shard ``name`` of ``names``, serving its parent's pipe;
    it delivers the callbacks itself (``callbacks``) or sends its events to the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_malloc()  # before any reader thread exists (docs/performance.md)
    pipe = _ParentPipe(conn)
    host = pipe.host = ShardHost(
        settings, name, list(names), fence=False, callbacks=callbacks,
        metrics=Metrics(process=False), on_events=None if callbacks else pipe.forward)
    timeout_s = settings.server.shutdown_timeout_s
    with ThreadPoolExecutor(max_workers=16, thread_name_prefix="ls-command") as pool:
        while True:
            try:
                _rid, method, args = conn.recv()
            except (EOFError, OSError):
                logger.warning("parent process gone; stopping capture",
                               extra={"action": "capture_process"})
                break
            if method == "close":
                timeout_s = float(args[0])
                break
            if method == "notify":
                host.notify()
                continue
            pool.submit(pipe.answer, _rid, method, args)
        host.close(timeout_s + 5.0)
    conn.close()
