"""The API node's automatic rebalance without Ray: it moves shards only when two checks in a
row want it, never while a shard is not running, and only while it holds the lease."""

from __future__ import annotations

import asyncio

from livesnap.cluster.autobalance import AutoRebalance
from livesnap.cluster.nodes import Move
from livesnap.errors import RebalanceRefused

MOVE = Move("shard-5", "a", "b")


class Cluster:
    def __init__(self) -> None:
        self.wanted: list[Move] | Exception = []
        self.moves = 0
        self.leased = True
        self.leases: list[float] = []

    def plan(self) -> list[Move]:
        if isinstance(self.wanted, Exception):
            raise self.wanted
        return list(self.wanted)

    def move(self) -> list[Move]:
        self.moves += 1
        moved, self.wanted = self.plan(), []
        return moved

    async def lease(self, seconds: float) -> bool:
        self.leases.append(seconds)
        return self.leased


def balancer(cluster: Cluster) -> AutoRebalance:
    return AutoRebalance(every_s=60, plan=cluster.plan, move=cluster.move, lease=cluster.lease)


async def test_moves_once_the_second_check_in_a_row_still_wants_them() -> None:
    cluster = Cluster()
    auto = balancer(cluster)
    assert await auto.check() == []
    cluster.wanted = [MOVE]  # a node has just joined
    assert await auto.check() == [] and cluster.moves == 0  # let it settle in
    assert await auto.check() == [MOVE] and cluster.moves == 1 and auto.moved == 1
    assert await auto.check() == []  # balanced now
    assert cluster.leases and min(cluster.leases) > 60 * 3  # the lease outlasts the moves


async def test_a_shard_not_running_or_a_balanced_check_starts_the_count_again() -> None:
    cluster = Cluster()
    auto = balancer(cluster)
    cluster.wanted = [MOVE]
    await auto.check()
    cluster.wanted = RebalanceRefused("not every shard is running: shard-2 (starting)")
    assert await auto.check() == []  # a failover under way
    cluster.wanted = [MOVE]
    assert await auto.check() == []  # one check only since
    cluster.wanted = []
    await auto.check()
    cluster.wanted = [MOVE]
    assert await auto.check() == [] and cluster.moves == 0
    assert await auto.check() == [MOVE]


async def test_another_node_holding_the_lease_means_this_one_does_nothing() -> None:
    cluster = Cluster()
    cluster.leased = False
    cluster.wanted = [MOVE]
    auto = balancer(cluster)
    for _ in range(3):
        assert await auto.check() == []
    assert cluster.moves == 0


async def test_a_failing_check_is_logged_and_the_loop_goes_on(caplog) -> None:
    cluster = Cluster()
    calls = []
    loop = asyncio.get_running_loop()
    third = asyncio.Event()

    def plan() -> list[Move]:  # in a worker thread
        calls.append(1)
        if len(calls) == 3:
            loop.call_soon_threadsafe(third.set)
        if len(calls) == 1:
            raise ConnectionError("GCS away")
        return []

    auto = AutoRebalance(every_s=0.01, plan=plan, move=cluster.move, lease=cluster.lease)
    auto.start()
    try:
        await asyncio.wait_for(third.wait(), 5)
    finally:
        await auto.close()
    assert "rebalance check failed" in caplog.text
