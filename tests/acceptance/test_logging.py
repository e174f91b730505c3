"""JSON logs of a real ``livesnap serve`` run: every line parses, lines from the API, capture
and job manager carry ``action`` (and ``job_id`` where the job is known), and no secret (access
key secret, callback key, database password) appears anywhere in the output."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from livesnap.client import ApiError, Credentials, IceClient
from tests.support.servers import free_port
from tests.support.service import LivesnapServer

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

KEY_SECRET = "AKSECRET-7f3e9c2b"
CALLBACK_KEY = "CBKEY-41d8a6e0"
DB_PASSWORD = "DBPASS-c0ffee55"
SECRETS = (KEY_SECRET, CALLBACK_KEY, DB_PASSWORD)
OUTPUT = {"StorageType": "oss", "Endpoint": "oss-cn-shanghai.aliyuncs.com", "Bucket": "bucket-l"}
OUR_LOGGERS = ("livesnap.api", "livesnap.capture", "livesnap.jobs")


def with_password(url: str) -> str:
    """The test cluster trusts local connections, so a password in the URL is accepted."""
    return url.replace("postgresql+asyncpg://postgres@", f"postgresql+asyncpg://postgres:{DB_PASSWORD}@")


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()
    httpd.server_close()


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)
    return result


def exercise(server: LivesnapServer, stream_url: str, hook: str, received: list) -> str:
    """Submit, capture, get called back, fail a signature, stop: the logged paths."""
    creds = Credentials(access_key_id="logid", access_key_secret=KEY_SECRET)
    base = f"http://{server.endpoint}"
    with IceClient(endpoint=base, credentials=creds) as client:
        job_id = client.call("SubmitLiveSnapshotJob", {
            "JobName": "logs", "TemplateId": "system", "CallbackUrl": hook,
            "StreamInput": json.dumps({"Type": "rtmp", "Url": stream_url}),
            "SnapshotOutput": json.dumps(OUTPUT)})["JobId"]
        wait_until(lambda: client.call("GetLiveSnapshotJob", {"JobId": job_id})["Status"]
                   == "started", 20, "started")
        client.call("SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "capture"})
        wait_until(lambda: received, 20, "a callback")
        client.call("SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "stop"})
    wrong = Credentials(access_key_id="logid", access_key_secret="not-it")
    with IceClient(endpoint=base, credentials=wrong, scheme="rpc") as client:
        with pytest.raises(ApiError, match="SignatureDoesNotMatch"):
            client.call("ListLiveSnapshotJobs")
    assert httpx.get(f"{base}/metrics").status_code == 200
    return job_id


def test_json_logs_carry_action_and_no_secrets(tmp_path, publisher_factory, postgres_url,
                                               receiver):
    hook, received = receiver
    publisher = publisher_factory()
    env = {
        "LIVESNAP_LOG_JSON": "true", "LIVESNAP_LOG_LEVEL": "DEBUG",
        "LIVESNAP_ACCESS_KEYS": f"logid:{KEY_SECRET}:acct-log",
        "LIVESNAP_CALLBACK_KEYS": f"acct-log:{CALLBACK_KEY}",
        "LIVESNAP_DATABASE_URL": with_password(postgres_url),
        "LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2",
    }
    with LivesnapServer(tmp_path / "data", env=env) as server:
        job_id = exercise(server, publisher.url, hook, received)
        server.terminate(30)
    text = server.log()
    for secret in SECRETS:
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    ours = [r for r in records if r["logger"].startswith(OUR_LOGGERS)]
    assert ours and all("action" in r for r in ours), [r for r in ours if "action" not in r]
    about_job = [r for r in ours if r.get("job_id") == job_id]
    assert {"stream_live"} <= {r["action"] for r in about_job}
    assert any(r["logger"] == "livesnap.capture.source" for r in about_job)  # reader lines too


def test_unreachable_database_does_not_print_its_password(tmp_path):
    url = f"postgresql+asyncpg://livesnap:{DB_PASSWORD}@127.0.0.1:{free_port()}/livesnap"
    done = subprocess.run(
        [sys.executable, "-m", "livesnap", "serve", "--port", str(free_port()),
         "--data-dir", str(tmp_path / "data")],
        env={"LIVESNAP_LOG_JSON": "true", "LIVESNAP_DATABASE_URL": url,
             "LIVESNAP_ACCESS_KEYS": f"logid:{KEY_SECRET}:acct-log", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Connect call failed" in output or "refused" in output.lower(), output[-2000:]
    for secret in SECRETS:
        assert secret not in output
