"""Account isolation, signature tampering and quotas against ``livesnap serve`` (a subprocess).

Account A (``testid``) owns a custom template and two jobs capturing a live nginx-rtmp stream:
``kept`` has snapshots and is stopped (its data must not change), ``live`` keeps capturing
(B's commands must not touch it). Account B (``otherid``) tries every operation on A's ids
through the official SDK (the livesnap extensions through signed raw HTTP), then the console
with B's session (httpx, and once in real Chromium). Every refusal must be exactly the refusal
for an id that does not exist, and A's data is compared before and after.

Signature checks go over real HTTP with the test signers, because the SDK always signs
correctly; quotas use their own servers. Throttling.User is in ``test_api_limits.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from playwright.sync_api import expect, sync_playwright
from Tea.exceptions import TeaException

from tests.support.servers import Publisher, RtmpOrigin, make_clip, require_binary, wait_stream_live
from tests.support.service import LivesnapServer, ice_client
from tests.support.signing import acs3_headers, rpc_query
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

FAST = {"LIVESNAP_RW_TIMEOUT_S": "2", "LIVESNAP_RECONNECT_MAX_S": "2"}
OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def stream(url: str) -> m.SubmitLiveSnapshotJobRequestStreamInput:
    return m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url)


def submit(client, url: str, name: str, template_id: str = "system") -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=name, template_id=template_id, stream_input=stream(url),
        snapshot_output=OUTPUT)).body.job_id


def files_of(client, job_id: str) -> list[dict[str, Any]]:
    now = datetime.now(tz=UTC)
    body = client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time=iso(now - timedelta(hours=1)),
        end_time=iso(now + timedelta(minutes=5)), limit=100)).body
    return [f.to_map() for f in body.file_list]


def refusal(call: Callable[[], object]) -> tuple[int, str, str]:
    """(HTTP status, Code, Message) of a refused SDK call."""
    with pytest.raises(TeaException) as info:
        call()
    err = info.value
    return err.status_code, err.code, err.data["Message"]


def raw_rpc(endpoint: str, action: str, key: str, secret: str, **params: str) -> httpx.Response:
    return httpx.post(f"http://{endpoint}/?{rpc_query(action, params, key_id=key, secret=secret, method='POST')}",
                      timeout=30)


def raw_job(endpoint: str, job_id: str) -> dict[str, Any]:
    """A's ``GetLiveSnapshotJob`` with livesnap's extra fields (the SDK model drops them)."""
    response = httpx.get(f"http://{endpoint}/?{rpc_query('GetLiveSnapshotJob', {'JobId': job_id})}",
                         timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body.pop("RequestId")
    return body


class World:
    """A's data, seen through A's own client."""

    def __init__(self, server: LivesnapServer, publisher: Publisher) -> None:
        self.server = server
        self.endpoint = server.endpoint
        self.a = ice_client(server.endpoint)
        self.a_rpc = ice_client(server.endpoint, v2=True)
        self.b = ice_client(server.endpoint, key="otherid", secret="othersecret")
        self.template_id = self.a.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
            template_name="a-private-template", time_interval=5,
            overwrite_format="a/{JobId}.jpg",
            sequence_format="a/{JobId}/{UnixTimestamp}.jpg")).body.template_id
        self.kept = submit(self.a, publisher.url, "a-kept-job", self.template_id)
        self.live = submit(self.a, publisher.url, "a-live-job", self.template_id)
        for job_id in (self.kept, self.live):
            wait_until(lambda job_id=job_id: len(files_of(self.a, job_id)) >= 2, 40,
                       f"two snapshots of {job_id}")
        self.a.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=self.kept, command="stop"))
        self.kept_files = files_of(self.a, self.kept)
        self.stamps = [f["CreateTimestamp"] for f in self.kept_files]

    def status(self, job_id: str) -> tuple[str, str]:
        job = raw_job(self.endpoint, job_id)
        return job["Status"], job["StreamStatus"]

    def snapshot(self) -> dict[str, Any]:
        """Everything of A that must not change: records through the API, objects on disk."""
        a = self.a
        template = a.get_live_snapshot_template(
            m.GetLiveSnapshotTemplateRequest(template_id=self.template_id)).body.to_map()
        templates = a.list_live_snapshot_templates(
            m.ListLiveSnapshotTemplatesRequest(page_size=100)).body.to_map()
        kept = raw_job(self.endpoint, self.kept)
        jobs = a.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(page_size=100)).body
        storage = self.server.data_dir / "storage"
        objects = {str(p.relative_to(storage)): hashlib.sha256(p.read_bytes()).hexdigest()
                   for p in sorted(storage.rglob("*")) if p.is_file() and self.kept in str(p)}
        for body in (template, templates):
            body.pop("RequestId", None)
        return {
            "template": template,
            "templates": templates,
            "kept": kept,
            "jobs": sorted((j.job_id, j.job_name, j.template_id) for j in jobs.job_list),
            "kept_files": files_of(a, self.kept),
            "objects": objects,
            "live": self.status(self.live),
        }


@pytest.fixture(scope="module")
def world(tmp_path_factory, rtmp_origin: RtmpOrigin) -> Iterator[World]:
    publisher = Publisher(make_clip("360p"), rtmp_origin.url(f"iso-{uuid.uuid4().hex[:8]}"))
    publisher.start()
    try:
        wait_stream_live(rtmp_origin, publisher.url.rsplit("/", 1)[1], publisher=publisher)
        with LivesnapServer(tmp_path_factory.mktemp("iso") / "data", env=FAST) as server:
            world = World(server, publisher)
            assert len(world.kept_files) >= 2 and world.status(world.live) == ("started", "live")
            yield world
    finally:
        publisher.stop()


def b_operations(w: World) -> dict[str, Callable[[str, str], object]]:
    """Every per-id operation, as B: ``op(template_or_job_id, kind)``."""
    b = w.b
    return {
        "GetLiveSnapshotTemplate": lambda tid, _: b.get_live_snapshot_template(
            m.GetLiveSnapshotTemplateRequest(template_id=tid)),
        "UpdateLiveSnapshotTemplate": lambda tid, _: b.update_live_snapshot_template(
            m.UpdateLiveSnapshotTemplateRequest(template_id=tid, template_name="b-was-here",
                                                time_interval=60, overwrite_format="b.jpg")),
        "DeleteLiveSnapshotTemplate": lambda tid, _: b.delete_live_snapshot_template(
            m.DeleteLiveSnapshotTemplateRequest(template_id=tid)),
        "SubmitLiveSnapshotJob": lambda tid, _: b.submit_live_snapshot_job(
            m.SubmitLiveSnapshotJobRequest(job_name="b-job", template_id=tid,
                                           stream_input=stream("rtmp://127.0.0.1:9/live/x"),
                                           snapshot_output=OUTPUT)),
    }


def b_job_operations(w: World) -> dict[str, Callable[[str], object]]:
    b = w.b
    now = datetime.now(tz=UTC)
    window = {"start_time": iso(now - timedelta(hours=1)), "end_time": iso(now + timedelta(minutes=5))}
    ops: dict[str, Callable[[str], object]] = {
        "GetLiveSnapshotJob": lambda jid: b.get_live_snapshot_job(
            m.GetLiveSnapshotJobRequest(job_id=jid)),
        "ListLiveSnapshotFiles": lambda jid: b.list_live_snapshot_files(
            m.ListLiveSnapshotFilesRequest(job_id=jid, limit=100, **window)),
        "DeleteLiveSnapshotFiles": lambda jid: b.delete_live_snapshot_files(
            m.DeleteLiveSnapshotFilesRequest(job_id=jid, create_timestamp_list=w.stamps,
                                             delete_original_file=True)),
    }
    for command in ("start", "stop", "restart", "capture"):
        ops[f"SendLiveSnapshotJobCommand {command}"] = lambda jid, c=command: (
            b.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=jid, command=c)))
    return ops


def test_account_b_cannot_reach_account_a_through_any_operation(world: World):
    w = world
    before = w.snapshot()
    missing = str(uuid.uuid4())
    tried = 0
    for name, op in b_operations(w).items():
        foreign = refusal(lambda op=op: op(w.template_id, "template"))
        assert foreign == (404, "TemplateNotFound", foreign[2]), name
        assert foreign == refusal(lambda op=op: op(missing, "template")), name  # no oracle
        tried += 1
    for job_id in (w.kept, w.live):
        for name, job_op in b_job_operations(w).items():
            foreign = refusal(lambda job_op=job_op, job_id=job_id: job_op(job_id))
            assert foreign[:2] == (404, "JobNotFound"), (name, foreign)
            assert foreign == refusal(lambda job_op=job_op: job_op(missing)), name
            tried += 1
    for action in ("ListLiveSnapshotCallbackAttempts", "ReplayLiveSnapshotCallbacks"):
        for job_id in (w.kept, w.live):
            foreign = raw_rpc(w.endpoint, action, "otherid", "othersecret", JobId=job_id)
            absent = raw_rpc(w.endpoint, action, "otherid", "othersecret", JobId=missing)
            assert foreign.status_code == absent.status_code == 404, foreign.text
            body, nobody = foreign.json(), absent.json()
            assert (body["Code"], body["Message"]) == (nobody["Code"], nobody["Message"])
            assert body["Code"] == "JobNotFound"
            tried += 1
        # and A can: the ids are right
        assert raw_rpc(w.endpoint, action, "testid", "testsecret", JobId=w.kept).status_code == 200
    for job_id in (w.kept, w.live):  # deleting A's job (and its objects) as B
        foreign = raw_rpc(w.endpoint, "DeleteLiveSnapshotJob", "otherid", "othersecret",
                          JobId=job_id, DeleteOriginalFiles="true")
        absent = raw_rpc(w.endpoint, "DeleteLiveSnapshotJob", "otherid", "othersecret",
                         JobId=missing, DeleteOriginalFiles="true")
        assert foreign.status_code == absent.status_code == 404, foreign.text
        assert (foreign.json()["Code"], foreign.json()["Message"]) == (
            absent.json()["Code"], absent.json()["Message"])
        tried += 1
    assert tried == 4 + 2 * 7 + 4 + 2

    # lists: nothing of A's, whatever B filters on
    b = w.b
    a_templates = {w.template_id}
    for request in (m.ListLiveSnapshotTemplatesRequest(page_size=100),
                    m.ListLiveSnapshotTemplatesRequest(page_size=100, type="custom"),
                    m.ListLiveSnapshotTemplatesRequest(template_ids=[w.template_id, "system"]),
                    m.ListLiveSnapshotTemplatesRequest(search_key_word=w.template_id),
                    m.ListLiveSnapshotTemplatesRequest(search_key_word="a-private")):
        listed = b.list_live_snapshot_templates(request).body
        assert not a_templates & {t.template_id for t in listed.template_list}
        assert all(t.template_name != "a-private-template" for t in listed.template_list)
    assert b.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
        search_key_word=w.template_id)).body.total_count == 0
    for request in (m.ListLiveSnapshotJobsRequest(page_size=100),
                    m.ListLiveSnapshotJobsRequest(search_key_word=w.kept),
                    m.ListLiveSnapshotJobsRequest(search_key_word=w.live),
                    m.ListLiveSnapshotJobsRequest(search_key_word="a-"),
                    m.ListLiveSnapshotJobsRequest(status="started", page_size=100),
                    m.ListLiveSnapshotJobsRequest(status="paused", page_size=100)):
        listed = b.list_live_snapshot_jobs(request).body
        assert listed.total_count == 0 and listed.job_list == [], request.to_map()
    # the same filters find A's items for A (so the filters themselves work)
    assert w.a.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
        search_key_word=w.kept)).body.total_count == 1
    assert w.a.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
        search_key_word=w.template_id)).body.total_count == 1

    after = w.snapshot()
    assert after == before
    assert after["live"] == ("started", "live")  # B's stop/restart did not reach it
    assert len(after["objects"]) == len(w.stamps) + 1  # B's deletes left every object (+ overwrite)


def console_session(base: str, key: str, secret: str) -> httpx.Client:
    client = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
    form = client.get("/console/login")
    token = CSRF.search(form.text)
    assert token, form.text[:500]
    done = client.post("/console/login", data={
        "csrf_token": token.group(1), "next": "/console/", "access_key_id": key,
        "access_key_secret": secret})
    assert done.status_code == 303 and done.headers["location"] == "/console/", done.text[:300]
    return client


def csrf_of(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    token = CSRF.search(page.text)
    assert page.status_code == 200 and token, (path, page.status_code)
    return token.group(1)


def test_console_shows_account_b_nothing_of_account_a(world: World):
    w = world
    base = f"http://{w.endpoint}"
    before = w.snapshot()
    stamp = w.stamps[0]
    a_session = console_session(base, "testid", "testsecret")
    b_session = console_session(base, "otherid", "othersecret")
    try:
        def gets(job_id: str, template_id: str) -> dict[str, str]:
            return {
                "job page": f"/console/jobs/{job_id}",
                "state": f"/console/jobs/{job_id}/state.json",
                "latest picture": f"/console/jobs/{job_id}/latest.jpg",
                "file picture": f"/console/jobs/{job_id}/files/{stamp}.jpg",
                "template editor": f"/console/templates/{template_id}",
            }

        # A sees all of these (so the addresses are right)
        for name, path in gets(w.kept, w.template_id).items():
            assert a_session.get(path).status_code == 200, name
        missing = str(uuid.uuid4())
        foreign_paths = gets(w.kept, w.template_id)
        absent_paths = gets(missing, missing)
        for name, path in foreign_paths.items():
            foreign = b_session.get(path)
            absent = b_session.get(absent_paths[name])
            assert foreign.status_code == absent.status_code == 404, (name, foreign.status_code)
            assert "a-kept-job" not in foreign.text and w.template_id not in foreign.text
            if "picture" in name or name == "state":
                assert foreign.content == absent.content
                assert not foreign.content.startswith(b"\xff\xd8")
            else:  # the same page, but for its CSRF token
                assert CSRF.sub("", foreign.text) == CSRF.sub("", absent.text)

        token = csrf_of(b_session, "/console/")
        posts = {
            f"/console/jobs/{w.live}/command": {"command": "stop"},
            f"/console/jobs/{w.kept}/command": {"command": "start"},
            f"/console/templates/{w.template_id}": {
                "name": "b-was-here", "interval": "60", "overwrite_format": "b.jpg",
                "sequence_format": "", "image_format": "jpg"},
            f"/console/templates/{w.template_id}/delete": {},
        }
        for path, form in posts.items():
            response = b_session.post(path, data={"csrf_token": token, **form},
                                      headers={"Origin": base})
            assert response.status_code == 404, (path, response.status_code, response.text[:300])
        for path in ("/console/", "/console/templates"):
            page = b_session.get(path)
            assert page.status_code == 200
            for secret in (w.kept, w.live, w.template_id, "a-kept-job", "a-live-job",
                           "a-private-template"):
                assert secret not in page.text, (path, secret)
        assert "a-live-job" in a_session.get("/console/").text  # A's wall does show it
        assert "a-private-template" in a_session.get("/console/templates").text
    finally:
        a_session.close()
        b_session.close()
    assert w.snapshot() == before


def test_console_in_chromium_refuses_account_a_job_to_account_b(world: World):
    w = world
    base = f"http://{w.endpoint}"
    executable = require_binary(CHROMIUM, "chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_context().new_page()
            page.goto(f"{base}/console/login")
            page.get_by_label("Access key ID").fill("otherid")
            page.get_by_label("Access key secret").fill("othersecret")
            page.get_by_role("button", name="Log in").click()
            expect(page).to_have_url(f"{base}/console/")
            expect(page.get_by_text("a-live-job")).to_have_count(0)
            response = page.goto(f"{base}/console/jobs/{w.live}")
            assert response is not None and response.status == 404
            expect(page.get_by_role("heading", level=1)).to_have_text("Job not found")
            for path in (f"/console/jobs/{w.live}/latest.jpg",
                         f"/console/jobs/{w.kept}/files/{w.stamps[0]}.jpg",
                         f"/console/jobs/{w.live}/state.json"):
                fetched = page.request.get(base + path)
                assert fetched.status == 404, path
            # the page's own script cannot read it either (same origin, B's cookie)
            status = page.evaluate("async (u) => (await fetch(u)).status",
                                   f"{base}/console/jobs/{w.live}/state.json")
            assert status == 404
        finally:
            browser.close()
    assert w.status(w.live) == ("started", "live")


# ------------------------------------------------------------------------------------------
# signatures over real HTTP
# ------------------------------------------------------------------------------------------


def acs3_get(endpoint: str, action: str, query: dict[str, str], **signer: Any) -> tuple[str, dict[str, str]]:
    raw = urlencode(query)
    headers = acs3_headers(action, method="GET", host=endpoint, raw_query=raw, **signer)
    return f"http://{endpoint}/?{raw}", headers


def ice_error(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert body["RequestId"], body
    return response.status_code, body["Code"]


def test_tampered_replayed_and_stale_requests_are_refused(world: World):
    endpoint = world.endpoint
    query = {"TemplateId": world.template_id}
    get = "GetLiveSnapshotTemplate"

    # a correct request passes (the signers are right), then its exact replay is refused
    url, headers = acs3_get(endpoint, get, query)
    assert httpx.get(url, headers=headers).status_code == 200
    assert ice_error(httpx.get(url, headers=headers)) == (400, "SignatureNonceUsed")
    rpc = f"http://{endpoint}/?{rpc_query(get, query)}"
    assert httpx.get(rpc).status_code == 200
    assert ice_error(httpx.get(rpc)) == (400, "SignatureNonceUsed")

    # ACS3: a changed parameter, a changed signed header, another key's id
    url, headers = acs3_get(endpoint, get, query)
    assert ice_error(httpx.get(url.replace(world.template_id, "system"), headers=headers)) == (
        400, "SignatureDoesNotMatch")
    url, headers = acs3_get(endpoint, get, query)
    assert ice_error(httpx.get(url, headers={**headers, "x-acs-action": "DeleteLiveSnapshotTemplate"})) == (
        400, "SignatureDoesNotMatch")
    url, headers = acs3_get(endpoint, get, query)
    assert ice_error(httpx.get(url, headers={**headers, "x-acs-date": iso(
        datetime.now(tz=UTC) - timedelta(minutes=1))})) == (400, "SignatureDoesNotMatch")
    url, headers = acs3_get(endpoint, get, query)
    forged = headers["authorization"].replace("Credential=testid", "Credential=otherid")
    assert ice_error(httpx.get(url, headers={**headers, "authorization": forged})) == (
        400, "SignatureDoesNotMatch")
    # a signed header left out of SignedHeaders
    url, headers = acs3_get(endpoint, get, query)
    unsigned = headers["authorization"].replace("x-acs-action;", "")
    assert ice_error(httpx.get(url, headers={**headers, "authorization": unsigned})) == (
        400, "IncompleteSignature")

    # RPC: a changed parameter, a parameter added after signing, the key id swapped
    rpc = rpc_query(get, query)
    assert ice_error(httpx.get(f"http://{endpoint}/?{rpc.replace(world.template_id, 'system')}")) == (
        400, "SignatureDoesNotMatch")
    assert ice_error(httpx.get(f"http://{endpoint}/?{rpc_query(get, query)}&PageNo=2")) == (
        400, "SignatureDoesNotMatch")
    swapped = rpc_query(get, query).replace("AccessKeyId=testid", "AccessKeyId=otherid")
    assert ice_error(httpx.get(f"http://{endpoint}/?{swapped}")) == (400, "SignatureDoesNotMatch")

    # expired and future timestamps, both schemes; inside the window is fine
    now = datetime.now(tz=UTC)
    for offset, ok in ((-16, False), (16, False), (-14, True), (14, True)):
        moment = now + timedelta(minutes=offset)
        url, headers = acs3_get(endpoint, get, query, now=moment)
        acs3 = httpx.get(url, headers=headers)
        rpc_resp = httpx.get(f"http://{endpoint}/?{rpc_query(get, query, now=moment)}")
        for response in (acs3, rpc_resp):
            if ok:
                assert response.status_code == 200, (offset, response.text)
            else:
                assert ice_error(response) == (400, "InvalidTimeStamp.Expired"), offset
    bad_stamp = rpc_query(get, query).replace("Timestamp=", "Timestamp=yesterday")
    assert ice_error(httpx.get(f"http://{endpoint}/?{bad_stamp}")) == (400, "InvalidTimeStamp.Format")


def test_a_replayed_or_tampered_write_changes_nothing(world: World):
    endpoint = world.endpoint
    before = world.snapshot()
    name = f"replayed-{uuid.uuid4().hex[:6]}"
    body = urlencode({"TemplateName": name, "TimeInterval": "30",
                      "OverwriteFormat": "r/{JobId}.jpg"}).encode()
    kind = "application/x-www-form-urlencoded"
    headers = acs3_headers("CreateLiveSnapshotTemplate", method="POST", host=endpoint, body=body,
                           content_type=kind)
    first = httpx.post(f"http://{endpoint}/", content=body, headers=headers)
    assert first.status_code == 200, first.text
    assert ice_error(httpx.post(f"http://{endpoint}/", content=body, headers=headers)) == (
        400, "SignatureNonceUsed")
    # the body changed after signing (same x-acs-content-sha256)
    headers = acs3_headers("CreateLiveSnapshotTemplate", method="POST", host=endpoint, body=body,
                           content_type=kind)
    changed = body.replace(b"TimeInterval=30", b"TimeInterval=60")
    assert ice_error(httpx.post(f"http://{endpoint}/", content=changed, headers=headers)) == (
        400, "IncompleteSignature")
    # RPC: DeleteLiveSnapshotFiles of A's files, replayed after A's own signed call was used up
    params = {"JobId": world.kept, "CreateTimestampList": json.dumps([world.stamps[0]])}
    used = rpc_query("DeleteLiveSnapshotFiles", params, method="POST", nonce=uuid.uuid4().hex)
    bogus = used.replace(f"{world.stamps[0]}", f"{world.stamps[0] + 1}")
    assert ice_error(httpx.post(f"http://{endpoint}/?{bogus}")) == (400, "SignatureDoesNotMatch")
    # the tampered request did not use up the nonce, so this is the one genuine delete:
    # answering "FileNotFound" for a stamp that does not exist (one ms off) leaves A's files alone
    genuine = rpc_query("DeleteLiveSnapshotFiles", {**params, "CreateTimestampList": json.dumps(
        [world.stamps[0] + 1])}, method="POST")
    result = httpx.post(f"http://{endpoint}/?{genuine}").json()["DeleteFileResultList"]
    assert result == [{"CreateTimestamp": world.stamps[0] + 1, "Result": "FileNotFound"}]
    assert ice_error(httpx.post(f"http://{endpoint}/?{genuine}")) == (400, "SignatureNonceUsed")

    listed = world.a.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
        search_key_word=name)).body
    assert [t.template_name for t in listed.template_list] == [name]  # created once
    world.a.delete_live_snapshot_template(m.DeleteLiveSnapshotTemplateRequest(
        template_id=listed.template_list[0].template_id))
    assert world.snapshot() == before


# ------------------------------------------------------------------------------------------
# quotas
# ------------------------------------------------------------------------------------------


def started_count(client) -> int:
    return client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
        status="started", page_size=100)).body.total_count


def test_jobs_per_account_quota_holds_for_a_burst_of_submits(tmp_path, rtmp_origin: RtmpOrigin):
    publisher = Publisher(make_clip("360p"), rtmp_origin.url(f"quota-{uuid.uuid4().hex[:8]}"))
    publisher.start()
    try:
        wait_stream_live(rtmp_origin, publisher.url.rsplit("/", 1)[1], publisher=publisher)
        env = {**FAST, "LIVESNAP_MAX_JOBS_PER_ACCOUNT": "2"}
        with LivesnapServer(tmp_path / "data", env=env) as server:
            a = ice_client(server.endpoint)
            b = ice_client(server.endpoint, key="otherid", secret="othersecret")
            # five submits at once: every background probe is running before any has finished
            jobs = [submit(a, publisher.url, f"burst-{i}") for i in range(5)]
            b_job = submit(b, publisher.url, "b-burst")

            def settled() -> bool:
                details = [raw_job(server.endpoint, j) for j in jobs]
                return all(d["Status"] == "started" or d["LastError"] for d in details)

            wait_until(settled, 40, "every probe to answer")
            assert started_count(a) == 2
            refused = [j for j in jobs if a.get_live_snapshot_job(
                m.GetLiveSnapshotJobRequest(job_id=j)).body.status == "init"]
            assert len(refused) == 3
            for job_id in refused:
                assert "at most 2 started jobs per account" in raw_job(
                    server.endpoint, job_id)["LastError"]
            err = refusal(lambda: a.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=refused[0], command="start")))
            assert err[:2] == (400, "JobLimitExceeded")
            # the quota is per account: B's job started
            wait_until(lambda: b.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(
                job_id=b_job)).body.status == "started", 20, "B's job to start")
            # a stop frees a slot
            started = next(j for j in jobs if j not in refused)
            a.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=started, command="stop"))
            a.send_live_snapshot_job_command(
                m.SendLiveSnapshotJobCommandRequest(job_id=refused[0], command="start"))
            assert started_count(a) == 2
    finally:
        publisher.stop()
