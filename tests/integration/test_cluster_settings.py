"""Settings every node of a cluster shares, through the database (SQLite and real PostgreSQL):
the first node stores them, a node that disagrees is refused, callback keys are generated
once for the whole cluster."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from livesnap.clock import SystemClock
from livesnap.config import AccessKey, KeyRing, Settings
from livesnap.errors import ClusterMismatch
from livesnap.node.metrics import Metrics
from livesnap.node.service import build_service
from livesnap.node.wiring import agree_with_cluster, callback_dispatcher
from livesnap.store import open_sql_store

pytestmark = pytest.mark.integration

T0 = 1_796_000_000_000


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}"
    return str(request.getfixturevalue("postgres_url"))


def keys_from(prefix: str):
    counter = itertools.count()
    return lambda: f"{prefix}-{next(counter)}"


async def test_the_first_value_stored_is_the_clusters_even_when_two_nodes_race(url: str):
    first, second = await open_sql_store(url), await open_sql_store(url, migrate=False)
    try:
        a, b = await asyncio.gather(first.agree("shards", "4", T0), second.agree("shards", "6", T0))
        assert a == b and a in ("4", "6")
        assert await second.agree("shards", "8", T0 + 1) == a  # later values never replace it
        assert await first.agree("other", "x", T0) == "x"  # each setting on its own
    finally:
        await first.close()
        await second.close()


async def test_one_node_at_a_time_holds_a_lease_until_it_runs_out(url: str):
    first, second = await open_sql_store(url), await open_sql_store(url, migrate=False)
    try:
        won = await asyncio.gather(first.take_lease("rebalance", "a", T0, T0 + 100),
                                   second.take_lease("rebalance", "b", T0, T0 + 100))
        assert sorted(won) == [False, True]  # two nodes at once: one gets it
        holder, other = ("a", "b") if won[0] else ("b", "a")
        assert await first.take_lease("rebalance", holder, T0 + 50, T0 + 150)  # renewed
        assert not await first.take_lease("rebalance", other, T0 + 149, T0 + 250)
        assert await first.take_lease("rebalance", other, T0 + 151, T0 + 250)  # ran out
        assert await first.agree("rebalance-other", "x", T0) == "x"  # settings apart
    finally:
        await first.close()
        await second.close()


async def test_a_node_with_another_shard_count_or_namespace_is_refused(url: str, tmp_path: Path):
    store = await open_sql_store(url)
    try:
        first = Settings(data_dir=tmp_path / "a", engine="ray", shards=6)
        await agree_with_cluster(first, store, ["acct-a"], T0)
        await agree_with_cluster(first, store, ["acct-a"], T0 + 1)  # the same values: fine
        with pytest.raises(ClusterMismatch) as refused:
            await agree_with_cluster(Settings(data_dir=tmp_path / "b", engine="ray", shards=4),
                                     store, ["acct-a"], T0 + 2)
        assert refused.value.message.startswith("LIVESNAP_SHARDS is '4' on this node but '6' in")
        with pytest.raises(ClusterMismatch, match="LIVESNAP_RAY_NAMESPACE is 'other'"):
            await agree_with_cluster(Settings(data_dir=tmp_path / "c", engine="ray", shards=6,
                                              ray_namespace="other"), store, [], T0 + 3)
        # 'livesnap cluster up --shards 8' resizes the cluster: then 8 is right, 6 is not
        resized = Settings(data_dir=tmp_path / "d", engine="ray", shards=8)
        await agree_with_cluster(resized, store, [], T0 + 4, authoritative=True)
        await agree_with_cluster(resized, store, [], T0 + 5)
        with pytest.raises(ClusterMismatch, match="LIVESNAP_SHARDS is '6' on this node but '8'"):
            await agree_with_cluster(first, store, [], T0 + 6)
    finally:
        await store.close()


async def test_every_node_signs_an_accounts_callbacks_with_one_key(url: str, tmp_path: Path):
    store = await open_sql_store(url)
    try:
        node_a = Settings(data_dir=tmp_path / "a", engine="ray")
        # node a generated acct-b's key before it joined a cluster: that key is kept
        (tmp_path / "a").mkdir()
        (tmp_path / "a" / "callback-keys.json").write_text('{"acct-b": "kept-key"}')
        node_b = Settings(data_dir=tmp_path / "b", engine="ray",
                          callback_keys="acct-c:configured-key-0123456789")
        keys_a = await agree_with_cluster(node_a, store, ["acct-a", "acct-b"], T0,
                                          make_key=keys_from("a"))
        keys_b = await agree_with_cluster(node_b, store, ["acct-a", "acct-b", "acct-c"], T0,
                                          make_key=keys_from("b"))
        assert keys_a == {"acct-a": "a-0", "acct-b": "kept-key"}
        assert keys_b == keys_a  # node b's own keys were never used; acct-c's is configured
        for node, shared in ((node_a, keys_a), (node_b, keys_b)):  # what the dispatchers sign with
            dispatcher, client = callback_dispatcher(node, store, Metrics(process=False),
                                                     SystemClock(), shared_keys=shared)
            assert dispatcher._key("acct-a") == "a-0"
            await client.aclose()
        assert dispatcher._key("acct-c") == "configured-key-0123456789"
    finally:
        await store.close()


async def test_a_cluster_api_node_with_another_shard_count_stops_before_joining_ray(
        postgres_url: str, tmp_path: Path):
    store = await open_sql_store(postgres_url)
    await store.agree("shards", "6", T0)
    await store.close()
    settings = Settings(data_dir=tmp_path, engine="ray", shards=4, database_url=postgres_url)
    keys = KeyRing([AccessKey("testid", "testsecret", "acct-a")])
    with pytest.raises(ClusterMismatch, match="LIVESNAP_SHARDS is '4'"):
        async with build_service(settings, keys):
            pytest.fail("the node started")
