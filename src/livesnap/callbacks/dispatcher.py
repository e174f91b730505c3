"""The outbox dispatcher: POSTs each event to its CallbackUrl, signed, retried, at least once.

One poll loop (``run``) asks the store for each job's oldest undelivered event that is due
(``due_heads``) and delivers it in a task of its own: at most ``concurrency`` at once, and
never two of the same job, so a job's events arrive in order while other jobs go on. Every
attempt is written back (``record_attempt``) before the job's next event can be picked, so
the store always holds the truth: after a restart delivery resumes where it stopped, and an
attempt that was in flight at a crash is simply made again with the same ``EventId``.

The fast path: events this process has just committed are handed over in memory (``offer``)
and delivered without a poll when their job is *known*: its last recorded attempt showed
that the outbox held nothing undelivered for it but the events offered since (the store
answers that in the attempt's own transaction). A job with anything else to deliver (a
retry waiting for its time, a backlog after a restart, events written by another process)
is not known, and the poll delivers its events, oldest first, until a recorded attempt finds
it known again. The memory is only ever a copy of what the outbox holds: forgetting it
(``notify``: written elsewhere) costs a poll, never an event.

The dispatcher shares nothing with capture but the event loop and the store; a receiver
that hangs costs one delivery slot for at most ``total_timeout_s``.

Untrusted URLs: at every attempt the callback host is resolved again (in a thread pool of
the dispatcher's own) and refused if any address lies in a blocked network. The request
then goes to the checked address itself, with the original ``Host`` header and TLS server
name, so a name that re-resolves between the check and the connection (DNS rebinding)
cannot redirect it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httpx

from livesnap.callbacks import payload, signing
from livesnap.callbacks.http11 import CallbackClient, Poster
from livesnap.callbacks.policy import DeliveryPolicy, Outcome, decide
from livesnap.clock import Clock
from livesnap.errors import LivesnapError
from livesnap.jobs.models import DeliveryAttempt, OutboxEvent
from livesnap.jobs.ports import PENDING_LIMIT, Resolver
from livesnap.jobs.urls import CALLBACK_SCHEMES, blocked_address

logger = logging.getLogger(__name__)

MAX_ERROR_LEN = 300
MAX_ADDRESSES = 3  # addresses tried, in resolver order, when a connection is refused
# a claim lasts one attempt's whole timeout and this much more (the attempt's record)
CLAIM_MARGIN_S = 30.0
PRUNE_BATCH = 1000  # events deleted per transaction
PRUNE_MAX_BATCHES = 100  # per round; a larger backlog goes at the next rounds


class Outbox(Protocol):
    """What the dispatcher needs from the store (``SqlStore`` and ``MemoryStore`` have it)."""

    async def due_heads(self, now_ms: int, limit: int) -> list[OutboxEvent]:
        """Per job, its oldest undelivered, not failed event if that one is due; the accounts in
        turn (each one's oldest first), so that one account's backlog hides no other's."""

    async def record_attempt(
        self, attempt: DeliveryAttempt, *, delivered: bool, failed: bool, next_attempt_ms: int,
        may_wait: bool = False,
    ) -> list[str]:
        """Write the attempt; the job's events still undelivered and not failed after it
        (``may_wait``: the store may hold the write back a little to share a transaction)."""

    def commit_soon(self) -> None:
        """Attempts held back by ``may_wait`` commit now (a delivery waits on one)."""

    async def prune_events(self, before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` events done with before ``before_ms``; how many."""


class ClaimingOutbox(Outbox, Protocol):
    """An outbox several dispatchers share (a cluster's API nodes): each event is claimed by
    one of them before it is POSTed."""

    async def claim_event(self, event_id: str, claimer: str, now_ms: int, until_ms: int) -> bool:
        """Whether ``claimer`` may deliver the event now (nobody else's claim on it runs past
        ``now_ms``); the claim then holds to ``until_ms``."""


class KeySource(Protocol):
    def key_for(self, account: str) -> str: ...


class _Refused(Exception):
    """The attempt was not made (bad URL, unresolvable or blocked host, no key)."""


LITERAL_TARGETS_KEPT = 1024  # callback URLs with an IP address whose checked target is kept


@dataclass(frozen=True, kw_only=True)
class _Target:
    urls: list[httpx.URL]  # the callback URL with its host replaced by each checked address
    host_header: str
    sni_hostname: str | None
    literal: bool = False  # the URL's host is an IP address (nothing was resolved)


class PoolResolver:
    """``getaddrinfo`` in a small thread pool owned by the dispatcher.

    Not ``loop.getaddrinfo``: that runs in the loop's default executor, which capture's file
    writes share, and a hanging DNS server must not slow capture down.
    """

    def __init__(self, workers: int = 4) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="callback-dns")

    async def resolve(self, host: str) -> list[str]:
        lookup = functools.partial(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM)
        infos = await asyncio.get_running_loop().run_in_executor(self._pool, lookup)
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def callback_client(policy: DeliveryPolicy) -> CallbackClient:
    """The client the dispatcher is meant to use in production (``http11``): plain http
    connections kept alive and reused per address, https never reused, no redirects, no
    proxy from the environment."""
    return CallbackClient(connect_timeout_s=policy.connect_timeout_s,
                          read_timeout_s=policy.read_timeout_s, max_idle=policy.concurrency)


class CallbackDispatcher:
    """Delivers outbox events. ``start()``/``stop()``/``close()``, or drive ``run()`` yourself."""

    def __init__(
        self,
        *,
        store: Outbox,
        client: Poster,
        clock: Clock,
        keys: KeySource,
        policy: DeliveryPolicy,
        resolver: Resolver | None = None,
        rand: Callable[[], float] = random.random,
        claimer: str | None = None,
    ) -> None:
        """``claimer``: this dispatcher's name where others poll the same outbox (``store``
        then a ``ClaimingOutbox``): it POSTs only events it claimed, so an event goes out
        twice only when a dispatcher dies mid-delivery and its claim runs out."""
        self._store = store
        self._claimer = claimer
        # events another dispatcher claimed: not tried again before their claim runs out
        self._claimed_elsewhere: dict[str, int] = {}
        self._client = client
        self._clock = clock
        self._keys = keys
        self._policy = policy
        self._pool_resolver: PoolResolver | None = None
        if resolver is None:
            resolver = self._pool_resolver = PoolResolver()
        self._resolver = resolver
        # targets of callback URLs whose host is an IP address: nothing in them can change
        self._literal_targets: dict[str, _Target] = {}
        self._rand = rand
        self._inflight: dict[str, asyncio.Task[None]] = {}  # job id -> its delivery
        # Fairness: whose deliveries hold the slots, and the receivers that keep failing.
        self._holders: dict[str, tuple[str, str]] = {}  # job id -> (account, host) in flight
        self._account_load: dict[str, int] = {}
        self._host_load: dict[str, int] = {}
        self._breakers: dict[str, _Breaker] = {}
        self._held_by: set[str] = set()  # accounts and hosts whose limit held events back
        # Known jobs (see the module's doc): each one's offered events not yet started.
        self._known: dict[str, list[OutboxEvent]] = {}
        self._waiting: dict[str, None] = {}  # known jobs with events, waiting for a slot
        self._offers_missed: dict[str, int] = {}  # per job: offers the poll must deliver
        self._finished_in_poll: set[str] | None = None  # jobs done while a poll query ran
        self._starved = False  # the last poll found more due than it could start
        self._quiet = False  # the last poll found nothing due: sleep idle_poll_interval_s
        self._retry_at_ms: int | None = None  # the earliest retry this dispatcher scheduled
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at: float | None = None  # clock time of the last retention round

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Run the poll loop in a background task."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="callback-dispatcher")
            self._task.add_done_callback(_report_crash)

    def notify(self) -> None:
        """Events were written that were not offered (by another process, or old events made
        due again): forget what memory knows and poll now instead of at the next interval."""
        self._known.clear()
        self._waiting.clear()
        self._wake.set()

    def offer(self, events: Sequence[OutboxEvent]) -> None:
        """Events this process has just committed to the outbox, to deliver from memory where
        their job is known; the rest, and an empty offer, are left to the poll (now)."""
        if not events:
            self.notify()
            return
        running = self._task is not None and not self._stopping.is_set()
        now = self._now_ms()
        for event in events:
            job = event.job_id
            queue = self._known.get(job) if running else None
            if queue is None or len(queue) >= PENDING_LIMIT or event.next_attempt_ms > now:
                self._forget(job)
                self._offers_missed[job] = self._offers_missed.get(job, 0) + 1
                self._wake.set()
                continue
            # in outbox order (created_ms, then the order of writing)
            at = bisect.bisect_right([e.created_ms for e in queue], event.created_ms)
            queue.insert(at, event)
            if job in self._inflight:  # its attempt's record may be waiting for company
                self._store.commit_soon()
            self._pump(job)

    def _forget(self, job: str) -> None:
        """The job is not known any more: its events are the poll's."""
        self._known.pop(job, None)
        self._waiting.pop(job, None)

    def _pump(self, job: str) -> None:
        """Start the known job's next offered event if it has none in flight and a slot is
        free (else it waits for one)."""
        queue = self._known.get(job)
        if not queue or job in self._inflight or self._stopping.is_set():
            return
        if len(self._inflight) >= self._policy.concurrency or not self._may_start(queue[0]):
            self._waiting[job] = None
            return
        self._waiting.pop(job, None)
        self._start(queue.pop(0))

    def stop(self) -> None:
        """Ask the loop to stop; deliveries in flight go on until ``close``."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Poll and deliver until ``stop()``; cancelling ``run`` stops it the same way."""
        logger.info("callback dispatcher running", extra={"action": "callbacks_start"})
        try:
            while not self._stopping.is_set():
                self._wake.clear()  # before polling, so a notify during the poll is kept
                await self._poll()
                await self._sleep()
        except asyncio.CancelledError:
            self.stop()
            raise

    async def close(self, timeout_s: float) -> None:
        """Stop, give deliveries in flight up to ``timeout_s``, then cancel what is left.

        A cancelled delivery is not recorded, so it is made again after the next start.
        """
        self.stop()
        self._store.commit_soon()  # attempts in flight are recorded now, not after a wait
        tasks = [t for t in (self._task, *self._running()) if t is not None]
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
            logger.warning(
                "callback deliveries cancelled at shutdown",
                extra={"action": "callbacks_close", "count": len(pending)},
            )
        if self._pool_resolver is not None:
            self._pool_resolver.close()

    async def dispatch_once(self) -> int:
        """Start every due delivery (within the concurrency) and wait for all in flight."""
        started = await self._launch_due()
        running = self._running()
        if running:
            await asyncio.wait(running)
        return started

    # polling -------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._clock.time() * 1000)

    async def _poll(self) -> None:
        try:
            await self._launch_due()
            await self._prune_if_due()
        except LivesnapError as exc:  # StoreError: the database is away; try again later
            logger.warning("cannot read the outbox: %s", exc.message,
                           extra={"action": "callbacks_poll"})

    async def _prune_if_due(self) -> None:
        """Every ``prune_every_s``: delete events delivered or given up more than
        ``retention_s`` ago, with their attempts, so the outbox does not grow for ever."""
        retention, now = self._policy.retention_s, self._clock.time()
        if retention <= 0 or (self._pruned_at is not None
                              and now - self._pruned_at < self._policy.prune_every_s):
            return
        self._pruned_at = now
        deleted = await self.prune(before_ms=int((now - retention) * 1000))
        if deleted:
            logger.info("deleted %d callback events older than the retention", deleted,
                        extra={"action": "callbacks_prune", "count": deleted})

    async def prune(self, *, before_ms: int) -> int:
        """Delete events done with before ``before_ms``, batch by batch; how many."""
        deleted = 0
        for _ in range(PRUNE_MAX_BATCHES):
            count = await self._store.prune_events(before_ms, PRUNE_BATCH)
            deleted += count
            if count < PRUNE_BATCH or self._stopping.is_set():
                break
        return deleted

    async def _sleep(self) -> None:
        """Until woken, or the next poll: soon while the outbox has work, after
        ``idle_poll_interval_s`` once a poll found nothing due (but not past a retry this
        dispatcher scheduled)."""
        timeout = self._policy.poll_interval_s
        if self._quiet:
            timeout = self._policy.idle_poll_s
            if self._retry_at_ms is not None:
                until_retry = (self._retry_at_ms - self._now_ms()) / 1000
                timeout = min(timeout, max(until_retry, self._policy.poll_interval_s))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _launch_due(self) -> int:
        free = self._policy.concurrency - len(self._inflight)
        self._starved = free <= 0
        self._quiet = False  # until a poll finds nothing due
        if free <= 0 or self._stopping.is_set():
            return 0
        # A delivery that ends while the query runs keeps its job out of this round: the
        # query may predate its record and name the event just delivered.
        finished: set[str] = set()
        self._finished_in_poll = finished
        limit = free + len(self._inflight)
        now_ms = self._now_ms()
        try:
            heads = await self._store.due_heads(now_ms, limit)
        finally:
            self._finished_in_poll = None
        if self._stopping.is_set():
            return 0  # close() may already have collected the tasks to wait for
        if self._claimed_elsewhere:
            listed = {e.id for e in heads}
            self._claimed_elsewhere = {i: until for i, until in self._claimed_elsewhere.items()
                                       if i in listed and until > now_ms}
        fresh = [e for e in heads if e.job_id not in self._inflight and e.job_id not in finished
                 and e.id not in self._claimed_elsewhere]
        self._quiet = not heads
        if self._retry_at_ms is not None and self._retry_at_ms <= now_ms:
            self._retry_at_ms = None  # due by now: this poll saw it
        free = self._policy.concurrency - len(self._inflight)
        started, held = 0, 0
        self._held_by.clear()
        for event in fresh:
            if started >= free:
                break
            if not self._may_start(event):  # its account or receiver is at its limit
                self._held_by.update((event.account, _host_of(event.url)))
                held += 1
                continue
            queue = self._known.get(event.job_id)
            if queue:  # offered, and waiting for a slot: the poll starts it
                queue[:] = [e for e in queue if e.id != event.id]
            self._start(event)
            started += 1
        # more may be due than this round could start: the next finished delivery polls.
        # Events held back by a limit are polled again when a delivery of that account or
        # host ends (``_held_by``), those behind an open breaker when it lets a probe through.
        self._starved = (len(fresh) - held > started or bool(finished)
                         or (len(heads) >= limit and started >= free))
        return started

    def _may_start(self, event: OutboxEvent) -> bool:
        """A slot for ``event`` is fair: its account and its receiver are under their limits,
        and the receiver's breaker lets an attempt through."""
        host = _host_of(event.url)
        if self._account_load.get(event.account, 0) >= self._policy.account_limit:
            return False
        if self._host_load.get(host, 0) >= self._policy.host_limit:
            return False
        breaker = self._breakers.get(host)
        return breaker is None or breaker.lets_through(self._clock.monotonic())

    def _start(self, event: OutboxEvent) -> None:
        host = _host_of(event.url)
        breaker = self._breakers.get(host)
        if breaker is not None:
            breaker.probing = True  # open and due for a probe: this attempt is it
        self._holders[event.job_id] = (event.account, host)
        self._account_load[event.account] = self._account_load.get(event.account, 0) + 1
        self._host_load[host] = self._host_load.get(host, 0) + 1
        task = asyncio.create_task(self._deliver(event), name=f"callback-{event.id}")
        self._inflight[event.job_id] = task
        task.add_done_callback(functools.partial(self._finished, event.job_id))

    def _release(self, job: str) -> None:
        account, host = self._holders.pop(job)
        for load, key in ((self._account_load, account), (self._host_load, host)):
            load[key] -= 1
            if not load[key]:
                del load[key]
        if account in self._held_by or host in self._held_by:
            self._wake.set()  # a slot its held-back events may take

    def _finished(self, job: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(job) is task:
            del self._inflight[job]
            self._release(job)
        if self._finished_in_poll is not None:
            self._finished_in_poll.add(job)
        _report_crash(task)
        if job in self._known:
            self._pump(job)
        else:
            self._wake.set()  # the job's next event is the poll's
        for waiting in list(self._waiting):  # a slot is free
            if len(self._inflight) >= self._policy.concurrency:
                break
            self._pump(waiting)
        if self._starved:
            self._wake.set()

    def _running(self) -> list[asyncio.Task[None]]:
        return [t for t in self._inflight.values() if not t.done()]

    # one attempt ---------------------------------------------------------------------------
    async def _deliver(self, event: OutboxEvent) -> None:
        at_ms = self._now_ms()
        if not await self._claim(event, at_ms):
            return
        started = self._clock.monotonic()
        status, error = await self._attempt(event)
        latency_ms = max(round((self._clock.monotonic() - started) * 1000), 0)
        ok = status is not None and 200 <= status < 300
        self._judge_receiver(event, hung=error.startswith("timeout"))
        outcome = decide(self._policy, event, now_ms=self._now_ms(), ok=ok, rand=self._rand())
        attempt = DeliveryAttempt(
            event_id=event.id, job_id=event.job_id, at_ms=at_ms, status_code=status,
            latency_ms=latency_ms, error=error[:MAX_ERROR_LEN],
        )
        job = event.job_id
        missed = self._offers_missed.get(job, 0)
        # delivered, and the job has nothing else to deliver: no delivery waits on this record,
        # so it may share the next file record's transaction (an offer hurries it)
        may_wait = (outcome.delivered and job in self._known and not self._known[job]
                    and not self._stopping.is_set())
        try:
            pending = await self._store.record_attempt(
                attempt, delivered=outcome.delivered, failed=outcome.failed,
                next_attempt_ms=outcome.next_attempt_ms, may_wait=may_wait,
            )
        except LivesnapError as exc:  # the event stays due and is sent again (same EventId)
            self._forget(job)
            logger.warning("cannot record a callback attempt: %s", exc.message,
                           extra={"action": "callback_record", "job_id": event.job_id})
            return
        self._learn(job, pending, missed)
        if not (outcome.delivered or outcome.failed):
            retry = outcome.next_attempt_ms
            self._retry_at_ms = retry if self._retry_at_ms is None else min(retry,
                                                                             self._retry_at_ms)
        _log_attempt(event, attempt, outcome)

    async def _claim(self, event: OutboxEvent, now_ms: int) -> bool:
        """Whether this dispatcher delivers ``event`` now (always, unless it shares the outbox
        with others: then only if its claim on the event succeeds)."""
        if self._claimer is None:
            return True
        lease_ms = round((self._policy.total_timeout_s + CLAIM_MARGIN_S) * 1000)
        store = cast(ClaimingOutbox, self._store)
        try:
            claimed = await store.claim_event(event.id, self._claimer, now_ms, now_ms + lease_ms)
        except LivesnapError as exc:  # the event stays due: the next poll tries again
            logger.warning("cannot claim a callback event: %s", exc.message,
                           extra={"action": "callback_claim", "job_id": event.job_id})
            claimed = False
        if not claimed:
            self._forget(event.job_id)  # its next events are the poll's, in order
            self._claimed_elsewhere[event.id] = now_ms + lease_ms
        return claimed

    def _judge_receiver(self, event: OutboxEvent, *, hung: bool) -> None:
        """Count the receiver's attempts in a row that hung until a timeout (each held a
        slot that long; a refusal or an error status is quick and does not count); open its
        breaker after ``breaker_failures`` of them, and close it at the next answer."""
        host = _host_of(event.url)
        breaker = self._breakers.get(host)
        if not hung:
            if breaker is not None:
                del self._breakers[host]
                logger.info("callback receiver answers again", extra={
                    "action": "callback_breaker_closed", "host": host})
            return
        if breaker is None:
            breaker = self._breakers[host] = _Breaker()
        now = self._clock.monotonic()
        if breaker.failed(now, self._policy.breaker_failures, self._policy.breaker_open_s):
            logger.warning(
                "callback receiver keeps hanging: no attempt for %g s", self._policy.breaker_open_s,
                extra={"action": "callback_breaker_open", "host": host,
                       "failures": breaker.failures})
            asyncio.get_running_loop().call_later(self._policy.breaker_open_s, self._wake.set)

    def _learn(self, job: str, pending: list[str], missed: int) -> None:
        """After a recorded attempt: the job is known if all it still has to deliver was
        offered here, and nothing was left to the poll while the attempt was written."""
        offered = {e.id for e in self._known.get(job, ())}
        if self._offers_missed.get(job, 0) == missed and offered.issuperset(pending):
            self._offers_missed.pop(job, None)
            self._known.setdefault(job, [])
        else:
            self._forget(job)

    async def _attempt(self, event: OutboxEvent) -> tuple[int | None, str]:
        """HTTP status (None if no response) and an error text ("" on a 2xx)."""
        try:
            target = await self._target(event.url)
            key = self._key(event.account)
        except _Refused as exc:
            return None, str(exc)
        body = payload.render(event)
        headers = signing.headers(
            key=key, event_id=event.id, event_type=event.type.value,
            timestamp=int(self._clock.time()), body=body, attempt=event.attempts + 1,
        )
        headers["Host"] = target.host_header
        return await self._post(target, body, headers)

    def _key(self, account: str) -> str:
        try:
            return self._keys.key_for(account)
        except (OSError, ValueError) as exc:
            raise _Refused(f"no callback key for the account: {exc}") from exc

    async def _target(self, raw_url: str) -> _Target:
        """Where ``raw_url``'s POSTs go: its host's addresses, each checked against the blocked
        networks (a name is resolved for each delivery; an IP address is checked once)."""
        known = self._literal_targets.get(raw_url)
        if known is not None:
            return known
        target = await self._checked_target(raw_url)
        if target.literal:
            if len(self._literal_targets) >= LITERAL_TARGETS_KEPT:
                self._literal_targets.clear()
            self._literal_targets[raw_url] = target
        return target

    async def _checked_target(self, raw_url: str) -> _Target:
        try:
            url = httpx.URL(raw_url)
        except httpx.InvalidURL as exc:
            raise _Refused(f"invalid callback URL: {exc}") from exc
        if url.scheme not in CALLBACK_SCHEMES or not url.host:
            raise _Refused("the callback URL must be http or https and name a host")
        addresses = await self._resolve(url.host)
        bad = blocked_address(addresses, self._policy.blocked_networks)
        if bad is not None:
            raise _Refused(
                f"refused: {url.host} resolves to {bad}, which is in a blocked network "
                "(LIVESNAP_BLOCKED_NETWORKS); nothing was sent"
            )
        pinned = [url.copy_with(host=a) for a in addresses if _plain_ip(a)][:MAX_ADDRESSES]
        if not pinned:
            raise _Refused(f"cannot connect to {url.host}: no usable address in {addresses}")
        sni = url.host if url.scheme == "https" else None
        return _Target(urls=pinned, host_header=url.netloc.decode("ascii"), sni_hostname=sni,
                       literal=_plain_ip(url.host))

    async def _resolve(self, host: str) -> list[str]:
        if _plain_ip(host):  # nothing to look up (and no thread to wake for it)
            return [host]
        try:
            async with asyncio.timeout(self._policy.resolve_timeout_s):
                addresses = await self._resolver.resolve(host)
        except TimeoutError as exc:
            raise _Refused(f"cannot resolve {host}: timed out") from exc
        except OSError as exc:
            raise _Refused(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise _Refused(f"cannot resolve {host}: no addresses")
        return addresses

    async def _post(
        self, target: _Target, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str]:
        total = self._policy.total_timeout_s
        try:
            async with asyncio.timeout(total):
                status = await self._post_any(target, body, headers)
        except TimeoutError:
            return None, f"timeout: no response within {total:g} s"
        except httpx.TimeoutException as exc:
            return None, f"timeout: {_describe(exc)}"
        except httpx.HTTPError as exc:
            return None, _describe(exc)
        return status, "" if 200 <= status < 300 else f"HTTP {status}"

    async def _post_any(self, target: _Target, body: bytes, headers: dict[str, str]) -> int:
        """Try the checked addresses in order while connections are refused."""
        *others, last = target.urls
        for url in others:
            try:
                return await self._client.post(url, body, headers, target.sni_hostname)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                logger.debug("address failed, trying the next: %s", _describe(exc),
                             extra={"action": "callback_connect", "address": url.host})
        return await self._client.post(last, body, headers, target.sni_hostname)


class _Breaker:
    """One receiver host's failures in a row, and until when it gets no attempt."""

    def __init__(self) -> None:
        self.failures = 0
        self.open_until: float | None = None
        self.probing = False

    def lets_through(self, now: float) -> bool:
        """Closed; or open, its time is up and no probe is in flight (one at a time)."""
        if self.open_until is None:
            return True
        return now >= self.open_until and not self.probing

    def failed(self, now: float, threshold: int, open_s: float) -> bool:
        """One more failure; True if the breaker opens (again) now."""
        self.failures += 1
        self.probing = False
        if self.failures >= threshold:
            self.open_until = now + open_s
            return True
        return False


@functools.lru_cache(maxsize=4096)
def _host_of(url: str) -> str:
    """The receiver a callback URL names (its host, lower case), for the per-host limits."""
    return (urlsplit(url).hostname or "").lower()


def _plain_ip(address: str) -> bool:
    """An address the URL can carry (IPv6 zone ids such as ``fe80::1%eth0`` cannot)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _log_attempt(event: OutboxEvent, attempt: DeliveryAttempt, outcome: Outcome) -> None:
    extra = {
        "action": "callback_deliver",
        "job_id": event.job_id,
        "event_id": event.id,
        "attempt": event.attempts + 1,
        "status_code": attempt.status_code,
        "latency_ms": attempt.latency_ms,
    }
    if outcome.delivered:
        logger.debug("callback delivered", extra=extra)
    elif outcome.failed:
        logger.error("callback given up: %s", attempt.error, extra=extra)
    else:
        extra["next_attempt_ms"] = outcome.next_attempt_ms
        logger.warning("callback attempt failed: %s", attempt.error, extra=extra)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("callback task crashed", exc_info=task.exception(),
                     extra={"action": "callbacks_crash", "task": task.get_name()})


__all__ = ["CallbackDispatcher", "KeySource", "Outbox", "PoolResolver", "callback_client"]
