"""Stream and callback URLs aimed at blocked networks, against ``livesnap serve`` (a subprocess).

Everything runs on loopback, so the block list is set to take ``127.0.0.2`` (plus the default
link-local and metadata ranges and ``10.0.0.0/8``) while ``127.0.0.1`` stays allowed: on Linux
all of ``127.0.0.0/8`` is local, so a "blocked host" can listen on ``127.0.0.2`` and count what
reaches it. Host names come from ``/etc/hosts`` entries this module adds (and removes again);
rebinding is a rewrite of that file between Submit and use.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from Tea.exceptions import TeaException

from tests.support.servers import make_clip
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.signing import rpc_query
from tests.support.waiting import wait_until

pytestmark = pytest.mark.acceptance

HOSTS = Path("/etc/hosts")
BLOCKED = "169.254.0.0/16,100.100.100.200/32,fe80::/10,127.0.0.2/32,10.0.0.0/8"
ENV = {"LIVESNAP_BLOCKED_NETWORKS": BLOCKED, "LIVESNAP_RW_TIMEOUT_S": "2",
       "LIVESNAP_RECONNECT_MAX_S": "2", "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "1"}
NAMES = {
    "blocked.livesnap.test": "127.0.0.2",
    "metadata.livesnap.test": "169.254.169.254",
    "private.livesnap.test": "10.1.2.3",
    "allowed.livesnap.test": "127.0.0.1",
    "rebind-hook.livesnap.test": "127.0.0.1",
    "rebind-stream.livesnap.test": "127.0.0.1",
}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1")
NOT_LIVE = "rtmp://127.0.0.1:9/live/x"
REFUSED_HOSTS = [
    "127.0.0.2", "169.254.169.254", "100.100.100.200", "10.9.9.9", "[fe80::1]",
    "[::ffff:127.0.0.2]", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]",
    "2130706434", "127.0.2", "0x7f000002", "0251.0376.0251.0376",  # 127.0.0.2, 169.254.169.254
    "blocked.livesnap.test", "metadata.livesnap.test", "private.livesnap.test",
]
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "allowed.livesnap.test"]


MARKER = "\n# livesnap test_ssrf\n"


def without_ours(text: str) -> str:
    return text.split(MARKER)[0].rstrip("\n") + "\n"


def write_hosts(names: dict[str, str]) -> None:
    """Our names at the end of /etc/hosts (written in place: it may be a bind mount)."""
    lines = "".join(f"{address} {name}\n" for name, address in names.items())
    HOSTS.write_text(without_ours(HOSTS.read_text()).rstrip("\n") + MARKER + lines)


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    """/etc/hosts with this module's names (rebind: change the dict, ``write_hosts`` it).

    Teardown removes only our lines, so an edit someone else made meanwhile survives.
    """
    original = HOSTS.read_text()
    names = dict(NAMES)
    write_hosts(names)
    try:
        yield names
    finally:
        current = without_ours(HOSTS.read_text())
        HOSTS.write_text(original if current == without_ours(original) else current)


@pytest.fixture(scope="module")
def server(tmp_path_factory, hosts) -> Iterator[LivesnapServer]:
    with LivesnapServer(tmp_path_factory.mktemp("ssrf") / "data", env=ENV) as srv:
        yield srv


class Recorder(http.server.ThreadingHTTPServer):
    """An HTTP server on one address that counts requests and answers with ``reply``."""

    daemon_threads = True

    def __init__(self, host: str, reply: dict[str, Any]) -> None:
        self.hits: list[str] = []
        self.reply = reply
        super().__init__((host, 0), _Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Recorder

    def _answer(self) -> None:
        self.server.hits.append(f"{self.command} {self.path}")
        reply = self.server.reply
        body: bytes = reply.get("body", b"")
        self.send_response(reply.get("status", 200))
        for name, value in reply.get("headers", {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            return  # the reader went away mid-body: fine for a stream

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    def log_message(self, *args: object) -> None:
        return


def submit(client, *, url: str = NOT_LIVE, callback: str | None = None) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="ssrf", template_id="system", snapshot_output=OUTPUT, callback_url=callback,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


def refused(call) -> str:
    with pytest.raises(TeaException) as info:
        call()
    assert (info.value.status_code, info.value.code) == (400, "InvalidParameter"), info.value.message
    return str(info.value.data["Message"])


def job(server: LivesnapServer, job_id: str) -> dict[str, Any]:
    query = rpc_query("GetLiveSnapshotJob", {"JobId": job_id})
    body: dict[str, Any] = httpx.get(f"http://{server.endpoint}/?{query}", timeout=30).json()
    return body


def attempts(server: LivesnapServer, job_id: str) -> list[dict[str, Any]]:
    acs = core_client(server.endpoint)
    answer = acs.do_action_with_exception(core_request(
        "ListLiveSnapshotCallbackAttempts", "POST", body={"JobId": job_id, "Limit": "100"}))
    found: list[dict[str, Any]] = json.loads(answer)["AttemptList"]
    return found


def total_jobs(client) -> int:
    return client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest()).body.total_count


def test_submit_refuses_blocked_addresses_in_every_spelling(server):
    client = ice_client(server.endpoint)
    before = total_jobs(client)
    for host in REFUSED_HOSTS:
        message = refused(lambda host=host: submit(client, url=f"rtmp://{host}:1935/live/x"))
        assert message.startswith("StreamInput.Url points to a blocked network address"), host
        message = refused(lambda host=host: submit(client, callback=f"http://{host}:8000/hook"))
        assert message.startswith("CallbackUrl points to a blocked network address"), host
    assert total_jobs(client) == before  # nothing refused was stored
    for host in ALLOWED_HOSTS:  # the other side of the line
        assert submit(client, url=f"rtmp://{host}:9/live/x", callback=f"http://{host}:9/hook")
    assert total_jobs(client) == before + len(ALLOWED_HOSTS)


def test_the_unspecified_address_is_loopback(tmp_path):
    env = {"LIVESNAP_CAPTURE": "false", "LIVESNAP_BLOCKED_NETWORKS": "127.0.0.0/8,::1/128"}
    with LivesnapServer(tmp_path / "data", env=env) as srv:
        client = ice_client(srv.endpoint)
        for host in ("0.0.0.0", "[::]", "0", "localhost", "127.1", "[::1]"):
            refused(lambda host=host: submit(client, url=f"rtmp://{host}:1935/live/x"))
            refused(lambda host=host: submit(client, callback=f"http://{host}:8000/hook"))
        assert total_jobs(client) == 0


def test_a_callback_redirect_to_a_blocked_host_is_not_followed(server):
    with Recorder("127.0.0.2", {"status": 200}) as blocked, Recorder("127.0.0.1", {}) as hook:
        hook.reply = {"status": 302,
                      "headers": {"Location": f"http://127.0.0.2:{blocked.port}/hook"}}
        client = ice_client(server.endpoint)
        job_id = submit(client, callback=f"http://127.0.0.1:{hook.port}/hook")
        client.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop"))  # an event
        tried = wait_until(lambda: [a for a in attempts(server, job_id) if a["StatusCode"] == 302],
                           30, "a delivery answered with 302")
        assert tried and hook.hits and all(h == "POST /hook" for h in hook.hits)
    assert blocked.hits == []


def test_a_callback_host_rebound_to_a_blocked_address_is_refused_at_delivery(server, hosts):
    with Recorder("127.0.0.2", {"status": 200}) as blocked:
        client = ice_client(server.endpoint)
        job_id = submit(client, callback=f"http://rebind-hook.livesnap.test:{blocked.port}/hook")
        hosts["rebind-hook.livesnap.test"] = "127.0.0.2"  # after the Submit check passed
        write_hosts(hosts)
        client.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop"))
        refusal = wait_until(
            lambda: [a for a in attempts(server, job_id) if a["Error"].startswith("refused:")],
            30, "a refused delivery")
        assert "rebind-hook.livesnap.test resolves to 127.0.0.2" in refusal[0]["Error"]
        assert refusal[0]["StatusCode"] is None
    assert blocked.hits == []


@pytest.fixture(scope="module")
def flv() -> bytes:
    return make_clip("360p", seconds=4).read_bytes()


def test_an_http_flv_redirect_to_a_blocked_host_is_not_followed(server, flv):
    client = ice_client(server.endpoint)
    stream = {"status": 200, "headers": {"Content-Type": "video/x-flv"}, "body": flv}
    with Recorder("127.0.0.2", stream) as blocked, Recorder("127.0.0.1", stream) as allowed, \
            Recorder("127.0.0.1", {}) as redirect:
        redirect.reply = {"status": 302,
                          "headers": {"Location": f"http://127.0.0.2:{blocked.port}/live.flv"}}
        # control: the same bytes served from an allowed address start a job
        direct = submit(client, url=f"http://127.0.0.1:{allowed.port}/live.flv")
        wait_until(lambda: job(server, direct)["Status"] == "started", 30, "the direct job")
        redirected = submit(client, url=f"http://127.0.0.1:{redirect.port}/live.flv")
        wait_until(lambda: job(server, redirected)["LastError"], 30, "the probe to fail")
        assert job(server, redirected)["Status"] == "init"
        with pytest.raises(TeaException) as info:
            client.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=redirected, command="start"))
        assert (info.value.status_code, info.value.code) == (400, "StreamNotFound")
        assert len(redirect.hits) >= 2 and allowed.hits
        client.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=direct, command="stop"))
    assert blocked.hits == []


def test_a_stream_host_rebound_to_a_blocked_address_is_refused_at_connect(server, hosts):
    with Recorder("127.0.0.2", {"status": 200}) as blocked:
        client = ice_client(server.endpoint)
        url = f"http://rebind-stream.livesnap.test:{blocked.port}/live.flv"
        job_id = submit(client, url=url)  # allowed at Submit: the name is 127.0.0.1 then
        wait_until(lambda: job(server, job_id)["LastError"], 30, "the submit probe to fail")
        hosts["rebind-stream.livesnap.test"] = "127.0.0.2"
        write_hosts(hosts)
        with pytest.raises(TeaException) as info:
            client.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="start"))
        assert (info.value.status_code, info.value.code) == (400, "StreamNotFound")
        assert "blocked network address (127.0.0.2)" in info.value.data["Message"]
    assert blocked.hits == []

