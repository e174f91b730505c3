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
    from livesnap.node.metrics import Metrics

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


# --------------------------------------------------------------------------- parameter placement


def signed_pairs(action, params, *, method="POST", fmt="JSON"):
    """Every pair of a signed RPC request, Signature included, in the order it was signed."""
    from urllib.parse import parse_qsl

    return parse_qsl(rpc_query(action, params, method=method, fmt=fmt), keep_blank_values=True)


async def post_placed(client, pairs, in_query=()):
    """A form POST with the pairs named in ``in_query`` in the query and the rest in the body."""
    query = [p for p in pairs if p[0] in in_query]
    return await client.post("/?" + urlencode(query), content=urlencode(
        [p for p in pairs if p[0] not in in_query]),
        headers={"content-type": "application/x-www-form-urlencoded"})


@pytest.mark.parametrize("in_query", [
    (),  # all in the body, as older clients in other languages send them
    ("Action", "Version", "Signature"),
    ("AccessKeyId", "Timestamp", "SignatureNonce", "TemplateName"),
], ids=["all-in-body", "routing-in-query", "common-split"])
async def test_every_parameter_may_come_from_query_or_body(client, in_query):
    pairs = signed_pairs("CreateLiveSnapshotTemplate", {
        "TemplateName": "placed", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.jpg"})
    resp = await post_placed(client, pairs, in_query)
    assert resp.status_code == 200, resp.text
    got = (await call(client, "GetLiveSnapshotTemplate", {"TemplateId": resp.json()["TemplateId"]}))
    assert got.json()["TemplateName"] == "placed"


async def test_a_parameter_in_both_query_and_body(client):
    """The same value twice is one parameter; two different values are refused."""
    params = {"TemplateName": "twice", "TimeInterval": "10", "OverwriteFormat": "o.jpg"}
    pairs = signed_pairs("CreateLiveSnapshotTemplate", [*params.items(), ("TimeInterval", "10")])
    resp = await post_placed(client, pairs, ("TimeInterval",))
    assert resp.status_code == 200, resp.text
    pairs = signed_pairs("CreateLiveSnapshotTemplate", [*params.items(), ("TimeInterval", "20")])
    resp = await post_placed(client, pairs, ("TimeInterval",))
    body = assert_error(resp, 400, "InvalidParameter")
    assert body["Message"] == (
        'The parameter "TimeInterval" is given more than once with different values.')
    listed = (await call(client, "ListLiveSnapshotTemplates", {"Type": "custom"})).json()
    assert [t["TimeInterval"] for t in listed["TemplateList"]] == [10]


# --------------------------------------------------------------------------- Format=XML


def flat_json(value, path=""):
    """(path, text) leaves of a JSON answer, in the order the XML shape gives them."""
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in flat_json(v, f"{path}/{k}")] or [
            (path, "")]
    if isinstance(value, list):
        return [leaf for item in value for leaf in flat_json(item, path)]
    if value is None:
        return []
    return [(path, ("true" if value else "false") if isinstance(value, bool) else str(value))]


def flat_xml(element, path=""):
    if len(element):
        return [leaf for child in element for leaf in flat_xml(child, f"{path}/{child.tag}")]
    return [(path, element.text or "")]


MASKED = {"/RequestId", "/TemplateId", "/JobId", "/CreateTime", "/LastModified", "/Recommend"}


def xml_leaves(resp, root):
    import xml.etree.ElementTree as ET

    assert resp.headers["content-type"] == "text/xml;charset=utf-8"
    assert resp.content.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    tree = ET.fromstring(resp.content)
    assert tree.tag == root
    return [(p, "*" if p in MASKED else v) for p, v in flat_xml(tree)]


def json_leaves(resp):
    assert resp.headers["content-type"] == "application/json;charset=utf-8"
    return [(p, "*" if p in MASKED else v) for p, v in flat_json(resp.json())]


async def both_formats(client, action, params, *, fresh=None):
    """The same call answered in JSON and in XML (``fresh`` rebuilds the params per call)."""
    answers = []
    for fmt in ("JSON", "XML"):
        current = fresh() if fresh else params
        body = list(current.items())
        query = rpc_query(action, {}, method="POST", body=body, fmt=fmt)
        answers.append(await client.post("/?" + query, content=urlencode(body), headers={
            "content-type": "application/x-www-form-urlencoded"}))
    return answers


async def test_every_action_answers_in_xml_as_in_json(client):
    async def same(action, params=None, *, fresh=None, root=None):
        as_json, as_xml = await both_formats(client, action, params or {}, fresh=fresh)
        assert as_json.status_code == as_xml.status_code
        leaves = json_leaves(as_json)
        assert xml_leaves(as_xml, root or f"{action}Response") == leaves
        return as_json.json(), leaves

    template = {"TemplateName": "x", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.jpg",
                "SequenceFormat": "s/{JobId}/{Sequence}.jpg"}
    created, _ = await same("CreateLiveSnapshotTemplate", template)
    tid = created["TemplateId"]
    await same("UpdateLiveSnapshotTemplate", {**template, "TemplateId": tid, "TemplateName": "y"})
    await same("GetLiveSnapshotTemplate", {"TemplateId": tid})
    _, listed = await same("ListLiveSnapshotTemplates", {"Type": "custom"})
    assert ("/TemplateList/TemplateName", "x") in listed  # one element per item, repeated
    job = {"JobName": "j", "TemplateId": tid, "StreamInput": INPUT, "SnapshotOutput": OUTPUT,
           "CallbackUrl": "http://127.0.0.1:9/cb"}
    submitted, _ = await same("SubmitLiveSnapshotJob", job)
    jid = submitted["JobId"]
    _, got = await same("GetLiveSnapshotJob", {"JobId": jid})
    assert ("/StreamInput/Url", "rtmp://127.0.0.1:1/live/none") in got  # nested object
    await same("ListLiveSnapshotJobs")
    await same("ListLiveSnapshotFiles", {"JobId": jid, "StartTime": "2024-01-01T00:00:00Z",
                                         "EndTime": "2024-01-01T10:00:00Z"})
    _, deleted = await same("DeleteLiveSnapshotFiles",
                            {"JobId": jid, "CreateTimestampList": "[5, 6]"})
    assert [v for p, v in deleted if p.endswith("/Result")] == ["FileNotFound"] * 2
    await same("ListLiveSnapshotCallbackAttempts", {"JobId": jid})
    await same("ReplayLiveSnapshotCallbacks", {"JobId": jid})
    await same("SendLiveSnapshotJobCommand", {"JobId": jid, "Command": "explode"}, root="Error")
    await same("SendLiveSnapshotJobCommand", {"JobId": jid, "Command": "stop"})
    await same("DeleteLiveSnapshotTemplate", {"TemplateId": "nope"}, root="Error")
    victims = [(await call(client, "CreateLiveSnapshotTemplate", template,
                           method="POST")).json()["TemplateId"] for _ in range(2)]
    await same("DeleteLiveSnapshotTemplate", fresh=lambda: {"TemplateId": victims.pop()})


async def test_xml_errors_and_the_format_rule(client):
    import xml.etree.ElementTree as ET

    resp = await client.get("/?Action=GetLiveSnapshotJob&Version=2020-11-09&Format=xml")
    assert resp.status_code == 400
    error = ET.fromstring(resp.content)
    assert error.tag == "Error"
    assert [c.tag for c in error] == ["RequestId", "HostId", "Code", "Message", "Recommend"]
    assert error.findtext("Code") == "IncompleteSignature"
    # no Format: JSON, which is what every SDK asks for
    assert (await call(client, "ListLiveSnapshotJobs")).json()["TotalCount"] == 0
    bad = await client.get("/?" + rpc_query("ListLiveSnapshotJobs", {}, fmt="YAML"))
    assert "must be JSON or XML" in assert_error(bad, 400, "InvalidParameter")["Message"]
    # text XML cannot carry is replaced, never a 5xx
    name = "bad\x01name<&>"
    created = await client.post("/?" + rpc_query("CreateLiveSnapshotTemplate", {
        "TemplateName": name, "TimeInterval": "10", "OverwriteFormat": "o.jpg"},
        method="POST", fmt="XML"))
    assert created.status_code < 500, created.text
    ET.fromstring(created.content)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    action=st.sampled_from(ACTIONS),
    params=st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=8),
)
async def test_arbitrary_parameters_in_xml_give_well_formed_answers(client, action, params):
    import xml.etree.ElementTree as ET

    body = list(params.items())
    query = rpc_query(action, {}, method="POST", body=body, fmt="XML")
    resp = await client.post("/?" + query, content=urlencode(body),
                             headers={"content-type": "application/x-www-form-urlencoded"})
    assert resp.status_code < 500, resp.text
    root = ET.fromstring(resp.content)
    assert root.tag == ("Error" if resp.status_code >= 400 else f"{action}Response")
    assert root.findtext("RequestId")
