"""The per-access-key token bucket (fake clock), and its wiring into the ASGI app."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
from tests.support.signing import rpc_query

from livesnap.api.app import ApiDeps, BodyLimits, create_app
from livesnap.api.ratelimit import KeyRateLimiter, RateLimit, TokenBucket
from livesnap.api.signature import NonceCache
from livesnap.capture.standin import NoCapture
from livesnap.clock import ManualClock
from livesnap.config import AccessKey, KeyRing
from livesnap.jobs.manager import JobManager
from livesnap.store import MemoryStore

KEYS = KeyRing([AccessKey("testid", "testsecret", "acct-a"),
                AccessKey("otherid", "othersecret", "acct-b")])


def test_full_bucket_grants_burst_then_reports_the_wait():
    bucket = TokenBucket(RateLimit(rate=2.0, burst=3), now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token at 2/s
    assert bucket.take(100.25) == pytest.approx(0.25)  # half a token has refilled
    assert bucket.take(100.5) == 0.0
    assert bucket.take(100.5) == pytest.approx(0.5)


def test_refused_requests_take_nothing_and_refill_stops_at_burst():
    bucket = TokenBucket(RateLimit(rate=1.0, burst=2), now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    for _ in range(10):
        assert bucket.take(0.5) == pytest.approx(0.5)  # retrying early does not push it out
    assert bucket.take(1.0) == 0.0
    assert bucket.take(1000.0) == 0.0  # an hour idle refills to the burst, not beyond
    assert bucket.tokens == pytest.approx(1.0)
    assert bucket.take(1000.0) == 0.0
    assert bucket.take(1000.0) > 0


def test_clock_going_backwards_refills_nothing():
    bucket = TokenBucket(RateLimit(rate=1.0, burst=1), now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == pytest.approx(1.0)
    assert bucket.take(50.5) == pytest.approx(0.5)


def test_limiter_keeps_one_bucket_per_key():
    limiter = KeyRateLimiter(RateLimit(rate=1.0, burst=1))
    assert limiter.acquire("a", 0.0) == 0.0
    assert limiter.acquire("a", 0.0) > 0
    assert limiter.acquire("b", 0.0) == 0.0
    assert len(limiter) == 2


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 5), (1.0, 0)])
def test_rate_limit_rejects_nonsense(rate, burst):
    with pytest.raises(ValueError, match=r"rate|burst"):
        RateLimit(rate=rate, burst=burst)


@pytest.fixture
async def throttled():
    clock = ManualClock(start=datetime(2026, 1, 5, 12, tzinfo=UTC).timestamp())
    manager = JobManager(store=MemoryStore(), clock=clock)
    manager.attach_engine(NoCapture())
    await manager.open()
    deps = ApiDeps(manager=manager, keys=KEYS, clock=clock, nonces=NonceCache(),
                   limiter=KeyRateLimiter(RateLimit(rate=0.5, burst=2)),
                   body=BodyLimits(max_bytes=1000))
    transport = httpx.ASGITransport(app=create_app(deps))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client, clock
    await manager.close(1)


async def _get(client, clock, key=("testid", "testsecret")):
    now = datetime.fromtimestamp(clock.time(), tz=UTC)
    query = rpc_query("ListLiveSnapshotTemplates", {}, key_id=key[0], secret=key[1], now=now)
    return await client.get("/?" + query)


async def test_over_quota_answers_throttling_user_with_retry_after(throttled):
    client, clock = throttled
    assert [(await _get(client, clock)).status_code for _ in range(2)] == [200, 200]
    resp = await _get(client, clock)
    assert resp.status_code == 429
    body = resp.json()
    assert body["Code"] == "Throttling.User"
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert "0.5 requests per second" in body["Message"]
    assert resp.headers["x-acs-retry-after"] == "2000"  # one token at 0.5/s, in milliseconds
    clock.advance(1.5)
    again = await _get(client, clock)
    assert again.headers["x-acs-retry-after"] == "500"
    assert (await _get(client, clock, ("otherid", "othersecret"))).status_code == 200
    clock.advance(0.5)
    assert (await _get(client, clock)).status_code == 200


async def test_quota_is_checked_after_the_signature(throttled):
    client, clock = throttled
    for _ in range(5):  # forged requests cannot drain a key's bucket
        forged = await _get(client, clock, ("testid", "wrong"))
        assert forged.json()["Code"] == "SignatureDoesNotMatch"
    assert (await _get(client, clock)).status_code == 200


async def test_body_over_the_configured_limit_is_413(throttled):
    client, clock = throttled
    now = datetime.fromtimestamp(clock.time(), tz=UTC)
    body = [("TemplateName", "x" * 1200)]
    query = rpc_query("CreateLiveSnapshotTemplate", {}, method="POST", body=body, now=now)
    resp = await client.post("/?" + query, content=b"TemplateName=" + b"x" * 1200,
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413
    assert resp.json()["Code"] == "InvalidParameter"
    assert "larger than 1000 bytes" in resp.json()["Message"]
    assert resp.headers["connection"] == "close"
