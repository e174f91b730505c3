"""The ASGI app in-process over the memory store: routing, envelope, parameters, fuzzing."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.signing import rpc_query

from livesnap.api.app import ApiDeps, create_app
from livesnap.api.signature import NonceCache
from livesnap.capture.standin import NoCapture
from livesnap.clock import SystemClock
from livesnap.config import AccessKey, KeyRing
from livesnap.jobs.manager import JobManager
from livesnap.store import MemoryStore

KEYS = KeyRing([AccessKey("testid", "testsecret", "acct-a"), AccessKey("otherid", "othersecret", "acct-b")])
OUTPUT = json.dumps({"StorageType": "oss", "Endpoint": "oss-cn-shanghai.aliyuncs.com", "Bucket": "bucket-1"})
INPUT = json.dumps({"Type": "rtmp", "Url": "rtmp://127.0.0.1:1/live/none"})


@pytest.fixture
async def client():
    store = MemoryStore()
    manager = JobManager(store=store, clock=SystemClock())
    manager.attach_engine(NoCapture())
    await manager.open()
    app = create_app(ApiDeps(manager=manager, keys=KEYS, clock=SystemClock(), nonces=NonceCache()))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        c.store = store  # type: ignore[attr-defined]
        yield c
    await manager.close(1)


async def call(client, action, params=None, *, method="GET", key=("testid", "testsecret")):
    params = params or {}
    if method == "GET":
        query = rpc_query(action, params, key_id=key[0], secret=key[1])
        return await client.get("/?" + query)
    body = list(params.items())
    query = rpc_query(action, {}, key_id=key[0], secret=key[1], method="POST", body=body)
    return await client.post(
        "/?" + query,
        content=urlencode(body),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def assert_error(resp, status, code):
    body = resp.json()
    assert resp.status_code == status, body
    assert body["Code"] == code
    assert set(body) == {"RequestId", "HostId", "Code", "Message", "Recommend"}
    assert body["RequestId"] == body["RequestId"].upper()
    return body


async def test_unsigned_request_is_rejected(client):
    resp = await client.get("/?Action=GetLiveSnapshotJob&Version=2020-11-09&JobId=x")
    assert_error(resp, 400, "IncompleteSignature")


async def test_unknown_action_and_bad_version(client):
    resp = await call(client, "DescribeNothing")
    assert_error(resp, 404, "InvalidAction.NotFound")
    query = rpc_query("GetLiveSnapshotJob", {"JobId": "x"}).replace("2020-11-09", "2017-01-01")
    # changing the signed Version breaks the signature first: the check order is auth first
    resp = await client.get("/?" + query)
    assert_error(resp, 400, "SignatureDoesNotMatch")


async def test_template_lifecycle_and_errors(client):
    resp = await call(client, "CreateLiveSnapshotTemplate", {
        "TemplateName": "t1", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.jpg",
    }, method="POST")
    assert resp.status_code == 200, resp.text
    tid = resp.json()["TemplateId"]
    got = (await call(client, "GetLiveSnapshotTemplate", {"TemplateId": tid})).json()
    assert got["TimeInterval"] == 10
    assert got["Type"] == "custom"
    assert got["SequenceFormat"] == ""
    other = await call(client, "GetLiveSnapshotTemplate", {"TemplateId": tid}, key=("otherid", "othersecret"))
    assert_error(other, 404, "TemplateNotFound")
    bad = await call(client, "CreateLiveSnapshotTemplate", {
        "TemplateName": "t2", "TimeInterval": "4", "OverwriteFormat": "o.jpg",
    }, method="POST")
    assert "between 5 and 3600" in assert_error(bad, 400, "InvalidParameter")["Message"]
    system = await call(client, "DeleteLiveSnapshotTemplate", {"TemplateId": "system"}, method="POST")
    assert_error(system, 403, "Forbidden")


async def test_submit_rejections_change_nothing(client):
    base = {"JobName": "j", "TemplateId": "system", "StreamInput": INPUT, "SnapshotOutput": OUTPUT}
    cases = [
        ({**base, "StreamInput": "{not json"}, 400, "InvalidParameter"),
        ({**base, "StreamInput": "[1]"}, 400, "InvalidParameter"),
        ({k: v for k, v in base.items() if k != "JobName"}, 400, "MissingParameter"),
        ({**base, "TemplateId": "nope"}, 404, "TemplateNotFound"),
        ({**base, "CallbackUrl": "ftp://x/y"}, 400, "InvalidParameter"),
        ({**base, "SnapshotOutput": json.dumps({"StorageType": "oss", "Endpoint": "e", "Bucket": "B"})}, 400, "InvalidParameter"),
    ]
    for params, status, code in cases:
        assert_error(await call(client, "SubmitLiveSnapshotJob", params, method="POST"), status, code)
    listed = (await call(client, "ListLiveSnapshotJobs")).json()
    assert listed["TotalCount"] == 0


async def test_submit_then_start_without_stream(client):
    params = {"JobName": "j", "TemplateId": "system", "StreamInput": INPUT, "SnapshotOutput": OUTPUT}
    resp = await call(client, "SubmitLiveSnapshotJob", params, method="POST")
    job_id = resp.json()["JobId"]
    job = (await call(client, "GetLiveSnapshotJob", {"JobId": job_id})).json()
    assert job["Status"] == "init"
    assert job["StreamInput"] == {"Url": "rtmp://127.0.0.1:1/live/none", "Type": "rtmp"}
    start = await call(client, "SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "start"}, method="POST")
    assert_error(start, 400, "StreamNotFound")
    stop = await call(client, "SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "stop"}, method="POST")
    assert stop.status_code == 200
    job = (await call(client, "GetLiveSnapshotJob", {"JobId": job_id})).json()
    assert job["Status"] == "paused"
    bad = await call(client, "SendLiveSnapshotJobCommand", {"JobId": job_id, "Command": "explode"}, method="POST")
    assert_error(bad, 400, "InvalidParameter")


async def test_files_window_and_delete_validation(client):
    params = {"JobName": "j", "TemplateId": "system", "StreamInput": INPUT, "SnapshotOutput": OUTPUT}
    job_id = (await call(client, "SubmitLiveSnapshotJob", params, method="POST")).json()["JobId"]
    wide = await call(client, "ListLiveSnapshotFiles", {
        "JobId": job_id, "StartTime": "2024-01-01T00:00:00Z", "EndTime": "2024-01-03T00:00:00Z"})
    assert "1 day" in assert_error(wide, 400, "InvalidParameter")["Message"]
    ok = await call(client, "ListLiveSnapshotFiles", {
        "JobId": job_id, "StartTime": "2024-01-01T00:00:00Z", "EndTime": "2024-01-01T10:00:00Z"})
    assert ok.json()["FileList"] == []
    assert "NextStartTime" not in ok.json()
    for stamps in ("[1.5]", "{}", "[]", json.dumps(list(range(201))), "[true]",
                   "[9223372036854775808]", "[-9223372036854775809]", json.dumps([10**30])):
        resp = await client.post("/?" + rpc_query("DeleteLiveSnapshotFiles", {
            "JobId": job_id, "CreateTimestampList": stamps}, method="POST"))
        assert_error(resp, 400, "InvalidParameter")
    resp = await client.post("/?" + rpc_query("DeleteLiveSnapshotFiles", {
        "JobId": job_id, "CreateTimestampList": "[5]", "DeleteOriginalFile": "True"}, method="POST"))
    assert resp.json()["DeleteFileResultList"] == [{"CreateTimestamp": 5, "Result": "FileNotFound"}]


ACTIONS = [
    "CreateLiveSnapshotTemplate", "UpdateLiveSnapshotTemplate", "DeleteLiveSnapshotTemplate",
    "GetLiveSnapshotTemplate", "ListLiveSnapshotTemplates", "SubmitLiveSnapshotJob",
    "GetLiveSnapshotJob", "ListLiveSnapshotJobs", "SendLiveSnapshotJobCommand",
    "ListLiveSnapshotFiles", "DeleteLiveSnapshotFiles",
]
NAMES = [
    "TemplateName", "TimeInterval", "OverwriteFormat", "SequenceFormat", "TemplateId", "PageNo",
    "PageSize", "SortBy", "SearchKeyWord", "TemplateIds.1", "TemplateIds.999", "Type", "JobName",
    "StreamInput", "SnapshotOutput", "CallbackUrl", "JobId", "StartTime", "EndTime", "Status",
    "Command", "Limit", "CreateTimestampList", "DeleteOriginalFile",
]
VALUES = st.one_of(
    st.text(max_size=40),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["True", "false", "{}", "[]", "null", '{"Type":"rtmp","Url":1}', "[1e999]",
                     "2024-02-30T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z",
                     "system", "asc", "desc", "start", "capture", '{"a":' * 50]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(ACTIONS),
    params=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8),
    post=st.booleans(),
)
async def test_arbitrary_parameters_never_give_5xx(client, action, params, post):
    before = len(client.store._jobs), len(client.store._templates)  # type: ignore[attr-defined]
    resp = await call(client, action, params, method="POST" if post else "GET")
    assert resp.status_code < 500, resp.text
    body = resp.json()
    assert isinstance(body, dict) and body["RequestId"]
    if resp.status_code >= 400:
        after = len(client.store._jobs), len(client.store._templates)  # type: ignore[attr-defined]
        assert after == before


async def test_every_answer_is_counted_by_action_and_code():
    from livesnap.metrics import Metrics

    metrics = Metrics(process=False)
    manager = JobManager(store=MemoryStore(), clock=SystemClock())
    manager.attach_engine(NoCapture())
    await manager.open()
    app = create_app(ApiDeps(manager=manager, keys=KEYS, clock=SystemClock(),
                             nonces=NonceCache(), observe=metrics.api_request))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://testserver") as c:
        assert (await call(c, "ListLiveSnapshotTemplates")).status_code == 200
        assert (await call(c, "ListLiveSnapshotTemplates")).status_code == 200
        assert_error(await call(c, "GetLiveSnapshotJob", {"JobId": "nope"}), 404, "JobNotFound")
        assert_error(await call(c, "ListLiveSnapshotJobs", key=("testid", "wrong")), 400,
                     "SignatureDoesNotMatch")
        assert_error(await call(c, "NoSuchAction"), 404, "InvalidAction.NotFound")
    await manager.close(1)
    text = metrics.render()[0].decode()

    def count(action: str, code: str) -> float:
        line = f'livesnap_api_requests_total{{action="{action}",code="{code}"}} '
        found = [ln for ln in text.splitlines() if ln.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    assert count("ListLiveSnapshotTemplates", "OK") == 2
    assert count("GetLiveSnapshotJob", "JobNotFound") == 1
    # refused before the action is read: no action label, so no unbounded label values
    assert count("-", "SignatureDoesNotMatch") == 1
    assert count("-", "InvalidAction.NotFound") == 1
    assert 'livesnap_api_request_seconds_count{action="ListLiveSnapshotTemplates"} 2.0' in text
