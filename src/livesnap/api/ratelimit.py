"""Request rate per access key: a token bucket per ``AccessKeyId`` (pure; time is passed in).

Each key has a bucket of ``burst`` tokens that refills at ``rate`` tokens per second; a request
takes one token. An empty bucket means the caller waits until one token has refilled, and
:meth:`KeyRateLimiter.acquire` returns that wait so the API can answer ``Throttling.User``
with ``x-acs-retry-after``. Only requests whose signature verified reach the limiter, so the
number of buckets is bounded by the configured access keys.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KeyRateLimiter", "RateLimit", "TokenBucket"]


@dataclass(frozen=True, kw_only=True)
class RateLimit:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: int

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("rate must be positive (leave the limiter out to disable it)")
        if self.burst < 1:
            raise ValueError("burst must be at least 1")


class TokenBucket:
    """One bucket, full at creation. ``now`` is a monotonic reading in seconds."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self._limit = limit
        self._tokens = float(limit.burst)
        self._updated = now

    @property
    def tokens(self) -> float:
        """Tokens left at the last update (refill is applied on the next call)."""
        return self._tokens

    def take(self, now: float) -> float:
        """Take one token: 0.0 if granted, else the seconds until one is available.

        A refused request takes nothing, so a client that keeps retrying early cannot push
        its own wait further out. A clock that goes backwards refills nothing.
        """
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(self._limit.burst), self._tokens + elapsed * self._limit.rate)
        self._updated = max(self._updated, now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._limit.rate


class KeyRateLimiter:
    """A :class:`TokenBucket` per access key id, created on first use.

    Not thread-safe: it is called from the event loop only, and :meth:`acquire` does not
    await, so two requests cannot interleave inside it.
    """

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, access_key_id: str, now: float) -> float:
        """0.0 if the key may make a request now, else the seconds it has to wait."""
        bucket = self._buckets.get(access_key_id)
        if bucket is None:
            bucket = self._buckets[access_key_id] = TokenBucket(self.limit, now)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)
