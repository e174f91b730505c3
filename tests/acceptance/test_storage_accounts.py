"""Two accounts on one S3 bucket (SeaweedFS, auth on) with the same literal object keys, end to
end through the official SDK and ``livesnap serve``: neither can overwrite, delete or see the
other's pictures. Before storage entries named their accounts, B overwrote A's objects under
``cam/…``, B's ``DeleteOriginalFile`` deleted them and B's console served A's latest picture.
"""

from __future__ import annotations

import pytest
from alibabacloud_ice20201109 import models as m

from tests.acceptance.test_capture_e2e import list_files
from tests.acceptance.test_isolation import console_session
from tests.acceptance.test_storage_e2e import (
    bucket_store,
    keys_under,
    read_object,
    s3_output,
    storage_env,
    submit,
)
from tests.support.service import LivesnapServer, ice_client, raw_job, serve_until_exit
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

ACCOUNTS = {"acct-a": ("testid", "testsecret"), "acct-b": ("otherid", "othersecret")}


def literal_template(client) -> str:
    return client.create_live_snapshot_template(m.CreateLiveSnapshotTemplateRequest(
        template_name="literal-keys", time_interval=5, overwrite_format="cam/latest.jpg",
        sequence_format="cam/{Sequence}.jpg")).body.template_id


def submit_on(client, url: str, output, template_id: str) -> str:
    return client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
        job_name="same-keys", template_id=template_id, snapshot_output=output,
        stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url))).body.job_id


@pytest.mark.timeout(180)
def test_accounts_sharing_a_bucket_write_read_and_delete_only_their_own_objects(
    tmp_path, seaweed, publisher_factory
):
    publisher = publisher_factory()
    shared = seaweed.credential(accounts=("*",))  # every account, each under "<account>/"
    with LivesnapServer(tmp_path / "data", env=storage_env(tmp_path, [shared])) as server:
        clients = {acct: ice_client(server.endpoint, key=k, secret=s)
                   for acct, (k, s) in ACCOUNTS.items()}
        jobs = {acct: submit_on(c, publisher.url, s3_output(seaweed), literal_template(c))
                for acct, c in clients.items()}
        files = {acct: wait_until(lambda a=acct: (f := list_files(clients[a], jobs[a]))
                                  and len(f) >= 3 and f, 40, f"three snapshots of {acct}")
                 for acct in ACCOUNTS}
        store = bucket_store(seaweed)
        for acct, listed in files.items():
            # the keys the API lists are the real ones, under the account's own prefix
            assert all(f.oss_object.startswith(f"{acct}/cam/") for f in listed), listed
            for f in listed:
                _, attributes = read_object(store, f.oss_object)
                assert attributes["job-id"] == jobs[acct]
            _, latest = read_object(store, f"{acct}/cam/latest.jpg")
            assert latest["job-id"] == jobs[acct]
        assert keys_under(store, "cam/") == set()  # nobody wrote the bare keys
        info = raw_job(server, jobs["acct-a"])
        assert "keys under acct-a/" in info["StorageDescription"]
        assert info["StorageFallback"] is False

        # B deletes its files with their objects: A's objects, same sequence numbers, stay
        a_before = keys_under(store, "acct-a/")
        stamps = [f.create_timestamp for f in files["acct-b"][:2]]
        result = clients["acct-b"].delete_live_snapshot_files(m.DeleteLiveSnapshotFilesRequest(
            job_id=jobs["acct-b"], create_timestamp_list=stamps, delete_original_file=True)).body
        assert [r.result for r in result.delete_file_result_list] == ["OK", "OK"]
        b_left = keys_under(store, "acct-b/cam/")
        assert not {f.oss_object for f in files["acct-b"][:2]} & b_left
        assert a_before <= keys_under(store, "acct-a/")
        assert {f.oss_object for f in files["acct-a"]} <= keys_under(store, "acct-a/")

        # each console serves its own account's latest picture
        for acct, (key, secret) in ACCOUNTS.items():
            console = console_session(f"http://{server.endpoint}", key, secret)
            try:
                page = console.get(f"/console/jobs/{jobs[acct]}/latest.jpg")
                assert page.status_code == 200 and page.content[:2] == b"\xff\xd8"
                other = jobs["acct-b" if acct == "acct-a" else "acct-a"]
                assert console.get(f"/console/jobs/{other}/latest.jpg").status_code == 404
            finally:
                console.close()
        assert server.terminate(30) < 15
        assert server.proc.returncode == 0 and "Traceback" not in server.log()


def test_an_entry_for_one_account_is_not_open_to_another(tmp_path, seaweed, publisher_factory):
    publisher = publisher_factory()
    env = storage_env(tmp_path, [seaweed.credential()],  # account A's alone
                      LIVESNAP_STORAGE_FALLBACK="false")
    with LivesnapServer(tmp_path / "data", env=env) as server:
        a = ice_client(server.endpoint)
        b = ice_client(server.endpoint, key="otherid", secret="othersecret")
        job = submit(a, publisher.url, s3_output(seaweed))
        wait_until(lambda: list_files(a, job), 30, "a snapshot of A's job")
        with pytest.raises(Exception) as refused:
            submit(b, publisher.url, s3_output(seaweed))
        assert getattr(refused.value, "code", None) == "InvalidParameter"
        assert "is not open to this account" in str(refused.value)
        assert "Traceback" not in server.log()


def test_serve_refuses_storage_entries_that_do_not_name_their_accounts(tmp_path, seaweed):
    unsaid = {k: v for k, v in seaweed.credential().items() if k != "accounts"}
    done = serve_until_exit(tmp_path / "data", env=storage_env(tmp_path, [unsaid]))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("livesnap: storage config entry 1 (s3 http://127.0.0.1:")
    assert "2 accounts are configured: add accounts = [...]" in lines[0]
