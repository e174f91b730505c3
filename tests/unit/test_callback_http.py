"""The callback client (``callbacks/http11.py``) against scripted HTTP servers on loopback.

Each server answers every request with the next of its scripted answers (raw bytes, so that
the odd answers a receiver may give can be played: chunked, no length, HTTP/1.0, interim
100, a closed connection, silence) and records what it received and on which connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from tests.support.tls import make_certificates

from livesnap.callbacks.http11 import MAX_ANSWER_BYTES, USER_AGENT, CallbackClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CLOSE = b"close"  # close the connection instead of answering
SILENT = b"silent"  # read the request, answer nothing


@dataclass
class Seen:
    connection: int
    head: list[str]
    body: bytes


@dataclass
class Server:
    script: list[bytes]
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")[:-2]
                length = next(int(v.split(":")[1]) for v in lines
                              if v.lower().startswith("content-length:"))
                self.seen.append(Seen(number, lines, await reader.readexactly(length)))
                answer = self.script.pop(0) if self.script else OK
                if answer == CLOSE:
                    break
                if answer == SILENT:
                    await asyncio.sleep(3600)
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass  # the client went away: the connection ends
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(*script: bytes, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server(list(script), tls)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        # wait_closed leaves the connections a handler still holds (a kept-alive one, or one
        # the script keeps SILENT): closed here, not by the garbage collector in a later test
        for writer in server.writers:
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await listener.wait_closed()


def client(**changes) -> CallbackClient:
    options = {"connect_timeout_s": 2.0, "read_timeout_s": 2.0, "max_idle": 4, **changes}
    return CallbackClient(**options)


async def post(c: CallbackClient, server: Server, *, path: str = "/cb",
               scheme: str = "http", sni: str | None = None, body: bytes = b'{"a":1}') -> int:
    url = httpx.URL(f"{scheme}://127.0.0.1:{server.port}{path}")
    return await c.post(url, body, {"Host": "hooks.test", "X-Test": "1"}, sni)


async def test_the_request_carries_path_query_host_length_and_body_unchanged():
    async with serving() as server:
        c = client()
        body = '{"JobName":"カメラ"}'.encode()
        assert await post(c, server, path="/cb/in?x=1&y=%20", body=body) == 200
        await c.aclose()
    [seen] = server.seen
    assert seen.head[0] == "POST /cb/in?x=1&y=%20 HTTP/1.1"
    fields = dict(line.split(": ", 1) for line in seen.head[1:])
    assert fields["Host"] == "hooks.test" and fields["X-Test"] == "1"
    assert fields["Content-Length"] == str(len(body)) and fields["User-Agent"] == USER_AGENT
    assert "Connection" not in fields and seen.body == body


@pytest.mark.parametrize(("answer", "status", "kept"), [
    (OK, 200, True),
    (b"HTTP/1.1 204 No Content\r\n\r\n", 204, True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n3;x=y\r\n!!!\r\n0\r\n\r\n",
     200, True),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 201, True),
    (b"HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\nfail", 500, True),
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", 200, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
    # a redirect is an answer like any other, never followed
    (b"HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/\r\nContent-Length: 0\r\n\r\n",
     302, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_ANSWER_BYTES + 1)
     + b"x" * (MAX_ANSWER_BYTES + 1), 200, False),
])
async def test_an_answer_is_read_and_its_connection_kept_only_when_it_can_carry_another(
        answer, status, kept):
    async with serving(answer) as server:
        c = client()
        assert await post(c, server) == status
        assert await post(c, server) == 200
        await c.aclose()
    assert len(server.seen) == 2
    assert server.connections == (1 if kept else 2)


async def test_an_answer_without_a_length_is_read_to_its_end_and_not_kept():
    async with serving(b"HTTP/1.1 200 OK\r\n\r\nbody until the end") as server:
        c = client()
        assert await post(c, server) == 200
        assert await post(c, server) == 200
        await c.aclose()
    assert server.connections == 2


async def test_a_kept_connection_the_receiver_closed_is_replaced_without_a_failure():
    async with serving(OK, CLOSE) as server:
        c = client()
        assert await post(c, server) == 200
        # the receiver closes the kept connection when the next request comes: sent again
        assert await post(c, server) == 200
        await c.aclose()
    assert [s.connection for s in server.seen] == [1, 1, 2]


async def test_kept_connections_expire():
    async with serving() as server:
        c = client(idle_expiry_s=0.05)
        assert await post(c, server) == 200
        await asyncio.sleep(0.1)
        assert await post(c, server) == 200
        await c.aclose()
    assert server.connections == 2


async def test_failures_are_named_as_httpx_names_them():
    async with serving(CLOSE, SILENT) as server:
        c = client(read_timeout_s=0.2)
        with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
            await post(c, server)
        with pytest.raises(httpx.ReadTimeout):
            await post(c, server)
        await c.aclose()
    with socket_closed() as port:
        with pytest.raises(httpx.ConnectError):
            await client().post(httpx.URL(f"http://127.0.0.1:{port}/cb"), b"", {}, None)
    async with serving(b"SPAM\r\n\r\n") as server:
        with pytest.raises(httpx.RemoteProtocolError, match="not an HTTP"):
            await post(client(), server)
    with pytest.raises(httpx.LocalProtocolError):
        await client().post(httpx.URL("http://127.0.0.1:9/cb"), b"", {"X": "a\r\nB: c"}, None)


@contextlib.contextmanager
def socket_closed():
    """A loopback port nobody listens on."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


@pytest.fixture
def tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for hooks.test, client context trusting its CA)."""
    ca, cert, key = make_certificates(["hooks.test"])
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server, ssl.create_default_context(cadata=ca.decode())


async def test_https_verifies_the_callback_host_name_and_never_keeps_a_connection(tls):
    server_tls, client_tls = tls
    async with serving(tls=server_tls) as server:
        c = client(tls=client_tls)
        assert await post(c, server, scheme="https", sni="hooks.test") == 200
        assert await post(c, server, scheme="https", sni="hooks.test") == 200
        with pytest.raises(httpx.ConnectError, match=r"certificate|hostname"):
            await post(c, server, scheme="https", sni="other.test")
        await c.aclose()
    assert server.connections >= 2 and len(server.seen) == 2
    assert [s.connection for s in server.seen] == [1, 2]  # one connection per request
    assert all("Connection: close" in s.head for s in server.seen)


async def test_the_signed_headers_user_agent_is_sent_once():
    async with serving() as server:
        c = client()
        url = httpx.URL(f"http://127.0.0.1:{server.port}/cb")
        assert await c.post(url, b"{}", {"Host": "h", "User-Agent": "livesnap-callbacks/1"},
                            None) == 200
        await c.aclose()
    agents = [line for line in server.seen[0].head if line.lower().startswith("user-agent:")]
    assert agents == ["User-Agent: livesnap-callbacks/1"]
