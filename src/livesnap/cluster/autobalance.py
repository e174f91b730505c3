"""The API node's automatic rebalance (docs/cluster.md, "Shards back on a node that rejoins"):
every ``every_s`` it asks whether the shards sit fairly on the live nodes, and once the same
answer, that some must move, has come ``settle`` times in a row, it moves them.

Ray-free: the plan and the moves come in as callables (``rayengine.rebalance``, which block,
so they run in a thread), and so does the lease that lets one API node of a cluster at a time
do this (``SqlStore.take_lease``). Waiting for a second look lets a failover finish (Ray
restarts the shards of a dead node wherever there is room; ``rebalance`` refuses while any
shard is not running) and a node that has just joined settle in before shards move to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from livesnap.cluster.nodes import Move
from livesnap.errors import LivesnapError

logger = logging.getLogger(__name__)

__all__ = ["AutoRebalance"]


class AutoRebalance:
    """Runs until :meth:`close`; one check per ``every_s``."""

    def __init__(
        self, *, every_s: float, plan: Callable[[], Sequence[Move]],
        move: Callable[[], Sequence[Move]], lease: Callable[[float], Awaitable[bool]],
        settle: int = 2,
    ) -> None:
        """``plan()`` lists the moves a rebalance would make (``RebalanceRefused`` while a
        shard is not running); ``move()`` makes them; ``lease(seconds)`` is whether this node
        may rebalance for that long (and keeps others from it)."""
        self.every_s = every_s
        self._plan = plan
        self._move = move
        self._lease = lease
        self._settle = settle
        self._seen = 0  # checks in a row that wanted moves
        self.moved = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="auto-rebalance")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.check()
            except Exception:  # a Ray or database hiccup: the next check tries again
                logger.exception("rebalance check failed", extra={"action": "rebalance"})
                self._seen = 0

    async def check(self) -> list[Move]:
        """One check; the moves made (none until the plan has wanted them ``settle`` times)."""
        # the lease outlasts a check and the moves after it; renewed at every check
        if not await self._lease(self.every_s * (self._settle + 1) + 120):
            self._seen = 0
            return []
        try:
            wanted = await asyncio.to_thread(self._plan)
        except LivesnapError as exc:  # RebalanceRefused: a shard is starting or moving
            logger.info("rebalance waits: %s", exc.message, extra={"action": "rebalance"})
            self._seen = 0
            return []
        self._seen = self._seen + 1 if wanted else 0
        if self._seen < self._settle:
            return []
        self._seen = 0
        moves = list(await asyncio.to_thread(self._move))
        self.moved += len(moves)
        return moves
