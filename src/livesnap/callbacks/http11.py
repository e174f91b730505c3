"""The callback POST: a small HTTP/1.1 client on asyncio streams, and an httpx one.

Why not httpx for every callback: in ``bench/snapshot_path.py`` a callback POST through
``httpx.AsyncClient`` cost about 2.4 ms of the service's CPU (its request and response
objects, cookie jar, auth and redirect layers, httpcore's pool and anyio's streams, for
one small JSON body), against about 0.7 ms on plain asyncio streams. A callback needs
little of HTTP: one POST with a body of known length to an address already checked and
pinned, the status code, and a short answer read so that the connection can carry the
next one. ``CallbackClient`` does exactly that and nothing more:

* plain ``http`` connections are kept for ``idle_expiry_s`` and reused per address and
  port (one HTTP/1.1 connection may carry requests for any host name: ``Host`` names it);
  a kept connection that the receiver closed meanwhile is replaced once, transparently;
* ``https`` connections verify the certificate for the callback's host name (``sni``) and
  are never reused: a TLS connection verified for one name must not carry another's;
* no redirects (a 3xx is an answer like any other), no proxy, no cookies, no decoding;
* at most ``MAX_HEAD_BYTES`` of answer head and ``MAX_ANSWER_BYTES`` of body are read:
  past that the connection is closed instead of reused (a receiver cannot make livesnap
  download a large or endless answer); a break while the body is read does not undo the
  status already received.

Failures are raised as httpx's exception types (``ConnectError``, ``ReadTimeout``, ...),
so the dispatcher, its delivery log and its tests see one vocabulary whichever client
posted. ``HttpxPoster`` posts through an ``httpx.AsyncClient`` instead (tests give it a
``MockTransport``).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from typing import Protocol

import httpx

from livesnap import __version__

logger = logging.getLogger(__name__)

KEEPALIVE_EXPIRY_S = 2.0  # under the usual 5 s idle timeout of receivers (uvicorn, Node)
MAX_ANSWER_BYTES = 16 * 1024  # of an answer's body read so that its connection is reused
ANSWER_BODY_S = 1.0  # longest wait for an answer's body after its head (then: not reused)
MAX_HEAD_BYTES = 16 * 1024  # status line and headers of an answer
USER_AGENT = f"livesnap/{__version__}"


class Poster(Protocol):
    """Sends one callback POST to an already checked, pinned URL; the status code."""

    async def post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], sni: str | None
    ) -> int: ...

    async def aclose(self) -> None: ...


class _Stale(Exception):
    """A kept connection was closed by the receiver before it answered: use a new one."""


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    idle_since: float = field(default=0.0)

    def usable(self, now: float, expiry_s: float) -> bool:
        return (now - self.idle_since < expiry_s and not self.reader.at_eof()
                and not self.writer.is_closing())

    def close(self) -> None:
        self.writer.transport.abort()


class CallbackClient:
    """The production ``Poster`` (see the module's doc)."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle: int,
        idle_expiry_s: float = KEEPALIVE_EXPIRY_S,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.max_idle = max_idle
        self.idle_expiry_s = idle_expiry_s
        self._tls = tls
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._swept = 0.0
        self._closed = False

    async def post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], sni: str | None
    ) -> int:
        https = url.scheme == "https"
        host, port = url.host, url.port or (443 if https else 80)
        request = _request(url, body, headers, keep_alive=not https)
        conn = None if https else self._take(host, port)
        if conn is not None:
            try:
                return await self._exchange(conn, request, (host, port))
            except _Stale:
                logger.debug("kept callback connection was closed by the receiver",
                             extra={"action": "callback_connect", "address": host})
        conn = await self._connect(host, port, sni, https)
        try:
            return await self._exchange(conn, request, None if https else (host, port))
        except _Stale as exc:  # not kept: never raised for a new connection
            raise httpx.RemoteProtocolError(str(exc)) from exc

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # connections ---------------------------------------------------------------------------
    def _take(self, host: str, port: int) -> _Conn | None:
        now = time.monotonic()
        if now - self._swept > self.idle_expiry_s:
            self._sweep(now)
        conns = self._idle.get((host, port))
        while conns:
            conn = conns.pop()
            if conn.usable(now, self.idle_expiry_s):
                conn.reused = True
                return conn
            conn.close()
        return None

    def _keep(self, key: tuple[str, int], conn: _Conn) -> None:
        conns = self._idle.setdefault(key, [])
        if self._closed or len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def _sweep(self, now: float) -> None:
        """Close kept connections past their expiry, whichever receiver they go to."""
        self._swept = now
        for key, conns in list(self._idle.items()):
            fresh = []
            for conn in conns:
                if conn.usable(now, self.idle_expiry_s):
                    fresh.append(conn)
                else:
                    conn.close()
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    async def _connect(self, host: str, port: int, sni: str | None, https: bool) -> _Conn:
        tls = None
        if https:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=sni if https else None,
                    limit=MAX_HEAD_BYTES)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"no connection within {self.connect_timeout_s:g} s") \
                from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return _Conn(reader, writer)

    # one request ---------------------------------------------------------------------------
    async def _exchange(self, conn: _Conn, request: bytes, keep: tuple[str, int] | None) -> int:
        """Send ``request`` on ``conn`` and read the answer; the status. The connection is
        kept under ``keep`` if the answer allows it, else closed."""
        reusable = False
        try:
            conn.writer.write(request)
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    await conn.writer.drain()
            except TimeoutError as exc:
                raise httpx.WriteTimeout("the receiver did not take the request in time") \
                    from exc
            except OSError as exc:
                if conn.reused:
                    raise _Stale(str(exc)) from exc
                raise httpx.WriteError(str(exc) or type(exc).__name__) from exc
            status, version, fields = await self._head(conn)
            reusable = version == b"HTTP/1.1" and fields.get(b"connection") != b"close"
            try:
                # the status is the answer: a body that trickles only costs the connection
                async with asyncio.timeout(min(self.read_timeout_s, ANSWER_BODY_S)):
                    complete = await _read_body(conn.reader, status, fields)
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                logger.debug("callback answer's body not read: %s", type(exc).__name__,
                             extra={"action": "callback_answer"})
                complete = False
            reusable = reusable and complete
            return status
        finally:
            if reusable and keep is not None:
                self._keep(keep, conn)
            else:
                conn.close()

    async def _head(self, conn: _Conn) -> tuple[int, bytes, dict[bytes, bytes]]:
        """The answer's status line and headers (interim 1xx answers skipped)."""
        while True:
            try:
                async with asyncio.timeout(self.read_timeout_s):
                    head = await conn.reader.readuntil(b"\r\n\r\n")
            except TimeoutError as exc:
                raise httpx.ReadTimeout(f"no answer within {self.read_timeout_s:g} s") from exc
            except asyncio.IncompleteReadError as exc:
                if conn.reused and not exc.partial:
                    raise _Stale("Server disconnected without sending a response.") from exc
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a response.") from exc
            except asyncio.LimitOverrunError as exc:
                raise httpx.RemoteProtocolError("answer head too long") from exc
            except OSError as exc:
                if conn.reused:
                    raise _Stale(str(exc)) from exc
                raise httpx.ReadError(str(exc) or type(exc).__name__) from exc
            status, version, fields = _parse_head(head)
            if not 100 <= status < 200:
                return status, version, fields


def _request(url: httpx.URL, body: bytes, headers: dict[str, str], *, keep_alive: bool) -> bytes:
    fields = {"User-Agent": USER_AGENT, **headers, "Content-Length": str(len(body))}
    if not keep_alive:
        fields["Connection"] = "close"
    lines = [f"POST {url.raw_path.decode('ascii')} HTTP/1.1"]
    for name, value in fields.items():
        if "\r" in value or "\n" in value or ":" in name:
            raise httpx.LocalProtocolError(f"header {name!r} is not a valid HTTP field")
        lines.append(f"{name}: {value}")
    head = "\r\n".join(lines)
    try:
        return head.encode("ascii") + b"\r\n\r\n" + body
    except UnicodeEncodeError as exc:
        raise httpx.LocalProtocolError("a header is not ASCII") from exc


def _parse_head(head: bytes) -> tuple[int, bytes, dict[bytes, bytes]]:
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x answer: {status_line[:60]!r}")
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise httpx.RemoteProtocolError("malformed answer header")
        fields[name.strip().lower()] = value.strip().lower()
    return int(parts[1]), parts[0], fields


async def _read_body(reader: asyncio.StreamReader, status: int,
                     fields: dict[bytes, bytes]) -> bool:
    """Read the answer's body if it is short; True if it was read whole (the connection can
    carry another request)."""
    if status in (204, 304):
        return True
    if fields.get(b"transfer-encoding", b"identity") != b"identity":
        if fields[b"transfer-encoding"] != b"chunked":
            return False
        return await _read_chunked(reader)
    length = fields.get(b"content-length")
    if length is None:  # the body ends with the connection: read a little, never reuse
        await reader.read(MAX_ANSWER_BYTES)
        return False
    size = int(length)  # ValueError: malformed, not reused
    if size > MAX_ANSWER_BYTES:
        return False
    await reader.readexactly(size)
    return True


async def _read_chunked(reader: asyncio.StreamReader) -> bool:
    received = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip() or b"x", 16)
        received += size
        if received > MAX_ANSWER_BYTES:
            return False
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return True
        await reader.readexactly(size + 2)


class HttpxPoster:
    """A ``Poster`` over an ``httpx.AsyncClient`` (tests give it a ``MockTransport``)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def post(
        self, url: httpx.URL, body: bytes, headers: dict[str, str], sni: str | None
    ) -> int:
        extensions = {"sni_hostname": sni} if sni else None
        request = self.client.stream(
            "POST", url, content=body, headers=headers, extensions=extensions
        )
        async with request as response:
            await _drain(response)
            return response.status_code

    async def aclose(self) -> None:
        await self.client.aclose()


async def _drain(response: httpx.Response) -> None:
    """Read a short answer's body (up to ``MAX_ANSWER_BYTES``), so that its connection can
    carry the next callback; a break while it is read does not undo the status."""
    received = 0
    if response.is_stream_consumed:  # an answer made in memory (tests' mock transport)
        return
    try:
        async for chunk in response.aiter_raw():
            received += len(chunk)
            if received > MAX_ANSWER_BYTES:
                return
    except httpx.HTTPError as exc:
        logger.debug("callback answer's body not read: %s", type(exc).__name__,
                     extra={"action": "callback_answer"})


__all__ = ["KEEPALIVE_EXPIRY_S", "MAX_ANSWER_BYTES", "CallbackClient", "HttpxPoster", "Poster"]
