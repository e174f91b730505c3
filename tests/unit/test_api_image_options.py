"""livesnap's template extensions on the wire: parsing, validation messages, defaults, jobs."""

from __future__ import annotations

import json

from tests.unit.test_api_app import INPUT, OUTPUT, assert_error, call, client  # noqa: F401

SEQ_WEBP = "s/{JobId}/{UnixTimestamp}.webp"


async def create(client, **params):  # noqa: F811
    base = {"TemplateName": "pics", "TimeInterval": "10", "OverwriteFormat": "o/{JobId}.jpg"}
    return await call(client, "CreateLiveSnapshotTemplate", base | params, method="POST")


async def get(client, template_id):  # noqa: F811
    resp = await call(client, "GetLiveSnapshotTemplate", {"TemplateId": template_id})
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_extensions_are_stored_and_returned(client):  # noqa: F811
    resp = await create(client, ImageFormat="webp", OverwriteFormat="o/{JobId}.webp",
                        SequenceFormat=SEQ_WEBP, Quality="70", Width="640", Height="0",
                        QualityGate="false", LatestPointer="true")
    assert resp.status_code == 200, resp.text
    body = await get(client, resp.json()["TemplateId"])
    assert {k: body[k] for k in ("ImageFormat", "Quality", "Width", "Height", "QualityGate",
                                 "LatestPointer")} == {
        "ImageFormat": "webp", "Quality": 70, "Width": 640, "Height": 0, "QualityGate": False,
        "LatestPointer": True}
    listed = (await call(client, "ListLiveSnapshotTemplates", {"Type": "custom"})).json()
    assert listed["TemplateList"][0]["ImageFormat"] == "webp"


async def test_defaults_are_ices_behaviour(client):  # noqa: F811
    body = await get(client, (await create(client)).json()["TemplateId"])
    assert (body["ImageFormat"], body["Width"], body["Height"]) == ("jpg", 0, 0)
    assert body["QualityGate"] is False and body["LatestPointer"] is False
    assert "Quality" not in body  # the node's default applies
    system = await get(client, "system")
    assert system["ImageFormat"] == "jpg"


async def test_an_update_without_extensions_keeps_them(client):  # noqa: F811
    tid = (await create(client, ImageFormat="png", OverwriteFormat="o/{JobId}.png",
                        Width="320")).json()["TemplateId"]
    resp = await call(client, "UpdateLiveSnapshotTemplate", {
        "TemplateId": tid, "TemplateName": "renamed", "TimeInterval": "20",
        "OverwriteFormat": "p/{JobId}.png"}, method="POST")  # what the official SDK sends
    assert resp.status_code == 200, resp.text
    body = await get(client, tid)
    assert (body["TemplateName"], body["ImageFormat"], body["Width"]) == ("renamed", "png", 320)
    # and a format change must come with keys of the new extension
    resp = await call(client, "UpdateLiveSnapshotTemplate", {
        "TemplateId": tid, "TemplateName": "renamed", "TimeInterval": "20",
        "OverwriteFormat": "p/{JobId}.png", "ImageFormat": "jpg"}, method="POST")
    body = assert_error(resp, 400, "InvalidParameter")
    assert "OverwriteFormat must end with '.jpg' when ImageFormat is jpg" in body["Message"]


async def test_invalid_extensions_get_clear_messages(client):  # noqa: F811
    cases = [
        ({"ImageFormat": "gif"}, "The parameter ImageFormat must be one of: jpg, webp, png."),
        ({"ImageFormat": "webp"}, "OverwriteFormat must end with '.webp' when ImageFormat is webp"),
        ({"Quality": "0"}, "The parameter Quality must be between 1 and 100."),
        ({"Width": "16"}, "Width must be 0 (the source size) or between 32 and 7680 pixels."),
        ({"Height": "abc"}, "The parameter Height must be an integer."),
        ({"QualityGate": "yes"}, "The parameter QualityGate must be true or false."),
        ({"LatestPointer": "true", "OverwriteFormat": "",
          "SequenceFormat": "s/{UnixTimestamp}.jpg"}, "LatestPointer needs an OverwriteFormat"),
    ]
    for params, message in cases:
        resp = await create(client, **params)
        assert resp.status_code == 400, (params, resp.text)
        assert message in resp.json()["Message"], (params, resp.json())
    listed = (await call(client, "ListLiveSnapshotTemplates", {"Type": "custom"})).json()
    assert listed["TemplateList"] == []  # nothing was stored by a rejected request


async def test_a_job_copies_the_templates_image_options(client):  # noqa: F811
    tid = (await create(client, Width="640", Quality="60")).json()["TemplateId"]
    resp = await call(client, "SubmitLiveSnapshotJob", {
        "JobName": "j", "TemplateId": tid, "StreamInput": INPUT, "SnapshotOutput": OUTPUT},
        method="POST")
    assert resp.status_code == 200, resp.text
    job_id = resp.json()["JobId"]
    await call(client, "UpdateLiveSnapshotTemplate", {
        "TemplateId": tid, "TemplateName": "x", "TimeInterval": "10",
        "OverwriteFormat": "o/{JobId}.jpg", "Width": "0"}, method="POST")
    job = (await call(client, "GetLiveSnapshotJob", {"JobId": job_id})).json()
    assert (job["Width"], job["Quality"], job["ImageFormat"]) == (640, 60, "jpg")
    assert json.loads(OUTPUT)["Bucket"] == job["SnapshotOutput"]["Bucket"]
