"""The obstore sink against a real S3 server (SeaweedFS, auth on): the ``SnapshotSink`` contract
plus what object storage adds (content type, cache headers, metadata, clear auth errors)."""

from __future__ import annotations

import uuid

import pytest
from tests.support.seaweed import BUCKET, SECRET_KEY, SeaweedServer
from tests.support.servers import free_port

from livesnap.config import StorageCredential
from livesnap.errors import OutputError, OutputUnavailable, VersionConflict
from livesnap.outputs.base import ObjectMeta
from livesnap.outputs.objectstore import ObjectStoreSink, Timeouts

pytestmark = pytest.mark.integration

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"


def sink_for(server: SeaweedServer, *, secret: str = SECRET_KEY, endpoint: str | None = None):
    entry = server.credential(secret=secret)
    if endpoint is not None:
        entry["endpoint"] = endpoint
    cred = StorageCredential(**entry)
    return ObjectStoreSink.for_target(cred, cred.endpoint, BUCKET,
                                      timeouts=Timeouts(retries=0, retry_window_s=2))


@pytest.fixture
def prefix() -> str:
    return f"contract/{uuid.uuid4().hex[:12]}"


async def test_put_keeps_type_cache_headers_and_metadata(seaweed, prefix):
    sink = sink_for(seaweed)
    meta = ObjectMeta(cache_control="no-cache",
                      metadata={"job-id": "job-1", "capture-time-ms": "1767268800123"})
    await sink.put(f"{prefix}/over.jpg", JPEG, meta=meta)
    await sink.put(f"{prefix}/seq.jpg", JPEG, meta=ObjectMeta(metadata={"job-id": "job-1"}))
    data, attributes = await sink.read(f"{prefix}/over.jpg")
    assert data == JPEG
    assert attributes["Content-Type"] == "image/jpeg"
    assert attributes["Cache-Control"] == "no-cache"
    assert attributes["job-id"] == "job-1"
    assert attributes["capture-time-ms"] == "1767268800123"
    _, seq_attributes = await sink.read(f"{prefix}/seq.jpg")
    assert "Cache-Control" not in seq_attributes and seq_attributes["Content-Type"] == "image/jpeg"


async def test_put_overwrites_and_delete_removes(seaweed, prefix):
    sink = sink_for(seaweed)
    key = f"{prefix}/x.jpg"
    await sink.put(key, b"one", meta=ObjectMeta())
    await sink.put(key, b"two", meta=ObjectMeta())
    assert (await sink.read(key))[0] == b"two"
    await sink.delete(key)
    with pytest.raises(OutputError, match="not found") as info:
        await sink.read(key)
    assert not info.value.retryable
    await sink.delete(key)  # a missing object is not an error


async def test_wrong_credentials_are_a_clear_error_that_a_retry_cannot_fix(seaweed, prefix):
    sink = sink_for(seaweed, secret="not-the-secret")
    with pytest.raises(OutputError) as info:
        await sink.put(f"{prefix}/x.jpg", JPEG, meta=ObjectMeta())
    message = info.value.message
    assert not info.value.retryable
    assert "refused the credentials (SignatureDoesNotMatch)" in message
    assert "LIVESNAP_STORAGE_CONFIG" in message and f"bucket {BUCKET}" in message
    assert "not-the-secret" not in message
    with pytest.raises(OutputError, match="refused the credentials"):
        await sink.delete(f"{prefix}/x.jpg")


async def test_an_unreachable_store_is_retryable():
    dead = f"http://127.0.0.1:{free_port()}"
    cred = StorageCredential(storage_type="s3", endpoint=dead, bucket=BUCKET,
                             access_key_id="ak", access_key_secret="sk")
    sink = ObjectStoreSink.for_target(cred, dead, BUCKET, timeouts=Timeouts(retries=0))
    with pytest.raises(OutputUnavailable) as info:
        await sink.put("x.jpg", JPEG, meta=ObjectMeta())
    assert info.value.retryable
    assert "is unreachable (connection refused)" in info.value.message


async def test_a_conditional_write_names_the_version_it_replaces(seaweed, prefix):
    sink = sink_for(seaweed)
    key = f"{prefix}/over.jpg"
    assert await sink.version(key) is None
    first = await sink.put_over(key, b"one", meta=ObjectMeta(), version=None)
    assert first and await sink.version(key) == first
    with pytest.raises(VersionConflict):  # None: only where there is no object yet
        await sink.put_over(key, b"late create", meta=ObjectMeta(), version=None)
    second = await sink.put_over(key, b"two", meta=ObjectMeta(cache_control="no-cache"),
                                 version=first)
    assert second != first
    with pytest.raises(VersionConflict) as info:  # a writer still holding the first version
        await sink.put_over(key, b"stale", meta=ObjectMeta(), version=first)
    assert not info.value.retryable
    data, attributes = await sink.read(key)
    assert data == b"two" and attributes["Cache-Control"] == "no-cache"
    await sink.delete(key)
    with pytest.raises(VersionConflict):  # gone: no version matches
        await sink.put_over(key, b"three", meta=ObjectMeta(), version=second)
