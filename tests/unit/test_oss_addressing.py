"""OSS addressing and SigV4 signing, checked offline on the requests obstore really sends.

No local server speaks OSS (infra.md §3), so the sink is pointed at a loopback HTTPS proxy
through obstore's client options (``proxy_url`` + a test CA as ``root_certificate``). The
recorder accepts the ``CONNECT``, terminates TLS with a certificate for the OSS host, records
the request and answers like a store. The test then recomputes the AWS Signature Version 4
from the recorded request with the configured secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import ssl
from dataclasses import dataclass, field

import pytest
from tests.support.tls import make_certificates

from livesnap.config import StorageCredential
from livesnap.outputs.base import ObjectMeta
from livesnap.outputs.objectstore import ObjectStoreSink

SECRET = "oss-secret-for-the-recorder"
DELETED = (b'<?xml version="1.0" encoding="UTF-8"?><DeleteResult '
           b'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Deleted><Key>k</Key></Deleted>'
           b"</DeleteResult>")
AUTH = re.compile(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/s3/aws4_request, "
                  r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$")


@dataclass
class Request:
    connect: str
    method: str
    target: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class Recorder:
    """A loopback CONNECT proxy that plays the object store behind TLS."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.requests: list[Request] = []
        self.server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Recorder:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        # wait_closed does not close the connections a handler still holds (the client's
        # pooled keep-alive one): left to the garbage collector, their transports warned
        # "unclosed transport" during whatever test ran next on this worker. ``close`` is not
        # enough either: on a TLS connection it starts the TLS shutdown and closes the socket
        # only when the client answers it, which a test that has ended never waits for.
        for writer in list(self._writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            connect = (await reader.readline()).decode().strip()
            await _read_headers(reader)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self.tls)
            while await self._one_request(connect, reader, writer):
                pass
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass  # the client hung up: nothing to record
        finally:
            self._writers.discard(writer)
            writer.transport.abort()  # the socket now, not after a TLS shutdown (above)

    async def _one_request(self, connect: str, reader, writer) -> bool:
        line = (await reader.readline()).decode().strip()
        if not line:
            return False
        method, target, _ = line.split(" ", 2)
        headers = await _read_headers(reader)
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.requests.append(Request(connect, method, target, headers, body))
        answer = DELETED if method == "POST" else b""
        writer.write(b'HTTP/1.1 200 OK\r\nETag: "e"\r\nContent-Type: application/xml\r\n'
                     + f"Content-Length: {len(answer)}\r\n\r\n".encode() + answer)
        await writer.drain()
        return True


async def _read_headers(reader: asyncio.StreamReader) -> dict[str, str]:
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def sigv4_signature(req: Request, *, secret: str, region: str, signed: list[str]) -> str:
    """The SigV4 signature of a recorded request (AWS's documented algorithm, written here)."""
    path, _, query = req.target.partition("?")
    canonical_query = "&".join(sorted(q if "=" in q else f"{q}=" for q in query.split("&") if q))
    canonical = "\n".join([
        req.method, path, canonical_query,
        "".join(f"{h}:{req.headers[h]}\n" for h in signed), ";".join(signed),
        req.headers["x-amz-content-sha256"],
    ])
    amz_date = req.headers["x-amz-date"]
    scope = f"{amz_date[:8]}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def tls_parts(tmp_path):
    hosts = ["bucket-1.oss-cn-shanghai.aliyuncs.com", "snaps.s3.eu-west-1.amazonaws.com"]
    ca, cert, key = make_certificates(hosts)
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return ca.decode(), context


def sink_via(recorder: Recorder, ca: str, cred: StorageCredential, endpoint: str, bucket: str):
    return ObjectStoreSink.for_target(
        cred, endpoint, bucket,
        client_options={"proxy_url": recorder.url, "root_certificate": ca},
    )


def check_signed(req: Request, *, access_key: str, region: str) -> list[str]:
    match = AUTH.match(req.headers["authorization"])
    assert match, req.headers["authorization"]
    key_id, date, scope_region, signed, signature = match.groups()
    assert (key_id, date, scope_region) == (access_key, req.headers["x-amz-date"][:8], region)
    names = signed.split(";")
    assert "host" in names and "x-amz-date" in names and "x-amz-content-sha256" in names
    assert signature == sigv4_signature(req, secret=SECRET, region=region, signed=names)
    return names


async def test_oss_put_is_virtual_hosted_https_signed_v4_for_the_region_id(
    tls_parts, monkeypatch
):
    # ambient AWS settings must not leak into an OSS target's requests
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ambient-token")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    ca, tls = tls_parts
    cred = StorageCredential(storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com",
                             bucket="*", access_key_id="LTAI-test", access_key_secret=SECRET)
    meta = ObjectMeta(cache_control="no-cache", metadata={"job-id": "J1", "capture-time-ms": "7"})
    async with Recorder(tls) as recorder:
        sink = sink_via(recorder, ca, cred, "oss-cn-shanghai.aliyuncs.com", "bucket-1")
        await sink.put("snapshot/J1.jpg", b"\xff\xd8jpeg", meta=meta)
        await sink.delete("snapshot/J1/1.jpg")
    put, delete = recorder.requests
    assert put.connect == "CONNECT bucket-1.oss-cn-shanghai.aliyuncs.com:443 HTTP/1.1"
    assert put.headers["host"] == "bucket-1.oss-cn-shanghai.aliyuncs.com"
    assert (put.method, put.target, put.body) == ("PUT", "/snapshot/J1.jpg", b"\xff\xd8jpeg")
    assert put.headers["content-type"] == "image/jpeg"
    assert put.headers["cache-control"] == "no-cache"
    assert put.headers["x-amz-meta-job-id"] == "J1"
    assert put.headers["x-amz-meta-capture-time-ms"] == "7"
    # a signed payload, never aws-chunked (OSS rejects it)
    assert put.headers["x-amz-content-sha256"] == hashlib.sha256(b"\xff\xd8jpeg").hexdigest()
    assert "content-encoding" not in put.headers and "x-amz-security-token" not in put.headers
    signed = check_signed(put, access_key="LTAI-test", region="cn-shanghai")
    assert {"content-type", "cache-control", "x-amz-meta-job-id"} <= set(signed)
    assert delete.headers["host"] == "bucket-1.oss-cn-shanghai.aliyuncs.com"
    assert delete.method == "POST" and b"<Key>snapshot/J1/1.jpg</Key>" in delete.body
    check_signed(delete, access_key="LTAI-test", region="cn-shanghai")
    assert SECRET not in repr(sink)


async def test_s3_on_aws_is_virtual_hosted_with_the_region_of_the_host(tls_parts):
    ca, tls = tls_parts
    cred = StorageCredential(storage_type="s3", endpoint="s3.eu-west-1.amazonaws.com",
                             bucket="snaps", access_key_id="AKIA-test", access_key_secret=SECRET)
    async with Recorder(tls) as recorder:
        sink = sink_via(recorder, ca, cred, "s3.eu-west-1.amazonaws.com", "snaps")
        await sink.put("a/b.jpg", b"x", meta=ObjectMeta())
    (put,) = recorder.requests
    assert put.headers["host"] == "snaps.s3.eu-west-1.amazonaws.com" and put.target == "/a/b.jpg"
    assert "cache-control" not in put.headers
    check_signed(put, access_key="AKIA-test", region="eu-west-1")
