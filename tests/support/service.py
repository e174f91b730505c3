"""``livesnap serve`` as a subprocess, and the official SDK clients pointed at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.servers import free_port

KEYS = "testid:testsecret:acct-a,otherid:othersecret:acct-b"

# Every server started during the current test; conftest attaches their logs to a failure report.
STARTED: list[LivesnapServer] = []
# Every server not stopped yet; conftest stops what is left at the end of the session, so a
# test that fails between start and stop never leaves a server running.
RUNNING: set[LivesnapServer] = set()


class LivesnapServer:
    """One ``livesnap serve`` process on a free port with its own data directory."""

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"

    def storage_dir(self, account: str = "acct-a") -> Path:
        """Where the account's local-disk objects are: ``<data>/storage/<account>``."""
        return self.data_dir / "storage" / account

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def scheme(self) -> str:
        """``https`` when started with a TLS certificate (``LIVESNAP_TLS_CERT``)."""
        return "https" if self.extra_env.get("LIVESNAP_TLS_CERT") else "http"

    def start(self, timeout: float = 30.0) -> LivesnapServer:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update({"LIVESNAP_ACCESS_KEYS": KEYS, "LIVESNAP_LOG_LEVEL": "INFO", **self.extra_env})
        if self not in STARTED:
            STARTED.append(self)
        RUNNING.add(self)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "livesnap", "serve", "--port", str(self.port),
                 "--data-dir", str(self.data_dir)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"livesnap exited early:\n{self.log()}")
            try:
                # the health probe alone skips certificate checks: the TLS tests check them
                health = httpx.get(f"{self.scheme}://{self.endpoint}/healthz", timeout=1,
                                   verify=False)
                if health.status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"livesnap did not become healthy:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to clean up (crash tests)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> float:
        """SIGTERM and wait; the seconds it took to exit."""
        assert self.proc is not None
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return time.monotonic() - start

    def restart(self) -> LivesnapServer:
        self.kill()
        return self.start()

    def __enter__(self) -> LivesnapServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout``; never raises."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        RUNNING.discard(self)


def serve_until_exit(data_dir: Path, *args: str,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``livesnap serve`` expected to stop by itself at start (a refused configuration): the
    tests' keys, no ``LIVESNAP_*`` of the caller's, and ``env``; its exit code and output."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LIVESNAP_")}
    return subprocess.run(
        [sys.executable, "-m", "livesnap", "serve", "--port", str(free_port()),
         "--data-dir", str(data_dir), *args],
        env={**base, "LIVESNAP_ACCESS_KEYS": KEYS, **(env or {})}, text=True,
        capture_output=True, timeout=30, check=False)


def ice_client(endpoint: str, *, key: str = "testid", secret: str = "testsecret", v2: bool = False,
               protocol: str | None = "http", ca: str | None = None):
    """The official ``alibabacloud-ice20201109`` client (ACS3, or RPC HMAC-SHA1 with v2).

    ``protocol=None`` leaves the SDK's own default (HTTPS); ``ca``: a PEM file of CAs to trust.
    """
    from alibabacloud_ice20201109.client import Client
    from alibabacloud_tea_openapi.utils_models import Config

    extra = {"signature_algorithm": "v2"} if v2 else {}
    if protocol is not None:
        extra["protocol"] = protocol
    config = Config(access_key_id=key, access_key_secret=secret, endpoint=endpoint, ca=ca,
                    read_timeout=60000, connect_timeout=5000, **extra)
    return Client(config)


def core_client(endpoint: str, *, key: str = "testid", secret: str = "testsecret",
                verify: str | None = None):
    """The legacy ``aliyun-python-sdk-core`` AcsClient (``verify``: a PEM file of CAs)."""
    from aliyunsdkcore.client import AcsClient

    port = int(endpoint.rsplit(":", 1)[1])
    client = AcsClient(key, secret, "cn-shanghai", port=port, timeout=60, verify=verify)
    # The client pools kept-alive sockets that only its __del__ closes, so when the garbage
    # collector takes it (and its sockets) in a later test, an "unclosed socket"
    # ResourceWarning fails that test. Asking for no keep-alive makes urllib3 close each one.
    client.session.headers["Connection"] = "close"
    return client


def core_request(action: str, method: str = "GET", query=None, body=None, protocol: str = "http"):
    from aliyunsdkcore.request import CommonRequest

    req = CommonRequest(domain="127.0.0.1", version="2020-11-09", action_name=action)
    req.set_protocol_type(protocol)
    req.set_method(method)
    for k, v in (query or {}).items():
        req.add_query_param(k, v)
    for k, v in (body or {}).items():
        req.add_body_params(k, v)
    return req


def raw_job(server: LivesnapServer, job_id: str) -> dict:
    """``GetLiveSnapshotJob`` as JSON, with livesnap's extra fields (the SDK model drops them)."""
    import json

    acs = core_client(server.endpoint)
    return dict(json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotJob", "GET", {"JobId": job_id}))))


def submit_stream(server: LivesnapServer, url: str, *, name: str = "job",
                  template: str = "system") -> str:
    """SubmitLiveSnapshotJob through the official SDK: ``url`` on ``template``, stored on
    local disk (the fallback of an unconfigured OSS target); the JobId."""
    from alibabacloud_ice20201109 import models as m

    output = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
        storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1")
    return str(ice_client(server.endpoint).submit_live_snapshot_job(
        m.SubmitLiveSnapshotJobRequest(
            job_name=name, template_id=template, snapshot_output=output,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url),
        )).body.job_id)


def recent_files(client, job_id: str) -> list:
    """The job's files of the last hour (up to 100), oldest first, through the official SDK."""
    from datetime import UTC, datetime, timedelta

    from alibabacloud_ice20201109 import models as m

    now = datetime.now(tz=UTC)
    return list(client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time=(now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        end_time=(now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        limit=100)).body.file_list)
