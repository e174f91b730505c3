"""With livesnap's extensions in use, the official SDK still sees exactly ICE's fields, with
ICE's types, in every operation's response (the extension fields are invisible to it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_sdk_api import NOT_LIVE, OUTPUT
from tests.support.service import LivesnapServer, core_client, core_request, ice_client

pytestmark = pytest.mark.acceptance

# every response field of the LiveSnapshot family (spec/ice-live-snapshot-api.md) and its type
ICE_TYPES: dict[str, type | tuple[type, ...]] = {
    "RequestId": str, "TemplateId": str, "TemplateName": str, "Type": str, "TimeInterval": int,
    "OverwriteFormat": str, "SequenceFormat": str, "CreateTime": str, "LastModified": str,
    "TemplateList": list, "JobList": list, "FileList": list, "TotalCount": int, "PageNo": int,
    "PageSize": int, "JobId": str, "JobName": str, "Status": str, "CallbackUrl": str,
    "StreamInput": dict, "SnapshotOutput": dict, "Url": str, "StorageType": str,
    "Endpoint": str, "Bucket": str, "OssEndpoint": str, "OssBucket": str, "OssObject": str,
    "CreateTimestamp": int, "IsOverlay": bool, "NextStartTime": str, "CommandResponse": str,
    "DeleteFileResultList": list, "Result": str, "SortBy": str,
}
EXTENSIONS = {"ImageFormat", "Quality", "Width", "Height", "QualityGate", "LatestPointer",
              "StreamStatus", "SnapshotCount", "LastError", "StatusReason", "CaptureLag",
              "StreamTimestamp", "SkippedFrames", "StorageFallback", "StorageDescription"}


def check_shape(value, path="body"):
    """Every key the SDK kept is an ICE field with ICE's type; no extension got through."""
    if isinstance(value, list):
        for n, item in enumerate(value):
            check_shape(item, f"{path}[{n}]")
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        where = f"{path}.{key}"
        assert key not in EXTENSIONS, f"{where}: an extension reached the SDK model"
        assert key in ICE_TYPES, f"{where}: not an ICE field"
        if item is not None:
            assert isinstance(item, ICE_TYPES[key]), f"{where}: {type(item).__name__}"
        check_shape(item, where)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LivesnapServer(tmp_path_factory.mktemp("shapes") / "data") as srv:
        yield srv


def test_every_operation_keeps_ices_fields_and_types(server):
    acs = core_client(server.endpoint)
    created = json.loads(acs.do_action_with_exception(core_request(
        "CreateLiveSnapshotTemplate", "POST", body={
            "TemplateName": "ext", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.webp",
            "SequenceFormat": "s/{JobId}/{UnixTimestamp}.webp", "ImageFormat": "webp",
            "Quality": "70", "Width": "640", "QualityGate": "false", "LatestPointer": "true"})))
    tid = created["TemplateId"]
    raw = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotTemplate", "GET", {"TemplateId": tid})))
    assert raw["ImageFormat"] == "webp" and raw["LatestPointer"] is True  # on the wire...

    client = ice_client(server.endpoint)
    now = datetime.now(tz=UTC)
    window = {"start_time": (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "end_time": (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    job_id = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="j", template_id=tid, stream_input=NOT_LIVE, snapshot_output=OUTPUT,
        callback_url="http://127.0.0.1:9/cb")).body.job_id
    responses = {
        "GetTemplate": client.get_live_snapshot_template(
            m.GetLiveSnapshotTemplateRequest(template_id=tid)),
        "ListTemplates": client.list_live_snapshot_templates(
            m.ListLiveSnapshotTemplatesRequest(page_size=100)),
        "UpdateTemplate": client.update_live_snapshot_template(
            m.UpdateLiveSnapshotTemplateRequest(
                template_id=tid, template_name="ext2", time_interval=20,
                overwrite_format="o2/{JobId}.webp")),
        "GetJob": client.get_live_snapshot_job(m.GetLiveSnapshotJobRequest(job_id=job_id)),
        "ListJobs": client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(page_size=100)),
        "ListFiles": client.list_live_snapshot_files(
            m.ListLiveSnapshotFilesRequest(job_id=job_id, **window)),
        "DeleteFiles": client.delete_live_snapshot_files(m.DeleteLiveSnapshotFilesRequest(
            job_id=job_id, create_timestamp_list=[1], delete_original_file=False)),
        "Command": client.send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command="stop")),
    }
    for name, resp in responses.items():
        assert resp.status_code == 200, name
        check_shape(resp.body.to_map(), name)
    # ...and the SDK model still carries ICE's values
    job = responses["GetJob"].body
    assert (job.template_id, job.time_interval, job.status) == (tid, 10, "init")
    template = responses["GetTemplate"].body
    assert template.overwrite_format == "o/{JobId}.webp"
    # the update from the SDK kept the extensions it cannot see
    after = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotTemplate", "GET", {"TemplateId": tid})))
    assert (after["ImageFormat"], after["Width"], after["QualityGate"]) == ("webp", 640, False)
    assert after["SequenceFormat"] == ""  # ICE's replace semantics for ICE's own fields
