"""When to retry a callback and when to give up (pure: time and the random draw come in).

A failed attempt ``n`` (0-based) is retried after ``Backoff.delay(n)``: exponential, capped,
with jitter. An event is given up (marked failed) once its next attempt would fall after
``created + max_age`` and it has had at least ``min_attempts`` attempts in this round. The
second condition gives events that are already old (after a long outage of livesnap itself,
or replayed by the user, which resets the count) a fair number of tries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livesnap.jobs.models import OutboxEvent
from livesnap.jobs.retry import Backoff
from livesnap.jobs.urls import Network

DEFAULT_BACKOFF = Backoff(base_s=1.0, factor=2.0, cap_s=300.0, jitter=0.5)


@dataclass(frozen=True, kw_only=True)
class DeliveryPolicy:
    """Retry schedule, time limits and concurrency of the dispatcher."""

    backoff: Backoff = field(default_factory=lambda: DEFAULT_BACKOFF)
    max_age_s: float = 86_400.0
    min_attempts: int = 10
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 15.0  # one attempt, end to end (a slow-drip receiver)
    resolve_timeout_s: float = 5.0
    concurrency: int = 16
    # at most this many deliveries in flight per account and per receiver host (0: half of
    # ``concurrency``), so that one account's slow or hanging receivers leave the others slots
    per_account: int = 0
    per_host: int = 0
    # a host whose last ``breaker_failures`` attempts all hung until their timeout gets no
    # attempt for ``breaker_open_s``, then one (a probe): its events wait instead of holding
    # slots (quick failures, a refused connection or an error status, do not count)
    breaker_failures: int = 10
    breaker_open_s: float = 30.0
    poll_interval_s: float = 0.5
    # after a poll that found nothing due; None: poll_interval_s. Longer only where every
    # writer of the outbox hands its events over (offer) or says so (notify): one node.
    idle_poll_interval_s: float | None = None
    blocked_networks: tuple[Network, ...] = ()
    retention_s: float = 7 * 86_400.0  # delivered and given-up events are kept this long; 0 = ever
    prune_every_s: float = 600.0

    @property
    def account_limit(self) -> int:
        return self.per_account or max(1, self.concurrency // 2)

    @property
    def host_limit(self) -> int:
        return self.per_host or max(1, self.concurrency // 2)

    @property
    def idle_poll_s(self) -> float:
        return self.poll_interval_s if self.idle_poll_interval_s is None \
            else self.idle_poll_interval_s

    def __post_init__(self) -> None:
        positive = (self.max_age_s, self.connect_timeout_s, self.read_timeout_s,
                    self.total_timeout_s, self.resolve_timeout_s, self.poll_interval_s)
        if min(positive) <= 0:
            raise ValueError("DeliveryPolicy times must be positive")
        if self.idle_poll_interval_s is not None and (
                self.idle_poll_interval_s < self.poll_interval_s):
            raise ValueError("idle_poll_interval_s may not be shorter than poll_interval_s")
        if self.retention_s < 0 or self.prune_every_s <= 0:
            raise ValueError("retention_s must be >= 0 and prune_every_s positive")
        if self.min_attempts < 1 or self.concurrency < 1:
            raise ValueError("min_attempts and concurrency must be at least 1")
        if self.per_account < 0 or self.per_host < 0 or self.breaker_failures < 1 \
                or self.breaker_open_s <= 0:
            raise ValueError("per_account and per_host must be >= 0, breaker_failures >= 1 "
                             "and breaker_open_s positive")


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What to write back after one attempt."""

    delivered: bool
    failed: bool
    next_attempt_ms: int


def decide(
    policy: DeliveryPolicy, event: OutboxEvent, *, now_ms: int, ok: bool, rand: float
) -> Outcome:
    """The event's state after an attempt at ``now_ms`` (``rand`` uniform in [0, 1))."""
    if ok:
        return Outcome(delivered=True, failed=False, next_attempt_ms=now_ms)
    delay_ms = round(policy.backoff.delay(event.attempts, rand) * 1000)
    next_ms = now_ms + max(delay_ms, 1)
    too_old = next_ms > event.created_ms + round(policy.max_age_s * 1000)
    if too_old and event.attempts + 1 >= policy.min_attempts:
        return Outcome(delivered=False, failed=True, next_attempt_ms=now_ms)
    return Outcome(delivered=False, failed=False, next_attempt_ms=next_ms)


__all__ = ["DEFAULT_BACKOFF", "DeliveryPolicy", "Outcome", "decide"]
