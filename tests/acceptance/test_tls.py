"""HTTPS on the API port (``--tls-cert``/``--tls-key``): the official SDKs with their default
protocol, told only the endpoint and the CA to trust; the legacy SDK, the console's cookie,
plain HTTP on the TLS port, and the one-line errors of a bad configuration at start-up."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from darabonba.exceptions import UnretryableException

from tests.support.service import (
    LivesnapServer,
    core_client,
    core_request,
    ice_client,
    serve_until_exit,
)
from tests.support.tls import write_certificates

pytestmark = pytest.mark.acceptance

OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)
# nothing listens on port 9: the background probe fails at once and the job stays "init"
NOT_LIVE = m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url="rtmp://127.0.0.1:9/live/x")


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throw-away CA and a certificate for localhost and 127.0.0.1 (an IP address SAN: the
    SDKs connect to the endpoint's address and check the certificate against it)."""
    ca, cert, key = write_certificates(tmp_path_factory.mktemp("tls"), ["localhost", "127.0.0.1"])
    return TlsFiles(ca=ca, cert=cert, key=key)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles):
    env = {"LIVESNAP_TLS_CERT": str(tls.cert), "LIVESNAP_TLS_KEY": str(tls.key)}
    with LivesnapServer(tmp_path_factory.mktemp("tls-api") / "data", env=env) as srv:
        yield srv


@pytest.mark.parametrize("signature", ["acs3", "rpc-v2"])
def test_the_sdk_with_its_default_protocol_works_once_it_trusts_the_ca(server, tls, signature):
    client = ice_client(server.endpoint, protocol=None, ca=str(tls.ca), v2=signature == "rpc-v2")
    template_id = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
        template_name=f"tls-{signature}", time_interval=5,
        overwrite_format="snapshot/{JobId}.jpg")).body.template_id
    got = client.get_live_snapshot_template(
        m.GetLiveSnapshotTemplateRequest(template_id=template_id)).body
    assert (got.template_name, got.time_interval) == (f"tls-{signature}", 5)
    job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=f"job-{signature}", template_id=template_id, stream_input=NOT_LIVE,
        snapshot_output=OUTPUT)).body.job_id
    job = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body
    assert (job.job_id, job.job_name, job.template_id) == (job_id, f"job-{signature}", template_id)


@pytest.mark.parametrize("signature", ["acs3", "rpc-v2"])
def test_the_sdks_async_calls_trust_the_same_ca(server, tls, signature):
    # the async ACS3 call also sends a Content-Type it did not sign (application/octet-stream
    # on an empty GET), which is accepted because there is no body for it to describe
    client = ice_client(server.endpoint, protocol=None, ca=str(tls.ca), v2=signature == "rpc-v2")
    loop = asyncio.new_event_loop()
    try:
        got = loop.run_until_complete(client.get_live_snapshot_template_async(
            m.GetLiveSnapshotTemplateRequest(template_id="system")))
        assert got.body.template_id == "system"
    finally:
        _close_leaving_no_sockets(loop)


def _close_leaving_no_sockets(loop: asyncio.AbstractEventLoop) -> None:
    """Close ``loop`` and collect what the SDK's HTTP client left on it, here.

    The SDK closes its aiohttp session when the call returns, but a TLS connection's socket
    is only closed once its TLS shutdown has run on the loop; on a closed loop it is left to
    the garbage collector, whose "unclosed transport" ResourceWarning would fail whichever
    test runs then (seen once in a full run). Not our socket: its warning is dropped here.
    """
    loop.run_until_complete(asyncio.sleep(0.3))  # room for the TLS shutdowns to finish
    loop.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def test_the_sdk_refuses_the_certificate_when_not_told_to_trust_its_ca(server):
    # "localhost", not 127.0.0.1: the SDK caches one TLS context per host:port for the whole
    # process, and the CA another test gave it for 127.0.0.1 stays in that context
    client = ice_client(f"localhost:{server.port}", protocol=None)
    with pytest.raises(UnretryableException, match="CERTIFICATE_VERIFY_FAILED"):
        client.get_live_snapshot_template(m.GetLiveSnapshotTemplateRequest(template_id="system"))


def test_the_legacy_core_sdk_over_https(server, tls):
    from aliyunsdkcore.acs_exception.exceptions import ClientException

    acs = core_client(server.endpoint, verify=str(tls.ca))
    body = {"JobName": "legacy-tls", "TemplateId": "system",
            "StreamInput": json.dumps({"Type": "rtmp", "Url": NOT_LIVE.url}),
            "SnapshotOutput": json.dumps({"StorageType": "oss", "Endpoint": OUTPUT.endpoint,
                                          "Bucket": OUTPUT.bucket})}
    job_id = json.loads(acs.do_action_with_exception(
        core_request("SubmitLiveSnapshotJob", "POST", body=body, protocol="https")))["JobId"]
    got = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotJob", "GET", {"JobId": job_id}, protocol="https")))
    assert got["JobName"] == "legacy-tls"
    untrusting = core_client(server.endpoint)
    with pytest.raises(ClientException, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.do_action_with_exception(
            core_request("GetLiveSnapshotJob", "GET", {"JobId": job_id}, protocol="https"))


def test_plain_http_on_the_tls_port_gets_no_api_answer(server, tls):
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"http://{server.endpoint}/?Action=GetLiveSnapshotTemplate&TemplateId=system")
    context = ssl.create_default_context(cafile=tls.ca)
    assert httpx.get(f"https://{server.endpoint}/healthz", verify=context).status_code == 200
    assert "Traceback" not in server.log()


def test_the_console_session_cookie_is_secure_over_https(server, tls):
    context = ssl.create_default_context(cafile=tls.ca)
    with httpx.Client(base_url=f"https://{server.endpoint}", verify=context) as http:
        page = http.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token, page.text
        response = http.post("/console/login", data={
            "csrf_token": token.group(1), "access_key_id": "testid",
            "access_key_secret": "testsecret"})
    assert response.status_code == 303 and response.headers["location"] == "/console/"
    for cookie in (page.headers["set-cookie"], response.headers["set-cookie"]):
        attributes = [part.strip().lower() for part in cookie.split(";")]
        assert "secure" in attributes and "httponly" in attributes, cookie


def test_the_livesnap_cli_trusts_the_ca_from_ssl_cert_file(server, tls, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and not k.startswith("LIVESNAP_")}
    env.update({"LIVESNAP_CONFIG": str(tmp_path / "no-config.toml"),
                "LIVESNAP_ENDPOINT": f"https://{server.endpoint}",
                "LIVESNAP_ACCESS_KEY_ID": "testid", "LIVESNAP_ACCESS_KEY_SECRET": "testsecret",
                "SSL_CERT_FILE": str(tls.ca)})
    done = subprocess.run([sys.executable, "-m", "livesnap", "templates", "get", "system",
                           "--json"], env=env, text=True, capture_output=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["TemplateId"] == "system"


@pytest.mark.parametrize(("files", "message"), [
    (("--tls-cert", "{cert}"), "tls_cert is given but not tls_key (--tls-key, LIVESNAP_TLS_KEY)"),
    (("--tls-cert", "{cert}", "--tls-key", "{missing}"),
     "cannot read the TLS key {missing}: No such file or directory"),
    (("--tls-cert", "{key}", "--tls-key", "{key}"),
     "the TLS certificate {key} holds no PEM certificate"),
])
def test_a_bad_tls_configuration_is_one_line_at_start(tmp_path, tls, files, message):
    names = {"cert": tls.cert, "key": tls.key, "missing": tmp_path / "missing-key.pem"}
    done = serve_until_exit(tmp_path / "data", *(arg.format(**names) for arg in files))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livesnap: "), done.stderr
    assert lines[0].endswith(message.format(**names)), done.stderr
