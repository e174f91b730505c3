"""How many wrong logins the console takes, per access key id and per client address.

Each access key id and each client address has a leaky bucket of failed logins: a wrong
secret adds one, and the bucket drains at ``capacity`` per ``window_s``. While either bucket
of a login is full, the login is refused before its secret is compared, with the time to
wait. A right secret adds nothing. Guessing a secret therefore runs at a few tries a minute
whatever the number of addresses used, and one address cannot try many keys quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

PER_KEY = 10  # failed logins per access key id ...
PER_ADDRESS = 30  # ... and per client address (a proxy may put many users behind one) ...
WINDOW_S = 300.0  # ... that drain in this time
MAX_TRACKED = 10_000  # buckets kept; drained ones go first when there are more


@dataclass
class _Bucket:
    level: float
    at_s: float


class LoginAttempts:
    """Leaky buckets of failed logins (in memory, per process)."""

    def __init__(
        self, *, per_key: int = PER_KEY, per_address: int = PER_ADDRESS,
        window_s: float = WINDOW_S, max_tracked: int = MAX_TRACKED,
    ) -> None:
        self._capacity = {"key": per_key, "address": per_address}
        self._window_s = window_s
        self._max_tracked = max_tracked
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def wait_s(self, key_id: str, address: str, now_s: float) -> float:
        """Seconds until a login with this key id from this address may be tried (0: now)."""
        return max(self._wait(("key", key_id), now_s), self._wait(("address", address), now_s))

    def failed(self, key_id: str, address: str, now_s: float) -> None:
        for name in (("key", key_id), ("address", address)):
            bucket = self._drained(name, now_s)
            bucket.level += 1
            self._buckets[name] = bucket
        self._bound(now_s)

    def _rate(self, kind: str) -> float:
        return self._capacity[kind] / self._window_s

    def _drained(self, name: tuple[str, str], now_s: float) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            return _Bucket(0.0, now_s)
        level = max(0.0, bucket.level - (now_s - bucket.at_s) * self._rate(name[0]))
        return _Bucket(level, now_s)

    def _wait(self, name: tuple[str, str], now_s: float) -> float:
        over = self._drained(name, now_s).level - (self._capacity[name[0]] - 1)
        return max(0.0, over / self._rate(name[0]))

    def _bound(self, now_s: float) -> None:
        if len(self._buckets) <= self._max_tracked:
            return
        # drop the emptiest tenth at once, so that a flood of addresses sorts rarely
        by_level = sorted(self._buckets, key=lambda n: self._drained(n, now_s).level)
        for name in by_level[: len(self._buckets) - self._max_tracked * 9 // 10]:
            del self._buckets[name]
