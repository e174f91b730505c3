"""Storage config parsing, addressing of OSS/S3 targets, routing and the fallback switch."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from livesnap.clock import ManualClock
from livesnap.config import Settings, StorageCredential, load_storage_config, parse_storage_config
from livesnap.errors import InvalidParameter, OutputError
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import JobSpec, StorageTarget, StorageType
from livesnap.node.wiring import RouterRemover, storage_router
from livesnap.outputs.fenced import FencedSink
from livesnap.outputs.local import LocalSink
from livesnap.outputs.objectstore import ObjectStoreSink, address_for, oss_region
from livesnap.outputs.router import StorageRouter, find_credential
from livesnap.store import MemoryStore

OSS = "oss-cn-shanghai.aliyuncs.com"

TOML = """
[[storage]]
storage_type = "oss"
endpoint = "oss-cn-shanghai.aliyuncs.com"
bucket = "*"
access_key_id = "LTAI-example"
access_key_secret_env = "OSS_SECRET"

[[storage]]
storage_type = "s3"
endpoint = "http://127.0.0.1:8333"
bucket = "snapshots"
access_key_id = "ak"
access_key_secret = "sk-very-secret"
region = "eu-central-1"
"""


def cred(**kw) -> StorageCredential:
    base = {"storage_type": "oss", "endpoint": OSS, "bucket": "*", "access_key_id": "ak",
            "access_key_secret": "sk-very-secret"}
    return StorageCredential(**{**base, **kw})


# config -------------------------------------------------------------------------------------
def test_toml_file_with_a_secret_from_the_environment(tmp_path):
    path = tmp_path / "storage.toml"
    path.write_text(TOML)
    oss, s3 = load_storage_config(str(path), {"OSS_SECRET": "from-env"})
    assert (oss.storage_type, oss.bucket, oss.access_key_secret) == ("oss", "*", "from-env")
    assert (s3.endpoint, s3.region, s3.path_style) == ("http://127.0.0.1:8333", "eu-central-1", None)


def test_json_list_inline_or_in_a_file(tmp_path):
    entries = [{"storage_type": "s3", "endpoint": "minio:9000", "bucket": "b",
                "access_key_id": "ak", "access_key_secret": "sk", "path_style": False}]
    inline = load_storage_config(json.dumps(entries))
    (tmp_path / "s.json").write_text(json.dumps({"storage": entries}))
    assert inline == load_storage_config(str(tmp_path / "s.json"))
    assert inline[0].path_style is False


@pytest.mark.parametrize(("entry", "message"), [
    ({"storage_type": "gcs"}, "storage_type must be one of oss, s3"),
    ({"bucket": ""}, "bucket is required"),
    ({"access_key_secret": None}, "access_key_secret is required"),
    ({"acess_key_id": "typo"}, "unknown field(s) acess_key_id"),
    ({"path_style": "yes"}, "path_style must be true or false"),
    ({"conditional_writes": 1}, "conditional_writes must be true or false"),
    ({"endpoint_url": "ftp://x"}, "endpoint_url must be an http:// or https:// URL"),
    ({"access_key_secret_env": "NOT_SET_ANYWHERE"}, "give access_key_secret or"),
])
def test_bad_entries_say_what_is_wrong_without_the_secret(entry, message):
    base = {"storage_type": "oss", "endpoint": OSS, "bucket": "b", "access_key_id": "ak",
            "access_key_secret": "sk-very-secret"}
    raw = {k: v for k, v in {**base, **entry}.items() if v is not None}
    with pytest.raises(ValueError, match="storage config entry 1") as info:
        parse_storage_config(json.dumps([raw]), toml=False, environ={})
    assert message in str(info.value) and "sk-very-secret" not in str(info.value)


def test_unset_secret_env_and_bad_syntax_are_errors(tmp_path):
    entry = {"storage_type": "oss", "endpoint": OSS, "bucket": "b", "access_key_id": "ak",
             "access_key_secret_env": "NOPE"}
    with pytest.raises(ValueError) as unset:
        parse_storage_config(json.dumps([entry]), toml=False, environ={"NOPE": " "})
    assert str(unset.value) == ("storage config entry 1: access_key_secret_env names NOPE, "
                                "which is not set (or empty)")
    with pytest.raises(ValueError, match="not valid TOML"):
        parse_storage_config("[[storage]\n", toml=True)
    with pytest.raises(ValueError, match="cannot read storage config"):
        load_storage_config(str(tmp_path / "missing.toml"))


def test_settings_fail_fast_and_never_show_the_secret(tmp_path, monkeypatch):
    inline = '[{"storage_type": "oss", "access_key_secret": "sk-inline-secret"}]'
    with pytest.raises(ValidationError, match="storage config entry 1") as info:
        Settings(storage_config=inline)
    assert "sk-inline-secret" not in str(info.value)
    monkeypatch.setenv("OSS_SECRET", "from-env")
    path = tmp_path / "s.toml"
    path.write_text(TOML)
    settings = Settings(storage_config=str(path), data_dir=tmp_path)
    assert str(path) not in repr(settings)
    c = cred()
    assert "sk-very-secret" not in repr(c) and "sk-very-secret" not in str(c)


def test_exact_bucket_wins_over_wildcard_and_endpoints_compare_loosely():
    wild, exact = cred(bucket="*", access_key_id="wild"), cred(bucket="b1", access_key_id="b1")
    creds = [wild, exact]
    assert find_credential(creds, "acct", "oss", OSS, "b1") is exact
    assert find_credential(creds, "acct", "oss", OSS.upper() + "/", "b2") is wild
    assert find_credential(creds, "acct", "s3", OSS, "b1") is None


# addressing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("endpoint", "region"), [
    ("oss-cn-shanghai.aliyuncs.com", "cn-shanghai"),
    ("oss-cn-hangzhou-internal.aliyuncs.com", "cn-hangzhou"),
    ("s3.oss-ap-southeast-1.aliyuncs.com", "ap-southeast-1"),
    ("oss-cn-beijing.aliyuncs.com:443", "cn-beijing"),
    ("img.example.com", None),
])
def test_oss_region_id_from_the_endpoint(endpoint, region):
    assert oss_region(endpoint) == region


def test_oss_is_virtual_hosted_https_with_the_region_id():
    address = address_for(cred(), OSS, "bucket-1")
    assert address.url == "https://bucket-1.oss-cn-shanghai.aliyuncs.com"
    assert (address.region, address.virtual_hosted, address.allow_http) == (
        "cn-shanghai", True, False)
    custom = address_for(cred(endpoint_url="https://img.example.com/", region="cn-x"), OSS, "b")
    assert (custom.url, custom.region) == ("https://img.example.com", "cn-x")


def test_s3_addressing_defaults():
    local = address_for(cred(storage_type="s3"), "http://127.0.0.1:8333/", "snaps")
    assert (local.url, local.virtual_hosted, local.allow_http, local.region) == (
        "http://127.0.0.1:8333", False, True, "us-east-1")
    aws = address_for(cred(storage_type="s3"), "s3.eu-west-1.amazonaws.com", "snaps")
    assert (aws.url, aws.virtual_hosted, aws.region) == (
        "https://snaps.s3.eu-west-1.amazonaws.com", True, "eu-west-1")
    forced = address_for(cred(storage_type="s3", path_style=False), "minio:9000", "snaps")
    assert forced.url == "https://snaps.minio:9000"


# routing ------------------------------------------------------------------------------------
def router(tmp_path, **kw) -> StorageRouter:
    return StorageRouter(root=tmp_path / "storage", spool_dir=tmp_path / "spool", **kw)


async def test_unconfigured_targets_fall_back_to_local_disk_and_say_so_once(tmp_path, caplog):
    r = router(tmp_path)
    with caplog.at_level(logging.WARNING, logger="livesnap.outputs.router"):
        first = r.route("acct", "oss", OSS, "bucket-1")
        again = r.route("acct", "oss", OSS, "bucket-1")
    assert first is again and first.fallback and isinstance(first.sink, LocalSink)
    assert "no storage configured for oss" in first.description
    assert str(tmp_path / "storage" / "acct" / OSS / "bucket-1") in first.description
    assert [rec.message for rec in caplog.records].count(
        "no storage configured for this target: writing to local disk instead") == 1
    local = r.route("acct", "local", "disk", "b")
    assert not local.fallback and r.check("acct", "oss", OSS, "other") == ""


async def test_configured_targets_go_to_the_object_store(tmp_path):
    r = router(tmp_path, credentials=[cred()])
    route = r.route("acct", "oss", OSS, "bucket-1")
    assert isinstance(route.sink, ObjectStoreSink) and not route.fallback
    assert "https://bucket-1.oss-cn-shanghai.aliyuncs.com" in route.description
    assert "sk-very-secret" not in repr(route.sink) + route.description


async def owner() -> None:
    return None


@pytest.mark.parametrize(("storage_type", "setting", "fenced"), [
    ("s3", None, True), ("oss", None, False), ("oss", True, True), ("s3", False, False),
])
async def test_a_cluster_shard_writes_overwrite_objects_conditionally_where_the_entry_allows(
    tmp_path, storage_type, setting, fenced
):
    entry = cred(storage_type=storage_type, conditional_writes=setting,
                 endpoint=OSS if storage_type == "oss" else "http://127.0.0.1:9")
    shard = router(tmp_path, credentials=[entry], confirm_owner=owner).route(
        "acct", storage_type, entry.endpoint, "bucket-1")
    assert isinstance(shard.sink, ObjectStoreSink)  # reads and deletes: the plain sink
    writer = shard.uploads.sink  # type: ignore[attr-defined]
    assert isinstance(writer, FencedSink) is fenced
    single = router(tmp_path / "one", credentials=[entry]).route(  # no fence: plain writes
        "acct", storage_type, entry.endpoint, "bucket-1")
    assert isinstance(single.uploads.sink, ObjectStoreSink)  # type: ignore[attr-defined]


async def test_the_store_request_timeouts_are_settings(tmp_path):
    entries = [{"storage_type": "oss", "endpoint": OSS, "bucket": "*", "access_key_id": "ak",
                "access_key_secret": "sk"}]
    default = storage_router(Settings(data_dir=tmp_path, storage_config=json.dumps(entries)))
    quick = storage_router(Settings(data_dir=tmp_path, storage_config=json.dumps(entries),
                                    storage_connect_timeout_s=2, storage_request_timeout_s=7))
    for r, connect, request in ((default, "5s", "30s"), (quick, "2s", "7s")):
        sink = r.route("acct", "oss", OSS, "bucket-1").sink
        assert isinstance(sink, ObjectStoreSink)
        options = sink.store.client_options
        assert (options["connect_timeout"], options["timeout"]) == (connect, request)


async def test_without_the_fallback_an_unconfigured_target_has_no_route(tmp_path):
    r = router(tmp_path, credentials=[cred(bucket="allowed")], fallback=False)
    reason = r.check("acct", "oss", OSS, "bucket-1")
    assert f"oss endpoint {OSS} bucket bucket-1" in reason and "fallback is off" in reason
    with pytest.raises(OutputError, match="bucket-1"):
        r.route("acct", "oss", OSS, "bucket-1")
    assert r.check("acct", "oss", OSS, "allowed") == "" and r.check("acct", "local", "d", "b") == ""


async def test_submit_fails_naming_the_missing_target_when_the_fallback_is_off(tmp_path):
    routes = RouterRemover(router(tmp_path, fallback=False))
    manager = JobManager(store=MemoryStore(), clock=ManualClock(), storage=routes)
    await manager.open()
    target = StorageTarget(storage_type=StorageType.OSS, endpoint=OSS, bucket="bucket-1")
    spec = JobSpec(name="j", template_id="system", stream_url="rtmp://127.0.0.1/live/x",
                   stream_type="rtmp", storage=target, callback_url=None)
    with pytest.raises(InvalidParameter, match=f"oss endpoint {OSS} bucket bucket-1"):
        await manager.submit_job("acct", spec)
    local = StorageTarget(storage_type=StorageType.LOCAL, endpoint="disk", bucket="b")
    assert routes.describe("acct", local).writable and not routes.describe("acct", local).fallback
    assert not routes.describe("acct", target).writable


async def test_storage_errors_show_in_last_error_and_clear_only_themselves(tmp_path):
    store = MemoryStore()
    manager = JobManager(store=store, clock=ManualClock(), storage=RouterRemover(router(tmp_path)))
    await manager.open()
    target = StorageTarget(storage_type=StorageType.OSS, endpoint=OSS, bucket="bucket-1")
    spec = JobSpec(name="j", template_id="system", stream_url="rtmp://127.0.0.1/live/x",
                   stream_type="rtmp", storage=target, callback_url=None)
    job = await manager.submit_job("acct", spec)
    await manager.close()
    info = manager.storage_info(job)
    assert info is not None and info.fallback and "local disk" in info.description
    await manager.storage_changed(job.id, "spooling snapshots until the store answers again")
    assert (await store.load_job(job.id)).last_error.startswith("storage: spooling")
    await manager.storage_changed(job.id, "")
    assert (await store.load_job(job.id)).last_error == ""
    await manager.stream_changed(job.id, (await store.load_job(job.id)).stream_status,
                                 error="connection refused")
    await manager.storage_changed(job.id, "")
    assert (await store.load_job(job.id)).last_error == "connection refused"


async def test_a_target_that_misses_a_configured_one_by_little_is_told_which(tmp_path):
    entries = [cred(storage_type="s3", endpoint="http://10.0.0.5:8333", bucket="snapshots"),
               cred(storage_type="s3", endpoint="http://10.0.0.5:8333", bucket="archive")]
    r = router(tmp_path, credentials=entries, fallback=False)
    no_scheme = r.check("acct", "s3", "10.0.0.5:8333", "snapshots")
    assert no_scheme.endswith("the local-disk fallback is off. Did you mean endpoint "
                              "http://10.0.0.5:8333 (configured for bucket archive, snapshots)?")
    typo = r.check("acct", "s3", "http://10.0.0.5:8333", "snapshot")
    assert typo.endswith("Did you mean bucket snapshots?")
    assert r.check("acct", "s3", "elsewhere.example", "x").endswith("fallback is off.")
    fallback = router(tmp_path, credentials=entries).route("acct", "s3", "10.0.0.5:8333", "b")
    assert "Did you mean endpoint http://10.0.0.5:8333" in fallback.description


def test_start_up_names_every_storage_entry_and_the_fallback_mode_without_secrets(
        tmp_path, caplog):
    from livesnap.node.wiring import log_storage

    entries = [cred(accounts=("*",), prefix="{Account}/"), cred(bucket="one")]
    with caplog.at_level(logging.INFO, logger="livesnap.node.wiring"):
        log_storage(router(tmp_path, credentials=entries, fallback=False))
    lines = [r for r in caplog.records if r.name == "livesnap.node.wiring"]
    assert [r.getMessage() for r in lines] == [
        f"storage entry: oss {OSS} bucket *", f"storage entry: oss {OSS} bucket one",
        "storage fallback off: OSS/S3 targets without an entry are refused at Submit"]
    assert (lines[0].accounts, lines[0].prefix) == ("*", "{Account}/")
    assert all("sk-very-secret" not in str(r.__dict__) for r in lines)
