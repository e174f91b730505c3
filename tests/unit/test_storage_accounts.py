"""Storage per account: who may use a storage entry, the key prefix of a shared bucket, each
account's own local directory, and deletes that never reach another account's objects."""

from __future__ import annotations

import json
import logging

import pytest

from livesnap.clock import ManualClock
from livesnap.config import (
    StorageCredential,
    parse_access_keys,
    parse_storage_config,
    storage_account_problem,
)
from livesnap.jobs.manager import JobManager
from livesnap.jobs.models import (
    JobSpec,
    SnapshotFile,
    StorageTarget,
    StorageType,
)
from livesnap.outputs.local import LAYOUT_MARK, adopt_legacy_layout
from livesnap.outputs.router import StorageRouter, find_credential
from livesnap.store import MemoryStore

S3 = "http://127.0.0.1:8333"


def entry(**kw: object) -> dict[str, object]:
    return {"storage_type": "s3", "endpoint": S3, "bucket": "shared", "access_key_id": "ak",
            "access_key_secret": "sk", **kw}


def parse(*entries: dict[str, object]) -> list[StorageCredential]:
    return parse_storage_config(json.dumps(list(entries)), toml=False, environ={})


# the config ----------------------------------------------------------------------------------
def test_a_shared_entry_puts_each_account_under_its_own_prefix_by_default() -> None:
    shared, star, single, unsaid = parse(
        entry(accounts=["acct-a", "acct-b"]), entry(accounts=["*"]),
        entry(accounts=["acct-a"]), entry())
    assert (shared.shared, star.shared, single.shared, unsaid.shared) == (
        True, True, False, False)
    assert shared.key_prefix("acct-a") == "acct-a/" and star.key_prefix("x") == "x/"
    assert single.key_prefix("acct-a") == "" and unsaid.key_prefix("acct-a") == ""
    assert shared.allows("acct-b") and not shared.allows("acct-c") and star.allows("acct-c")
    assert not single.allows("acct-b") and unsaid.allows("anyone")


def test_a_prefix_may_be_chosen_but_a_shared_one_must_name_the_account() -> None:
    (chosen,) = parse(entry(accounts=["*"], prefix="tenants/{Account}/snaps/"))
    assert chosen.key_prefix("acct-a") == "tenants/acct-a/snaps/"
    (own,) = parse(entry(accounts=["acct-a"], prefix="cams/"))
    assert own.key_prefix("acct-a") == "cams/"
    for bad, says in [
        (entry(accounts=["*"], prefix="tenants/"), "exactly {Account}"),
        (entry(accounts=["a", "b"], prefix="t-{Account}/"), "exactly {Account}"),
        (entry(accounts=["*"], prefix=""), "ending in '/'"),
        (entry(prefix="../{Account}/"), "'..'"),
        (entry(prefix="cams"), "ending in '/'"),
        (entry(prefix=7), "ending in '/'"),
        (entry(accounts=[]), "accounts must be"),
        (entry(accounts="acct-a"), "accounts must be"),
        (entry(accounts=["../a"]), "accounts must be"),
    ]:
        with pytest.raises(ValueError, match=None) as caught:
            parse(bad)
        assert says in str(caught.value), (bad, str(caught.value))
        assert str(caught.value).startswith("storage config entry 1:")


def test_account_names_are_safe_as_a_directory_and_a_key_segment() -> None:
    assert [k.account for k in parse_access_keys("k1:s1:acct-a,k2:s2:B_2.x")] == ["acct-a", "B_2.x"]
    for bad in ("k:s:../a", "k:s:a/b", "k:s:.hidden", "k:s:" + "a" * 65, "k:s:a b"):
        with pytest.raises(ValueError, match="entry 1: the account must be"):
            parse_access_keys(bad)


def test_serve_refuses_entries_that_do_not_say_whose_they_are_once_there_are_two_accounts(
) -> None:
    unsaid = parse(entry(accounts=["*"]), entry(bucket="other"))
    assert storage_account_problem(unsaid, frozenset({"default"})) == ""
    problem = storage_account_problem(unsaid, frozenset({"acct-a", "acct-b"}))
    assert problem.startswith("storage config entry 2 (s3 http://127.0.0.1:8333 bucket other)")
    assert "add accounts = [...]" in problem and "\n" not in problem
    said = parse(entry(accounts=["*"]), entry(bucket="other", accounts=["acct-b"]))
    assert storage_account_problem(said, frozenset({"acct-a", "acct-b"})) == ""


def test_a_bucket_named_by_entries_belongs_to_their_accounts_alone() -> None:
    own = StorageCredential(storage_type="s3", endpoint=S3, bucket="a-only", access_key_id="a",
                            access_key_secret="s", accounts=("acct-a",))
    wild = StorageCredential(storage_type="s3", endpoint=S3, bucket="*", access_key_id="w",
                             access_key_secret="s", accounts=("*",), prefix="{Account}/")
    creds = [wild, own]
    assert find_credential(creds, "acct-a", "s3", S3, "a-only") is own
    assert find_credential(creds, "acct-b", "s3", S3, "a-only") is None  # not through "*"
    assert find_credential(creds, "acct-b", "s3", S3, "elsewhere") is wild


# the router ----------------------------------------------------------------------------------
def router(tmp_path, **kw) -> StorageRouter:
    return StorageRouter(root=tmp_path / "storage", spool_dir=tmp_path / "spool", **kw)


async def test_routes_are_per_account_with_the_prefix_and_a_directory_of_their_own(tmp_path):
    (shared,) = parse(entry(accounts=["*"]))
    r = router(tmp_path, credentials=[shared], sink_factory=lambda c, e, b: object())
    a, b = r.route("acct-a", "s3", S3, "shared"), r.route("acct-b", "s3", S3, "shared")
    assert (a.key_prefix, b.key_prefix) == ("acct-a/", "acct-b/")
    assert "keys under acct-a/" in a.description
    la, lb = r.route("acct-a", "local", "disk", "b"), r.route("acct-b", "local", "disk", "b")
    assert la.sink.root == (tmp_path / "storage" / "acct-a" / "disk" / "b").resolve()
    assert lb.sink.root == (tmp_path / "storage" / "acct-b" / "disk" / "b").resolve()
    fallback = r.route("acct-b", "oss", "oss-cn-shanghai.aliyuncs.com", "x")
    assert fallback.fallback and "/acct-b/" in fallback.description
    await r.close(1)


async def test_without_the_fallback_another_accounts_bucket_is_refused_and_says_why(tmp_path):
    (own,) = parse(entry(bucket="a-only", accounts=["acct-a"]))
    r = router(tmp_path, credentials=[own], fallback=False,
               sink_factory=lambda c, e, b: object())
    assert r.check("acct-a", "s3", S3, "a-only") == ""
    reason = r.check("acct-b", "s3", S3, "a-only")
    assert "is not open to this account" in reason and "bucket a-only" in reason
    assert "No storage is configured" in r.check("acct-b", "s3", S3, "nobody")
    await r.close(1)


# deletes -------------------------------------------------------------------------------------
class Remover:
    def __init__(self) -> None:
        self.deleted: list[tuple[str, str]] = []

    async def delete(self, account, target, key):
        self.deleted.append((account, key))


async def test_an_object_another_accounts_record_names_is_not_deleted() -> None:
    store, remover = MemoryStore(), Remover()
    manager = JobManager(store=store, clock=ManualClock(), remover=remover)
    await manager.open()
    target = StorageTarget(storage_type=StorageType.LOCAL, endpoint="disk", bucket="b")
    spec = JobSpec(name="j", template_id="system", stream_url="rtmp://127.0.0.1/live/x",
                   stream_type="rtmp", storage=target, callback_url=None)
    jobs = {}
    for account in ("acct-a", "acct-b"):
        jobs[account] = job = await manager.submit_job(account, spec)
        for ms, key in ((1000, "cam/1.jpg"), (2000, f"{account}/cam/2.jpg")):
            await store.record_snapshot(SnapshotFile(
                job_id=job.id, account=account, create_ms=ms, endpoint="disk", bucket="b",
                object_key=key, is_overlay=False, overwrite_key="cam/latest.jpg"))
    results = await manager.delete_files("acct-b", jobs["acct-b"].id, [1000, 2000],
                                         delete_objects=True)
    assert [r.result for r in results] == [
        "the object is also another account's file; it was not deleted", "OK"]
    assert remover.deleted == [("acct-b", "acct-b/cam/2.jpg")]
    kept = await store.get_files(jobs["acct-b"].id, [1000, 2000])
    assert [f.create_ms for f in kept] == [1000]  # its record stays, as for any failed delete
    await manager.close()


# the local layout ----------------------------------------------------------------------------
def test_one_accounts_older_local_storage_moves_into_its_directory_once(tmp_path, caplog):
    root = tmp_path / "storage"
    (root / "disk" / "bucket" / "snap").mkdir(parents=True)
    (root / "disk" / "bucket" / "snap" / "1.jpg").write_bytes(b"jpeg")
    (root / "default").mkdir()  # a local target's Endpoint that looks like the account
    (root / "default" / "x.jpg").write_bytes(b"other")
    with caplog.at_level(logging.INFO, logger="livesnap.outputs.local"):
        assert adopt_legacy_layout(root, {"default"}) == ["default", "disk"]
    assert (root / "default" / "disk" / "bucket" / "snap" / "1.jpg").read_bytes() == b"jpeg"
    assert (root / "default" / "default" / "x.jpg").read_bytes() == b"other"
    assert sorted(p.name for p in root.iterdir()) == [LAYOUT_MARK, "default"]
    assert adopt_legacy_layout(root, {"default"}) == []  # once: the account dir stays put
    assert (root / "default" / "disk").is_dir()


def test_a_move_cut_short_is_finished_by_the_next_start(tmp_path):
    root = tmp_path / "storage"
    (root / ".default.adopting" / "disk").mkdir(parents=True)  # moved before the crash
    (root / "other").mkdir()  # not moved yet
    assert adopt_legacy_layout(root, {"default"}) == ["other"]
    assert sorted(p.name for p in (root / "default").iterdir()) == ["disk", "other"]


def test_with_several_accounts_older_local_storage_is_left_and_named(tmp_path, caplog):
    root = tmp_path / "storage"
    (root / "disk" / "bucket").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="livesnap.outputs.local"):
        assert adopt_legacy_layout(root, {"acct-a", "acct-b"}) == ["disk"]
    assert (root / "disk" / "bucket").is_dir() and (root / LAYOUT_MARK).exists()
    assert any(getattr(r, "left", None) == ["disk"] for r in caplog.records)
    fresh = tmp_path / "fresh"
    assert adopt_legacy_layout(fresh, {"a"}) == [] and (fresh / LAYOUT_MARK).exists()
