"""The Ray nodes of a cluster as ``livesnap cluster status`` shows them, without Ray.

``rayengine.node_status`` passes in Ray's node records (``ray.nodes()``: every node the GCS
knows, dead ones included) and each live node's free resources; this module makes one row per
node with the shards on it, so the rows can be built and tested from plain dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["HEAD_RESOURCE", "Move", "node_rows", "plan_rebalance"]

# Ray gives the head node this resource (and only the head)
HEAD_RESOURCE = "node:__internal_head__"


def node_rows(
    nodes: Sequence[Mapping[str, Any]], free: Mapping[str, Mapping[str, float]],
    shards: Sequence[Mapping[str, Any]], *, resource: str = "shard",
) -> list[dict[str, Any]]:
    """One row per node: live nodes first (the head first), then the dead ones.

    ``nodes`` are ``ray.nodes()`` records; ``free`` maps a live node's id to its free
    resources (Ray leaves out a resource with nothing free); ``shards`` are
    ``cluster_status`` rows, whose ``node`` places a shard that answered; ``resource`` is the
    custom resource shards take (its total and free units; ``None`` where the node has none).
    """
    placed: dict[str, list[str]] = {}
    for shard in shards:
        if shard.get("node"):
            placed.setdefault(str(shard["node"]), []).append(str(shard["name"]))
    rows = []
    for node in nodes:
        node_id = str(node.get("NodeID", ""))
        alive = bool(node.get("Alive", False))
        total: Mapping[str, float] = node.get("Resources") or {}
        known = free.get(node_id) if alive else None
        rows.append({
            "node_id": node_id,
            "address": str(node.get("NodeManagerAddress", "")),
            "alive": alive,
            "head": HEAD_RESOURCE in total,
            "cpu_total": _number(total.get("CPU")),
            "cpu_free": _free(known, total, "CPU"),
            "resource": resource,
            "resource_total": _number(total.get(resource)) if resource else None,
            "resource_free": _free(known, total, resource) if resource else None,
            "shards": sorted(placed.get(node_id, []), key=_shard_order),
            "death_reason": "" if alive else str(node.get("DeathReasonMessage") or ""),
        })
    rows.sort(key=lambda r: (not r["alive"], not r["head"], r["address"], r["node_id"]))
    return rows


def _number(value: Any) -> int | float | None:
    """Ray's resource amounts are floats; whole ones read better as ints (``1`` CPU)."""
    if value is None:
        return None
    amount = float(value)
    return int(amount) if amount.is_integer() else amount


def _free(known: Mapping[str, float] | None, total: Mapping[str, float], name: str
          ) -> int | float | None:
    """Free units of ``name``: unknown for a dead node or one not reported yet, and ``0`` for
    a resource the node has but Ray left out of its free ones (none left)."""
    if known is None or name not in total:
        return None
    return _number(known.get(name, 0.0))


def _shard_order(name: str) -> tuple[int, str]:
    """``shard-2`` before ``shard-10``."""
    number = name.rpartition("-")[2]
    return (int(number), name) if number.isdigit() else (-1, name)


class Move(NamedTuple):
    """One step of a rebalance: ``shard`` leaves node ``source`` for node ``target``."""

    shard: str
    source: str
    target: str


def plan_rebalance(rows: Sequence[Mapping[str, Any]], *, resource: str = "") -> list[Move]:
    """The moves that give every node a fair share of the shards: after them no live node
    holds two shards more than another (each holds the floor or the ceiling of shards/nodes),
    as far as each node's units of ``resource`` allow.

    ``rows`` are :func:`node_rows` rows. A node takes shards if it is alive and, with a
    ``resource``, has units of it (then at most its total); without one, any live node. Only
    the shards in the rows (those that answered where they run) move; the fewest moves are
    planned, each from a node with the most shards to one with the fewest, the last shard
    of the source first (a stable, predictable choice).
    """
    capacity: dict[str, float] = {}
    held: dict[str, list[str]] = {}
    for row in rows:
        if not row.get("alive"):
            continue
        node = str(row["node_id"])
        total = row.get("resource_total") if resource else float("inf")
        if total is None or total < 1:
            total = 0
        capacity[node] = float(total)
        held[node] = sorted(row.get("shards", []), key=_shard_order)
    moves: list[Move] = []
    while True:
        takers = [n for n in held if len(held[n]) < capacity[n]]
        if not takers:
            return moves
        source = max(held, key=lambda n: (len(held[n]), n))
        target = min(takers, key=lambda n: (len(held[n]), n))
        if len(held[source]) - len(held[target]) <= 1:
            return moves
        shard = held[source].pop()
        held[target].append(shard)
        moves.append(Move(shard, source, target))
