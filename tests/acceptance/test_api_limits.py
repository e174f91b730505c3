"""Request-rate quota, body limit and slow clients against ``livesnap serve`` over real sockets.

The quota is checked with the official SDK (it must raise ``Throttling.User`` with the
``x-acs-retry-after`` wait); the body limit and the slow-client deadlines with raw sockets,
because an HTTP client library would not send a body this large or a head this slowly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from alibabacloud_tea_openapi.exceptions import ThrottlingException
from Tea.exceptions import TeaException

from tests.support.service import LivesnapServer, ice_client
from tests.support.signing import rpc_query

pytestmark = pytest.mark.acceptance

HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 3
KEEP_ALIVE_S = 8  # the guarded server's; the default is 75
LIVENESS_S = 20.0  # a bounded wait for "the server closed it", far above the timeouts
ICE_FIELDS = {"RequestId", "HostId", "Code", "Message", "Recommend"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    # one token every 20 s, three saved up: the fourth quick request is over the quota
    env = {"LIVESNAP_CAPTURE": "false", "LIVESNAP_RATE_LIMIT_RPS": "0.05",
           "LIVESNAP_RATE_LIMIT_BURST": "3"}
    with LivesnapServer(tmp_path_factory.mktemp("limited") / "data", env=env) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    env = {"LIVESNAP_CAPTURE": "false", "LIVESNAP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "LIVESNAP_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "LIVESNAP_RATE_LIMIT_RPS": "0",
           "LIVESNAP_KEEP_ALIVE_S": str(KEEP_ALIVE_S)}
    with LivesnapServer(tmp_path_factory.mktemp("guarded") / "data", env=env) as srv:
        yield srv


def list_templates(client):
    return client.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest())


def test_sdk_sees_throttling_user_with_retry_after(limited):
    acs3 = ice_client(limited.endpoint)
    rpc = ice_client(limited.endpoint, v2=True)
    for client in (acs3, rpc, acs3):  # both schemes draw from the same access key's bucket
        assert list_templates(client).status_code == 200
    for client in (acs3, rpc):
        with pytest.raises(ThrottlingException) as info:
            list_templates(client)
        err = info.value
        assert isinstance(err, TeaException)
        assert err.code == "Throttling.User"
        assert err.status_code == 429
        assert "0.05 requests per second" in err.message
        assert 0 < err.retry_after <= 20_000  # milliseconds until the next token
        assert err.request_id and set(err.data) >= ICE_FIELDS
    other = ice_client(limited.endpoint, key="otherid", secret="othersecret")
    assert list_templates(other).status_code == 200  # the quota is per access key


def test_forged_requests_do_not_use_up_the_quota(limited):
    forged = ice_client(limited.endpoint, key="otherid", secret="wrong")
    for _ in range(6):
        with pytest.raises(TeaException) as info:
            list_templates(forged)
        assert info.value.code == "SignatureDoesNotMatch"
    # otherid used one token in the test above; two are left whatever the forger did
    other = ice_client(limited.endpoint, key="otherid", secret="othersecret")
    assert list_templates(other).status_code == 200


# --------------------------------------------------------------------------- raw sockets


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def read_reply(sock: socket.socket) -> Reply:
    """Read one response on a connection the server closes after it (Connection: close)."""
    sock.settimeout(LIVENESS_S)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            # the server closed with our unread body in its buffer: the kernel resets the
            # connection, after the reply it had already written
            assert data, "connection reset before any reply"
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers.get("content-length", len(body)))
    return Reply(int(lines[0].split()[1]), headers, body[:length])


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True if the server closes the connection (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@dataclass
class Sender:
    """Sends ``total`` bytes of body in a thread until the server stops taking them."""

    sock: socket.socket
    total: int
    chunked: bool = False
    sent: int = 0
    error: OSError | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        piece = b"A" * 65536
        frame = b"%x\r\n" % len(piece) + piece + b"\r\n" if self.chunked else piece
        try:
            while self.sent < self.total:
                self.sock.sendall(frame)
                self.sent += len(piece)
            if self.chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError as exc:  # EPIPE / ECONNRESET once the server has closed: expected
            self.error = exc


def open_conn(server: LivesnapServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=LIVENESS_S)


def signed_post_head(server: LivesnapServer, framing: str) -> bytes:
    query = rpc_query("CreateLiveSnapshotTemplate", {}, method="POST",
                      body=[("TemplateName", "big")])
    return (f"POST /?{query} HTTP/1.1\r\nHost: {server.endpoint}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{framing}\r\n\r\n").encode()


def assert_ice_error(reply: Reply, status: int, code: str) -> dict:
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/json")
    body = reply.json()
    assert set(body) == ICE_FIELDS
    assert body["Code"] == code
    return body


def api_still_answers(server: LivesnapServer) -> None:
    query = rpc_query("ListLiveSnapshotTemplates", {})
    resp = httpx.get(f"http://{server.endpoint}/?{query}", timeout=LIVENESS_S)
    assert resp.status_code == 200, resp.text
    assert resp.json()["TotalCount"] >= 1


HUGE = 256 * 1024 * 1024


def test_huge_declared_body_is_refused_before_it_is_read(guarded):
    with open_conn(guarded) as sock:
        sock.sendall(signed_post_head(guarded, f"Content-Length: {HUGE}"))
        sender = Sender(sock, HUGE)
        reply = read_reply(sock)
        sender.thread.join(LIVENESS_S)
    body = assert_ice_error(reply, 413, "InvalidParameter")
    assert "larger than 1048576 bytes" in body["Message"]
    assert reply.headers["connection"] == "close"
    assert not sender.thread.is_alive()
    assert sender.error is not None and sender.sent < HUGE  # the server stopped taking it
    api_still_answers(guarded)


def test_huge_chunked_body_is_cut_off_at_the_limit(guarded):
    with open_conn(guarded) as sock:
        sock.sendall(signed_post_head(guarded, "Transfer-Encoding: chunked"))
        sender = Sender(sock, HUGE, chunked=True)
        reply = read_reply(sock)
        sender.thread.join(LIVENESS_S)
    assert_ice_error(reply, 413, "InvalidParameter")
    assert not sender.thread.is_alive()
    assert sender.error is not None and sender.sent < HUGE
    api_still_answers(guarded)


def test_slow_request_head_is_closed_while_others_are_served(guarded):
    head = f"GET /healthz HTTP/1.1\r\nHost: {guarded.endpoint}\r\nX-Pad: {'p' * 400}\r\n\r\n"
    with open_conn(guarded) as sock:
        started = time.monotonic()
        sent = 0
        closed = False
        while not closed and time.monotonic() - started < LIVENESS_S:
            sock.sendall(head[sent].encode())  # one byte every 0.1 s: 40 s for the whole head
            sent += 1
            api_still_answers(guarded)
            closed = closed_by_server(sock, 0.1)
    assert closed, "the server kept a trickling request head open"
    assert sent < len(head)


def peer_closed(sock: socket.socket) -> bool:
    """Non-blocking: True once the server has closed this connection."""
    try:
        return sock.recv(1024, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def test_fifty_slow_clients_at_once_are_all_dropped(guarded):
    head = f"POST / HTTP/1.1\r\nHost: {guarded.endpoint}\r\nX-Pad: {'p' * 400}\r\n\r\n".encode()
    socks = [open_conn(guarded) for _ in range(50)]
    try:
        sent = 0
        answered = 0
        deadline = time.monotonic() + LIVENESS_S
        while time.monotonic() < deadline and not all(peer_closed(s) for s in socks):
            for sock in socks:
                if not peer_closed(sock):
                    try:
                        sock.sendall(head[sent:sent + 1])
                    except (BrokenPipeError, ConnectionResetError):
                        assert peer_closed(sock)  # closed between the check and the send
            sent += 1
            api_still_answers(guarded)  # each round, a signed API call gets through meanwhile
            answered += 1
            time.sleep(0.1)
        assert all(peer_closed(s) for s in socks)
        assert sent < len(head) and answered == sent
    finally:
        for sock in socks:
            sock.close()


def test_idle_and_kept_alive_connections_are_closed(guarded):
    with open_conn(guarded) as idle:
        assert closed_by_server(idle, LIVENESS_S)
    with open_conn(guarded) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {guarded.endpoint}\r\n\r\n".encode())
        sock.settimeout(LIVENESS_S)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        # the next head on the kept-alive connection trickles: the deadline starts again
        next_head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * 400
        closed = False
        for byte in next_head:
            sock.sendall(bytes([byte]))
            closed = closed_by_server(sock, 0.1)
            if closed:
                break
        assert closed


def test_a_kept_alive_connection_waits_for_the_next_request_then_closes_when_idle(guarded):
    request = f"GET /healthz HTTP/1.1\r\nHost: {guarded.endpoint}\r\n\r\n".encode()

    def answer(sock: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"}"):  # /healthz answers a small JSON object
            chunk = sock.recv(65536)
            assert chunk, f"closed after {data!r}"
            data += chunk
        return data

    with open_conn(guarded) as sock:
        sock.sendall(request)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        # a client polling less often than the head deadline keeps its connection (it was
        # closed HEADER_TIMEOUT_S after each answer; a request sent then met a closing socket)
        time.sleep(2 * HEADER_TIMEOUT_S + 0.5)
        assert not closed_by_server(sock, 0.1)
        sock.settimeout(LIVENESS_S)
        sock.sendall(request)
        assert answer(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert closed_by_server(sock, LIVENESS_S)  # idle: closed after LIVESNAP_KEEP_ALIVE_S
        assert time.monotonic() - started > KEEP_ALIVE_S - 1


def test_slow_body_gets_408(guarded):
    with open_conn(guarded) as sock:
        sock.sendall(signed_post_head(guarded, "Content-Length: 100") + b"TemplateName=")
        reply = read_reply(sock)  # and then nothing more: the body deadline answers
    body = assert_ice_error(reply, 408, "RequestTimeout")
    assert f"{BODY_TIMEOUT_S} s" in body["Message"]
    api_still_answers(guarded)


def test_oversized_or_broken_head_gets_an_ice_error(guarded):
    # far over the limit, so that it can never arrive complete in one read
    long_query = rpc_query("ListLiveSnapshotTemplates", {"SearchKeyWord": "k" * 1_000_000})
    with open_conn(guarded) as sock:
        sock.sendall(f"GET /?{long_query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        reply = read_reply(sock)
    assert "64 KiB" in assert_ice_error(reply, 400, "InvalidParameter")["Message"]
    with open_conn(guarded) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        assert_ice_error(read_reply(sock), 400, "InvalidParameter")
    api_still_answers(guarded)
