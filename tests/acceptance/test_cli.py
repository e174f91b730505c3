"""The ``livesnap`` client CLI as a subprocess (real exit codes) against ``livesnap serve``
capturing a live nginx-rtmp stream: every command once, ``--json`` parsed, error exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.servers import free_port
from tests.support.service import LivesnapServer

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
STORAGE = ["--storage-endpoint", "oss-cn-shanghai.aliyuncs.com", "--bucket", "bucket-cli"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivesnapServer]:
    with LivesnapServer(tmp_path_factory.mktemp("cli") / "data", env=FAST) as running:
        yield running


@pytest.fixture
def env(server: LivesnapServer, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: this server and key, and no profile file of the user's."""
    base = {k: v for k, v in os.environ.items()
            if not k.lower().endswith("_proxy") and not k.startswith("LIVESNAP_")}
    return {**base, "LIVESNAP_CONFIG": str(tmp_path / "no-config.toml"), "COLUMNS": "200",
            "LIVESNAP_ENDPOINT": f"http://{server.endpoint}",
            "LIVESNAP_ACCESS_KEY_ID": "testid", "LIVESNAP_ACCESS_KEY_SECRET": "testsecret"}


def livesnap(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "livesnap", *args], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def ok_json(env: dict[str, str], *args: str) -> dict:
    done = livesnap(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["RequestId"]
    return body


def failed(env: dict[str, str], code: int, *args: str) -> str:
    """Run a command that must fail with exit ``code``; its one stderr line."""
    done = livesnap(env, *args)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livesnap: "), done.stderr
    return lines[0]


def test_every_command(env, server, publisher_factory):
    publisher = publisher_factory()
    template_id = check_templates(env)
    job_id = check_submit_get_list(env, publisher.url, template_id)
    stamp = check_capture_and_files(env, server, job_id)
    check_files_delete(env, server, job_id, stamp)
    check_storage_status(env)
    check_stop_start_restart(env, job_id)
    check_delete_job(env, server, job_id)
    ok_json(env, "templates", "delete", template_id)
    line = failed(env, 1, "templates", "get", template_id)
    assert line.startswith("livesnap: TemplateNotFound: ")


def check_templates(env) -> str:
    created = ok_json(env, "templates", "create", "cli template", "--interval", "5",
                      "--overwrite", "cli/{JobId}.jpg",
                      "--sequence", "cli/{JobId}/{UnixTimestamp}.jpg")
    template_id = created["TemplateId"]
    listed = ok_json(env, "templates", "list", "--type", "custom", "--page-size", "100")
    assert template_id in [t["TemplateId"] for t in listed["TemplateList"]]
    assert listed["TotalCount"] >= 1
    ok_json(env, "templates", "update", template_id, "--interval", "6")
    got = ok_json(env, "templates", "get", template_id)
    assert (got["TemplateName"], got["TimeInterval"]) == ("cli template", 6)  # the rest kept
    assert (got["OverwriteFormat"], got["SequenceFormat"]) == (
        "cli/{JobId}.jpg", "cli/{JobId}/{UnixTimestamp}.jpg")
    return template_id


def check_submit_get_list(env, url: str, template_id: str) -> str:
    detail = ok_json(env, "jobs", "submit", url, "--template", template_id, *STORAGE, "--wait",
                     "--wait-timeout", "30")
    job_id = detail["JobId"]
    assert detail["Status"] == "started" and detail["TemplateId"] == template_id
    assert detail["JobName"] == url.rsplit("/", 1)[-1]  # the default name
    listed = ok_json(env, "jobs", "list", "--status", "started", "--page-size", "100")
    assert job_id in [j["JobId"] for j in listed["JobList"]]
    got = ok_json(env, "jobs", "get", job_id)
    assert got["StreamInput"]["Url"] == url and got["SnapshotOutput"]["Bucket"] == "bucket-cli"
    table = livesnap(env, "jobs", "get", job_id)
    assert table.returncode == 0 and job_id in table.stdout and "StreamStatus" in table.stdout
    return job_id


def check_capture_and_files(env, server, job_id: str) -> int:
    shot = ok_json(env, "jobs", "capture", job_id)["Snapshot"]
    assert shot["OssObject"].startswith(f"cli/{job_id}/") and shot["Width"] == 1280
    stored = (server.storage_dir() / "oss-cn-shanghai.aliyuncs.com" / "bucket-cli"
              / shot["OssObject"])
    assert stored.read_bytes()[:2] == b"\xff\xd8"  # a JPEG
    files = ok_json(env, "files", "list", job_id, "--start-time", "1h", "--limit", "100")
    assert shot["CreateTimestamp"] in [f["CreateTimestamp"] for f in files["FileList"]]
    every = livesnap(env, "files", "list", job_id, "--start-time", "1h", "--limit", "1", "--all",
                     "--json")
    assert every.returncode == 0, every.stderr
    stamps = [f["CreateTimestamp"] for f in json.loads(every.stdout)["FileList"]]  # page by page
    assert len(stamps) >= len(files["FileList"]) and stamps == sorted(set(stamps))
    return int(shot["CreateTimestamp"])


def check_delete_job(env, server, job_id: str) -> None:
    """``jobs delete --delete-objects``: the job, its records and its stored images go."""
    listed = ok_json(env, "files", "list", job_id, "--start-time", "1h", "--limit", "100")
    images = [server.storage_dir() / "oss-cn-shanghai.aliyuncs.com" / "bucket-cli" / f[
        "OssObject"] for f in listed["FileList"]]
    assert images and all(p.exists() for p in images)
    done = ok_json(env, "jobs", "delete", job_id, "--delete-objects")
    assert done["JobId"] == job_id and done["DeletedFiles"] >= len(images)
    assert not any(p.exists() for p in images)
    line = failed(env, 1, "jobs", "get", job_id)
    assert line.startswith("livesnap: JobNotFound: ")
    line = failed(env, 1, "jobs", "delete", job_id)
    assert line.startswith("livesnap: JobNotFound: ")


def check_storage_status(env) -> None:
    """The storage targets from the server's /metrics: the fallback target the job wrote."""
    done = livesnap(env, "storage", "status", "--json")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    target = "oss:oss-cn-shanghai.aliyuncs.com/bucket-cli"
    row = next(t for t in state["Targets"] if t["Target"] == target)
    assert row["Outage"] is False and row["InFlight"] >= 0 and row["Pending"] >= 0
    assert state["Captures"]["uploaded"] >= 2 and state["Captures"]["failed"] == 0
    table = livesnap(env, "storage", "status")
    assert table.returncode == 0 and target in table.stdout and "up" in table.stdout
    assert "uploaded" in table.stdout


def check_files_delete(env, server, job_id: str, stamp: int) -> None:
    bucket = server.storage_dir() / "oss-cn-shanghai.aliyuncs.com" / "bucket-cli"
    deadline = time.monotonic() + 30
    while len((files := ok_json(env, "files", "list", job_id, "--start-time", "1h",
                                "--limit", "100"))["FileList"]) < 2:
        assert time.monotonic() < deadline, "no second snapshot within 30 s"
        time.sleep(1)
    other = next(f for f in files["FileList"] if f["CreateTimestamp"] != stamp)
    kept = bucket / other["OssObject"]
    assert kept.exists()
    # without --delete-object only the record goes; the image stays
    deleted = ok_json(env, "files", "delete", job_id, str(other["CreateTimestamp"]))
    assert [r["Result"] for r in deleted["DeleteFileResultList"]] == ["OK"]
    assert kept.exists()
    # with --delete-object the image goes too; one result per file, in the order asked
    doomed = bucket / next(f["OssObject"] for f in files["FileList"]
                           if f["CreateTimestamp"] == stamp)
    deleted = ok_json(env, "files", "delete", job_id, str(stamp), "1", "--delete-object")
    assert [(r["CreateTimestamp"], r["Result"]) for r in deleted["DeleteFileResultList"]] == [
        (stamp, "OK"), (1, "FileNotFound")]
    assert not doomed.exists()
    left = ok_json(env, "files", "list", job_id, "--start-time", "1h", "--limit", "100")
    gone = {stamp, other["CreateTimestamp"]}
    assert not gone & {f["CreateTimestamp"] for f in left["FileList"]}
    table = livesnap(env, "files", "delete", job_id, str(stamp))  # the default output: a table
    assert table.returncode == 0 and "FileNotFound" in table.stdout


def check_stop_start_restart(env, job_id: str) -> None:
    ok_json(env, "jobs", "stop", job_id)
    assert ok_json(env, "jobs", "get", job_id)["Status"] == "paused"
    line = failed(env, 1, "jobs", "capture", job_id)
    assert line.startswith("livesnap: JobNotStarted: ")
    ok_json(env, "jobs", "start", job_id)
    assert ok_json(env, "jobs", "get", job_id)["Status"] == "started"
    line = failed(env, 1, "jobs", "start", job_id)
    assert line.startswith("livesnap: JobAlreadyStarted: ")
    ok_json(env, "jobs", "restart", job_id)
    assert ok_json(env, "jobs", "get", job_id)["Status"] == "started"
    ok_json(env, "jobs", "stop", job_id)


def test_submit_wait_that_never_starts_exits_1(env, rtmp_origin):
    line = failed(env, 1, "jobs", "submit", rtmp_origin.url("nobody-publishes"), *STORAGE,
                  "--wait", "--wait-timeout", "2")
    assert line.startswith("livesnap: JobNotStarted: job ") and "still init" in line


def test_submit_warns_when_the_stream_is_not_live(env):
    done = livesnap(env, "jobs", "submit", "rtmp://127.0.0.1:1/live/nobody", *STORAGE)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert ok_json(env, "jobs", "get", job_id)["Status"] == "init"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    # the reason is the job's LastError, whose wording depends on which check failed first
    prefix = "livesnap: warning: the stream is not live: "
    assert lines[0].startswith(prefix) and lines[0][len(prefix):].split(";")[0].strip(), lines
    assert f"job {job_id} waits for it and starts by itself once it is live" in lines[0]
    assert ok_json(env, "jobs", "get", job_id)["StreamStatus"] == "waiting"


def test_local_storage_needs_no_endpoint_and_object_stores_do(env, publisher_factory):
    publisher = publisher_factory()
    done = livesnap(env, "jobs", "submit", publisher.url, "--storage-type", "local",
                    "--bucket", "shots")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # live: no warning
    got = ok_json(env, "jobs", "get", done.stdout.strip())
    assert got["SnapshotOutput"] == {"StorageType": "local", "Endpoint": "local",
                                     "Bucket": "shots"}
    ok_json(env, "jobs", "stop", got["JobId"])
    line = failed(env, 2, "jobs", "submit", publisher.url, "--bucket", "b")
    assert line == ("livesnap: MissingParameter: --storage-endpoint is needed with "
                    "--storage-type oss")


def test_unknown_job_exits_1(env):
    assert failed(env, 1, "jobs", "get", "no-such-job") == "livesnap: JobNotFound: No such job."


@pytest.mark.parametrize("scheme", ["acs3", "rpc"])
def test_bad_secret_exits_1_with_signature_does_not_match(env, scheme):
    line = failed(env, 1, "jobs", "list", "--signature", scheme, "--access-key-secret", "wrong")
    assert line == ("livesnap: SignatureDoesNotMatch: the server refused the request's signature: "
                    "check the secret for key testid (LIVESNAP_ACCESS_KEY_SECRET, "
                    "--access-key-secret or the profile)")


def test_unknown_key_exits_1(env):
    line = failed(env, 1, "jobs", "list", "--access-key-id", "nobody")
    assert line.startswith("livesnap: InvalidAccessKeyId.NotFound: the server knows no access "
                           "key nobody: check the key id")


def test_server_down_exits_3(env):
    down = f"http://127.0.0.1:{free_port()}"
    line = failed(env, 3, "templates", "list", "--endpoint", down)
    assert line.startswith(f"livesnap: ConnectionFailed: cannot reach {down}")
    line = failed(env, 3, "storage", "status", "--endpoint", down)
    assert line.startswith(f"livesnap: ConnectionFailed: cannot reach {down}")


def test_server_error_exits_3(env):
    body = json.dumps({"RequestId": "R", "HostId": "h", "Code": "ServiceUnavailable",
                       "Message": "the database failed"}).encode()

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        line = failed(env, 3, "jobs", "list", "--endpoint",
                      f"http://127.0.0.1:{httpd.server_address[1]}")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert line == "livesnap: ServiceUnavailable: the database failed"


@pytest.mark.parametrize("args", [
    ("jobs", "get", "x", "--no-such-flag"),
    ("jobs", "list", "--page", "0"),
    ("files", "list", "x", "--start-time", "yesterday"),
    ("jobs", "frobnicate"),
])
def test_usage_errors_exit_2(env, args):
    line = failed(env, 2, *args)  # one line, as every other error
    assert line.startswith("livesnap: usage: ") and "--help" in line


def test_missing_credentials_exit_2(env):
    bare = {k: v for k, v in env.items() if not k.startswith("LIVESNAP_ACCESS_KEY")}
    line = failed(bare, 2, "jobs", "list")
    assert line.startswith("livesnap: InvalidConfig: no access key")


def test_profile_file(env, server, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(f'[ci]\nendpoint = "http://{server.endpoint}"\n'
                      'access_key_id = "otherid"\naccess_key_secret = "othersecret"\n'
                      'signature = "rpc"\n')
    bare = {k: v for k, v in env.items() if not k.startswith("LIVESNAP_")}
    bare["LIVESNAP_CONFIG"] = str(config)
    body = ok_json(bare, "templates", "list", "--profile", "ci")
    assert [t["TemplateId"] for t in body["TemplateList"]] == ["system"]  # account acct-b
    line = failed(bare, 2, "templates", "list", "--profile", "nope")
    assert line.startswith("livesnap: InvalidConfig: no profile [nope]")


def test_help_lists_every_command(env):
    done = livesnap(env, "--help")
    assert done.returncode == 0
    for group in ("serve", "migrate", "version", "templates", "jobs", "files", "storage"):
        assert group in done.stdout
    jobs = livesnap(env, "jobs", "--help").stdout
    for command in ("submit", "list", "get", "start", "stop", "restart", "capture", "delete"):
        assert command in jobs


def test_image_extensions_through_the_cli(env):
    created = ok_json(env, "templates", "create", "webp small", "--interval", "10",
                      "--overwrite", "w/{JobId}.webp", "--image-format", "webp",
                      "--quality", "60", "--width", "640", "--latest-pointer",
                      "--quality-gate")
    template_id = created["TemplateId"]
    got = ok_json(env, "templates", "get", template_id)
    assert (got["ImageFormat"], got["Quality"], got["Width"], got["Height"]) == (
        "webp", 60, 640, 0)
    assert got["QualityGate"] is True and got["LatestPointer"] is True
    ok_json(env, "templates", "update", template_id, "--no-quality-gate", "--height", "200")
    got = ok_json(env, "templates", "get", template_id)
    assert (got["QualityGate"], got["Height"], got["Width"], got["ImageFormat"]) == (
        False, 200, 640, "webp")  # what was not given is kept
    line = failed(env, 1, "templates", "update", template_id, "--image-format", "png")
    assert "OverwriteFormat must end with '.png' when ImageFormat is png" in line
    line = failed(env, 2, "templates", "create", "x", "--interval", "5", "--overwrite", "x.jpg",
                  "--quality", "0")  # out of range: a usage error before any request
    assert line.startswith("livesnap: usage: Invalid value for '--quality'"), line
    ok_json(env, "templates", "delete", template_id)


def test_connect_mode_through_the_cli(env, publisher_factory):
    publisher = publisher_factory()
    created = ok_json(env, "templates", "create", "archive", "--interval", "60",
                      "--sequence", "a/{JobId}/{UnixTimestamp}.jpg", "--connect-mode", "per-tick")
    template_id = created["TemplateId"]
    assert ok_json(env, "templates", "get", template_id)["ConnectMode"] == "per-tick"
    ok_json(env, "templates", "update", template_id, "--interval", "30")
    got = ok_json(env, "templates", "get", template_id)
    assert (got["TimeInterval"], got["ConnectMode"]) == (30, "per-tick")  # kept
    listed = ok_json(env, "templates", "list", "--type", "custom", "--page-size", "100")
    assert {t["TemplateId"]: t["ConnectMode"] for t in listed["TemplateList"]}[template_id] == (
        "per-tick")
    # the job overrides its template's mode
    detail = ok_json(env, "jobs", "submit", publisher.url, "--template", template_id, *STORAGE,
                     "--connect-mode", "persistent", "--wait", "--wait-timeout", "30")
    assert detail["ConnectMode"] == "persistent"
    table = livesnap(env, "jobs", "get", detail["JobId"])
    assert table.returncode == 0 and "persistent" in table.stdout
    line = failed(env, 2, "templates", "update", template_id, "--connect-mode", "sometimes")
    assert line.startswith("livesnap: usage: Invalid value for '--connect-mode'"), line
    ok_json(env, "jobs", "stop", detail["JobId"])
    ok_json(env, "templates", "delete", template_id)


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_unreachable_database_is_one_line_and_exit_2(tmp_path, command):
    # nothing listens on port 1: the migration at start fails at once
    done = subprocess.run(
        [sys.executable, "-m", "livesnap", command, "--data-dir", str(tmp_path / "d"),
         "--database-url", "postgresql+asyncpg://u:p@127.0.0.1:1/db"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "LIVESNAP_PORT": "0", "LIVESNAP_ACCESS_KEYS": "k:s:a"})
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("livesnap: ")]
    assert errors == [errors[-1]] and errors[-1].startswith("livesnap: database: ")
    assert "Traceback" not in done.stderr
