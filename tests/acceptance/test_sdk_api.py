"""The official SDKs against ``livesnap serve`` (a subprocess): every operation, both
signature schemes of the current SDK plus the legacy core SDK, errors and isolation."""

from __future__ import annotations

import json
import uuid

import pytest
from alibabacloud_ice20201109 import models as m
from Tea.exceptions import TeaException

from tests.support.service import LivesnapServer, core_client, core_request, ice_client

pytestmark = pytest.mark.acceptance

OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="oss", endpoint="oss-cn-shanghai.aliyuncs.com", bucket="bucket-1"
)
# nothing listens on port 9: the background probe fails at once and the job stays "init"
NOT_LIVE = m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url="rtmp://127.0.0.1:9/live/x")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LivesnapServer(tmp_path_factory.mktemp("api") / "data") as srv:
        yield srv


@pytest.fixture(params=["acs3", "rpc-v2"])
def client(request, server):
    return ice_client(server.endpoint, v2=request.param == "rpc-v2")


@pytest.fixture
def other(server):
    return ice_client(server.endpoint, key="otherid", secret="othersecret")


def expect_error(call, status, code):
    with pytest.raises(TeaException) as info:
        call()
    err = info.value
    assert err.code == code, (err.code, err.message)
    assert err.status_code == status
    assert err.request_id and err.request_id == err.request_id.upper()
    return err


def make_template(client, name="tpl", interval=5, **formats):
    formats = formats or {"overwrite_format": "snapshot/{JobId}.jpg",
                          "sequence_format": "snapshot/{JobId}/{UnixTimestamp}.jpg"}
    resp = client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
        template_name=name, time_interval=interval, **formats))
    assert resp.status_code == 200
    return resp.body.template_id


def submit(client, template_id="system", name="job", url=NOT_LIVE, callback=None):
    resp = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name=name, template_id=template_id, stream_input=url, snapshot_output=OUTPUT,
        callback_url=callback))
    return resp.body.job_id


def test_template_operations(client, other):
    tid = make_template(client, name="测试 *~!'()+&=/%")
    got = client.get_live_snapshot_template(m.GetLiveSnapshotTemplateRequest(template_id=tid)).body
    assert got.template_id == tid
    assert got.template_name == "测试 *~!'()+&=/%"
    assert got.type == "custom"
    assert got.time_interval == 5
    assert got.overwrite_format == "snapshot/{JobId}.jpg"
    assert got.sequence_format == "snapshot/{JobId}/{UnixTimestamp}.jpg"
    assert got.create_time.endswith("Z") and got.last_modified.endswith("Z")

    client.update_live_snapshot_template(m.UpdateLiveSnapshotTemplateRequest(
        template_id=tid, template_name="renamed", time_interval=60, sequence_format="s/{Sequence}.jpg"))
    got = client.get_live_snapshot_template(m.GetLiveSnapshotTemplateRequest(template_id=tid)).body
    assert (got.template_name, got.time_interval) == ("renamed", 60)
    assert got.overwrite_format == ""  # update replaces the whole template

    expect_error(lambda: other.get_live_snapshot_template(
        m.GetLiveSnapshotTemplateRequest(template_id=tid)), 404, "TemplateNotFound")
    expect_error(lambda: other.delete_live_snapshot_template(
        m.DeleteLiveSnapshotTemplateRequest(template_id=tid)), 404, "TemplateNotFound")
    client.delete_live_snapshot_template(m.DeleteLiveSnapshotTemplateRequest(template_id=tid))
    expect_error(lambda: client.get_live_snapshot_template(
        m.GetLiveSnapshotTemplateRequest(template_id=tid)), 404, "TemplateNotFound")


def test_system_template_is_read_only(client):
    got = client.get_live_snapshot_template(m.GetLiveSnapshotTemplateRequest(template_id="system")).body
    assert got.type == "system"
    assert got.time_interval == 5
    expect_error(lambda: client.update_live_snapshot_template(m.UpdateLiveSnapshotTemplateRequest(
        template_id="system", template_name="x", time_interval=9, overwrite_format="a.jpg")),
        403, "Forbidden")
    expect_error(lambda: client.delete_live_snapshot_template(
        m.DeleteLiveSnapshotTemplateRequest(template_id="system")), 403, "Forbidden")


@pytest.mark.parametrize(
    ("kwargs", "code", "fragment"),
    [
        ({"template_name": "x", "time_interval": 4, "overwrite_format": "a.jpg"}, "InvalidParameter", "5 and 3600"),
        ({"template_name": "x", "time_interval": 5}, "MissingParameter", "OverwriteFormat"),
        ({"template_name": "x", "time_interval": 5, "overwrite_format": "a/{Sequence}.jpg"}, "InvalidParameter", "{Sequence}"),
        ({"template_name": "x", "time_interval": 5, "sequence_format": "a/{JobId}.jpg"}, "InvalidParameter", "{UnixTimestamp} or {Sequence}"),
        ({"template_name": "x", "time_interval": 5, "overwrite_format": "/a.jpg"}, "InvalidParameter", "start with '/'"),
        ({"time_interval": 5, "overwrite_format": "a.jpg"}, "MissingParameter", "TemplateName"),
        ({"template_name": "x" * 129, "time_interval": 5, "overwrite_format": "a.jpg"}, "InvalidParameter", "128"),
    ],
)
def test_template_validation(client, kwargs, code, fragment):
    err = expect_error(lambda: client.create_live_snapshot_template(
        m.CreateLiveSnapshotTemplateRequest(**kwargs)), 400, code)
    assert fragment in err.message


def test_list_templates_paging_filters(client, other):
    ids = [make_template(client, name=f"page-{i}") for i in range(7)]
    make_template(other, name="page-other")
    page = client.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
        page_no=2, page_size=3, sort_by="asc", type="custom", search_key_word="page-")).body
    assert (page.page_no, page.page_size, page.sort_by) == (2, 3, "asc")
    assert page.total_count >= 7
    assert len(page.template_list) == 3
    item = page.template_list[0]
    assert item.type == "custom" and isinstance(item.time_interval, int) and item.create_time
    by_id = client.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(
        template_ids=ids[:2], page_size=100)).body
    assert {t.template_id for t in by_id.template_list} == set(ids[:2])
    system = client.list_live_snapshot_templates(m.ListLiveSnapshotTemplatesRequest(type="system")).body
    assert [t.template_id for t in system.template_list] == ["system"]
    names = {t.template_name for t in client.list_live_snapshot_templates(
        m.ListLiveSnapshotTemplatesRequest(page_size=100)).body.template_list}
    assert "page-other" not in names
    expect_error(lambda: client.list_live_snapshot_templates(
        m.ListLiveSnapshotTemplatesRequest(page_size=101)), 400, "InvalidParameter")


def test_job_operations(client, other):
    tid = make_template(client, name="for-job", interval=10)
    job_id = submit(client, template_id=tid, name="cam-1", callback="http://127.0.0.1:1/hook")
    job = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body
    assert job.job_id == job_id and job.job_name == "cam-1"
    assert job.status == "init"
    assert job.template_id == tid and job.template_name == "for-job"
    assert job.time_interval == 10
    assert job.stream_input.url == NOT_LIVE.url and job.stream_input.type == "rtmp"
    assert (job.snapshot_output.storage_type, job.snapshot_output.bucket) == ("oss", "bucket-1")
    assert job.callback_url == "http://127.0.0.1:1/hook"
    assert job.overwrite_format == "snapshot/{JobId}.jpg"

    # the job copied its template: later edits do not change it
    client.update_live_snapshot_template(m.UpdateLiveSnapshotTemplateRequest(
        template_id=tid, template_name="edited", time_interval=30, overwrite_format="x.jpg"))
    job = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body
    assert (job.time_interval, job.template_name) == (10, "for-job")

    expect_error(lambda: other.get_live_snapshot_job(
        m.GetLiveSnapshotJobRequest(job_id=job_id)), 404, "JobNotFound")
    expect_error(lambda: client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
        job_id=job_id, command="start")), 400, "StreamNotFound")
    client.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop"))
    job = client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)).body
    assert job.status == "paused"
    expect_error(lambda: other.send_live_snapshot_job_command(m.SendLiveSnapshotJobCommandRequest(
        job_id=job_id, command="stop")), 404, "JobNotFound")
    expect_error(lambda: client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="j", template_id="missing", stream_input=NOT_LIVE, snapshot_output=OUTPUT)),
        404, "TemplateNotFound")


def test_list_jobs(client, other):
    tag = f"list-{uuid.uuid4().hex[:8]}"
    ids = [submit(client, name=f"{tag}-{i}") for i in range(5)]
    submit(other, name=f"{tag}-other")
    page = client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
        search_key_word=tag, page_size=2, page_no=1, sort_by="asc")).body
    assert page.total_count == 5
    assert [j.job_id for j in page.job_list] == ids[:2]
    item = page.job_list[0]
    assert item.status in ("init", "paused") and item.snapshot_output.endpoint
    exact = client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(search_key_word=ids[3])).body
    assert [j.job_id for j in exact.job_list] == [ids[3]]
    assert client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
        status="started", search_key_word=tag)).body.total_count == 0
    expect_error(lambda: client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
        start_time="2024-01-01T00:00:00Z", end_time="2024-03-01T00:00:00Z")), 400, "InvalidParameter")


def test_files_operations_without_captures(client, other):
    job_id = submit(client, name="files")
    files = client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time="2024-01-01T00:00:00Z", end_time="2024-01-01T12:00:00Z")).body
    assert files.file_list == [] and not files.next_start_time
    result = client.delete_live_snapshot_files(m.DeleteLiveSnapshotFilesRequest(
        job_id=job_id, create_timestamp_list=[1, 2], delete_original_file=True)).body
    assert [(r.create_timestamp, r.result) for r in result.delete_file_result_list] == [
        (1, "FileNotFound"), (2, "FileNotFound")]
    expect_error(lambda: other.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time="2024-01-01T00:00:00Z", end_time="2024-01-01T12:00:00Z")),
        404, "JobNotFound")
    expect_error(lambda: client.list_live_snapshot_files(m.ListLiveSnapshotFilesRequest(
        job_id=job_id, start_time="2024-01-01T00:00:00Z")), 400, "MissingParameter")


def test_auth_failures(server):
    wrong = ice_client(server.endpoint, secret="wrong")
    err = expect_error(lambda: wrong.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id="x")),
                       400, "SignatureDoesNotMatch")
    assert err.message.startswith("code: 400, Specified signature is not matched")
    unknown = ice_client(server.endpoint, key="nobody", v2=True)
    expect_error(lambda: unknown.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id="x")),
                 404, "InvalidAccessKeyId.NotFound")


def test_legacy_core_sdk(server):
    from aliyunsdkcore.acs_exception.exceptions import ServerException

    acs = core_client(server.endpoint)
    body = {
        "JobName": "legacy", "TemplateId": "system",
        "StreamInput": json.dumps({"Type": "rtmp", "Url": NOT_LIVE.url}),
        "SnapshotOutput": json.dumps({"StorageType": "oss", "Endpoint": OUTPUT.endpoint, "Bucket": OUTPUT.bucket}),
    }
    job_id = json.loads(acs.do_action_with_exception(
        core_request("SubmitLiveSnapshotJob", "POST", body=body)))["JobId"]
    got = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotJob", "GET", {"JobId": job_id})))
    assert got["JobName"] == "legacy" and got["Status"] in ("init", "paused")
    post_query = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotJob", "POST", {"JobId": job_id})))
    assert post_query["JobId"] == job_id
    with pytest.raises(ServerException) as info:
        acs.do_action_with_exception(core_request("GetLiveSnapshotJob", "GET", {"JobId": "nope"}))
    assert info.value.get_error_code() == "JobNotFound"
    assert info.value.get_http_status() == 404
    assert info.value.get_request_id()
    bad = core_client(server.endpoint, secret="wrong")
    with pytest.raises(ServerException) as info:
        bad.do_action_with_exception(core_request("GetLiveSnapshotJob", "GET", {"JobId": "x"}))
    # CommonRequest keeps no string-to-sign of its own, so the SDK cannot turn this into
    # InvalidAccessKeySecret; the gateway wording still reaches the caller
    assert info.value.get_error_code() == "SignatureDoesNotMatch"
    assert info.value.get_http_status() == 400
    assert info.value.get_error_msg().startswith(
        "Specified signature is not matched with our calculation. server string to sign is:GET&%2F&")


def test_legacy_core_sdk_in_xml(server):
    """The legacy SDK's ``do_action`` with ``set_accept_format("XML")`` sends Format=XML and
    gets Alibaba's XML shape (``do_action_with_exception`` always asks for JSON)."""
    import xml.etree.ElementTree as ET

    acs = core_client(server.endpoint)

    def xml_call(action, method, query=None, body=None):
        request = core_request(action, method, query, body)
        request.set_accept_format("XML")
        return ET.fromstring(acs.do_action(request))

    body = {"TemplateName": "xml", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.jpg"}
    created = xml_call("CreateLiveSnapshotTemplate", "POST", body=body)
    assert created.tag == "CreateLiveSnapshotTemplateResponse"
    template_id = created.findtext("TemplateId")
    listed = xml_call("ListLiveSnapshotTemplates", "GET", {"Type": "custom", "PageSize": "100"})
    names = {t.findtext("TemplateId"): t.findtext("TemplateName")
             for t in listed.findall("TemplateList")}
    assert names[template_id] == "xml"
    assert int(listed.findtext("TotalCount")) == len(names)
    error = xml_call("GetLiveSnapshotJob", "GET", {"JobId": "nope"})
    assert (error.tag, error.findtext("Code")) == ("Error", "JobNotFound")
    assert error.findtext("RequestId")
