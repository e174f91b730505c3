"""Ray: capture shards as named detached actors, and the API node's ``CaptureEngine`` over them.

The only module that imports Ray. What Ray guarantees and what livesnap adds on top is in
docs/cluster.md, with the measured behaviour behind the options here:

* shards are named, detached actors with ``max_restarts=-1`` (a dead node's shards restart
  elsewhere), ``num_cpus=0`` (capacity by the optional custom resource instead) and the SPREAD
  strategy (otherwise they all land on the first node);
* ``max_task_retries=-1`` makes calls at-least-once, so every command is idempotent, and every
  call is bounded by a timeout (a call to a restarting actor waits instead of failing);
* the actor's ``__init__`` never raises (``shardhost.ShardHost`` opens the database in the
  background), because a raising constructor kills a restartable actor for good.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import ActorDiedError, GetTimeoutError, RayActorError, RayError

from livesnap.cluster.nodes import Move, node_rows, plan_rebalance
from livesnap.config import Settings
from livesnap.errors import RebalanceRefused, ShardUnavailable
from livesnap.shards.assign import owner
from livesnap.shards.remote import RemoteEngine, raise_reply

logger = logging.getLogger(__name__)

__all__ = ["RayEngine", "cluster_status", "connect", "gcs_storage", "launch_shards", "move_shard",
           "node_status", "rebalance", "remove_shards"]

AUTH_HINT = ("if the cluster wants a token: RAY_AUTH_MODE=token, and the token in "
             "RAY_AUTH_TOKEN_PATH, RAY_AUTH_TOKEN or ~/.ray/auth_token")


NO_LOCAL_NODE = ("no Ray node was started on this machine (ray start; livesnap looks for "
                 "RAY_ADDRESS or the address ray start records under RAY_TMPDIR) and no "
                 "--ray-address (LIVESNAP_RAY_ADDRESS) was given")


def local_cluster_address() -> str:
    """The cluster of this machine's Ray node: ``RAY_ADDRESS``, else the address the last
    ``ray start`` recorded (``ray/ray_current_cluster`` under ``RAY_TMPDIR``, ``TMPDIR`` or
    /tmp); "" if neither. Ray's own ``auto`` goes on to join any GCS process it finds on the
    machine, another user's test cluster included; livesnap stops there instead."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:  # not in this Ray: let ray.init look ("auto")
        return "auto"
    return find_bootstrap_address(None) or ""


def _token_as_auto_would() -> None:
    """What ``ray.init(address="auto")`` does and an explicit address does not: with
    ``RAY_AUTH_MODE`` unset, turn token mode on when a token is at hand (``~/.ray/auth_token``,
    ``RAY_AUTH_TOKEN_PATH``, ``RAY_AUTH_TOKEN``), as ``ray start --head`` did with it."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(address: str, namespace: str, temp_dir: str = "") -> None:
    """Join the Ray cluster at ``address``, or with "" the cluster of this machine's Ray node
    (a driver attaches to a local raylet either way), never starting one. ``temp_dir``: attach
    to the local node started with that temp directory (a machine with several Ray nodes of
    one cluster; Ray otherwise prefers the head's).
    ``ConnectionError`` with one line of why when it cannot. (Ray's environment defaults are
    set by importing ``livesnap.cluster``, before Ray.)"""
    if ray.is_initialized():
        return
    target = address or local_cluster_address()
    if not target:
        raise ConnectionError(NO_LOCAL_NODE)
    try:
        if not address:
            _token_as_auto_would()
        ray.init(address=target, namespace=namespace, log_to_driver=False,
                 logging_level=logging.WARNING, _temp_dir=temp_dir or None)
    except RayError as exc:  # e.g. AuthenticationError: token mode on, but no token here
        raise ConnectionError((str(exc).strip() or type(exc).__name__).splitlines()[0]) from None
    except ConnectionError as exc:
        # a GCS that wants a token answers a driver without one (or with another) only
        # "Unauthenticated" in its log lines, and ray.init gives up after ~20 s with this
        reason = (str(exc).strip() or "no answer").splitlines()[0]
        if (reason.startswith("Failed to connect")
                and os.environ.get("RAY_AUTH_MODE", "").lower() != "token"):
            reason = f"{reason}; {AUTH_HINT}"
        raise ConnectionError(reason) from None


def launch_shards(
    host: type, settings: Settings, names: Sequence[str], *, resource: str = "",
    only: Sequence[str] = (), node_id: str = "",
) -> dict[str, Any]:
    """Create the named shard actors that do not exist yet (of ``names``, or of ``only``);
    name → actor handle.

    ``host`` is the actor's class (``livesnap.node.shardhost.ShardHost``, passed in by the
    composition root), constructed as ``host(settings, name, names)``. ``node_id``: place
    them on that node while it can hold them (a rebalance); Ray's SPREAD otherwise. The
    preference is soft: a shard whose node dies restarts wherever Ray finds room.
    """
    actor: Any = ray.remote(host)
    resources = {resource: 1} if resource else {}
    strategy: Any = "SPREAD"
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True)
    handles = {}
    for name in only or names:
        handles[name] = actor.options(
            name=name, namespace=settings.cluster.ray_namespace, lifetime="detached",
            get_if_exists=True, max_restarts=-1, max_task_retries=-1, max_concurrency=32,
            num_cpus=0, resources=resources, scheduling_strategy=strategy,
        ).remote(settings, name, list(names))
    return handles


def remove_shards(names: Sequence[str], namespace: str) -> list[str]:
    """Kill the named shard actors for good (no restart); the names that existed."""
    removed = []
    for name in names:
        try:
            handle = ray.get_actor(name, namespace=namespace)
        except ValueError:
            continue
        _close_and_kill(name, handle)
        removed.append(name)
    return removed


def _close_and_kill(name: str, handle: Any) -> None:
    """Stop the instance's streams (it lets go of them and writes nothing more), then end its
    actor for good."""
    try:
        ray.get(handle.close.remote(5.0), timeout=15)
    except RayError as exc:
        logger.warning("shard did not close cleanly", extra={"shard": name,
                                                             "reason": str(exc)[:200]})
    ray.kill(handle, no_restart=True)


def move_shard(
    host: type, namespace: str, name: str, node_id: str, *, timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Move shard ``name`` to node ``node_id``: its instance stops its streams and ends, then
    a new instance, with the settings and shard names the old one had, starts there (a new
    epoch: should the old one still be running somehow, its next write is refused and it
    stops). Returns the new instance's status once it runs; ``TimeoutError`` if it does not
    within ``timeout_s``, ``ValueError`` if the shard does not exist."""
    deadline = time.monotonic() + timeout_s
    handle = ray.get_actor(name, namespace=namespace)
    launched: Any = ray.get(handle.launch_settings.remote(), timeout=15)
    settings: Settings = launched[0]
    names: list[str] = launched[1]
    _close_and_kill(name, handle)
    while True:  # the GCS frees the name once the kill is through
        try:
            ray.get_actor(name, namespace=namespace)
        except ValueError:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the old instance did not go away")
        time.sleep(0.1)
    launch_shards(host, settings, names, resource=settings.cluster.shard_resource, only=[name],
                  node_id=node_id)
    while True:
        row = cluster_status([name], namespace, timeout_s=5.0)[0]
        if row["state"] == "running":
            return row
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} is {row['state']} on its new node")
        time.sleep(0.2)


def rebalance(
    host: type, names: Sequence[str], namespace: str, *, resource: str = "",
    dry_run: bool = False, report: Callable[[str], None] = lambda line: None,
) -> list[Move]:
    """Give every live node a fair share of the shards (``nodes.plan_rebalance``), moving one
    shard at a time and waiting until it runs before the next; ``report`` gets a line per
    step. ``resource`` is the shards' custom resource ("": the one they were created with).
    ``RebalanceRefused`` when a shard is not running (a failover under way, a node that
    just died): its placement is Ray's to settle first."""
    rows = cluster_status(names, namespace)
    waiting = [f"{r['name']} ({r['state']})" for r in rows if r["state"] != "running"]
    if waiting:
        raise RebalanceRefused(f"not every shard is running: {', '.join(waiting)}; "
                               "rebalance once they are (livesnap cluster status)")
    if not resource and names:
        launched: Any = ray.get(
            ray.get_actor(names[0], namespace=namespace).launch_settings.remote(), timeout=15)
        resource = str(launched[0].cluster.shard_resource)
    moves = plan_rebalance(node_status(rows, resource), resource=resource)
    for move in moves:
        step = f"{move.shard}: node {move.source[:8]} -> node {move.target[:8]}"
        if dry_run:
            report(f"would move {step}")
            continue
        began = time.monotonic()
        row = move_shard(host, namespace, move.shard, move.target)
        landed = str(row.get("node", ""))
        report(f"moved {step} in {time.monotonic() - began:.1f} s (epoch {row.get('epoch')})"
               + ("" if landed == move.target else
                  f", but Ray placed it on node {landed[:8]} (no room on the planned one)"))
    return moves


def gcs_storage() -> str:
    """Where the cluster's GCS keeps its state, as its head recorded at start: ``redis``
    (fault tolerant: a restarted head finds the cluster again), ``memory`` (not), another
    backend's name, or "" if the head did not say."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        value = _internal_kv_get(b"extra_usage_tag_gcs_storage", namespace=b"usage_stats")
    except (ImportError, RayError, ConnectionError, RuntimeError) as exc:
        logger.warning("GCS storage unknown", extra={"reason": str(exc)[:200]})
        return ""
    return value.decode() if isinstance(value, bytes) else ""


def cluster_status(
    names: Sequence[str], namespace: str, timeout_s: float = 5.0
) -> list[dict[str, Any]]:
    """Each shard's own report (or why it gave none), with its node's address."""
    nodes = {n["NodeID"]: n for n in ray.nodes()}  # type: ignore[no-untyped-call]
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        try:
            handle = ray.get_actor(name, namespace=namespace)
            row.update(ray.get(handle.status.remote(), timeout=timeout_s))
        except ValueError:
            row["state"] = "missing"
        except (GetTimeoutError, RayError) as exc:
            row["state"] = f"no answer ({type(exc).__name__})"
        else:
            row["state"] = "fenced" if row.get("fenced") else (
                "running" if row.get("ready") else "starting")
            node = nodes.get(row.get("node", ""), {})
            row["node_address"] = node.get("NodeManagerAddress", "")
            row["node_alive"] = bool(node.get("Alive", False))
        rows.append(row)
    return rows


def node_status(shards: Sequence[dict[str, Any]], resource: str = "shard") -> list[dict[str, Any]]:
    """Every node the GCS knows, dead ones included, with the ``cluster_status`` rows' shards
    on it. From the GCS directly (``ray.nodes()``; ``ray.util.state`` would need the
    dashboard, which the documented setup leaves out); a live node's free resources come from
    Ray's ``available_resources_per_node`` (a developer API), and are left unknown if it fails."""
    free: dict[str, dict[str, float]] = {}
    try:
        from ray._private.state import available_resources_per_node

        free = available_resources_per_node()  # type: ignore[no-untyped-call]
    except (ImportError, RayError, ConnectionError) as exc:
        logger.warning("free resources per node unknown", extra={"reason": str(exc)[:200]})
    nodes = ray.nodes()  # type: ignore[no-untyped-call]
    return node_rows(nodes, free, shards, resource=resource)


class RayEngine(RemoteEngine):
    """``CaptureEngine`` of an API node: each command goes to the job's owning shard."""

    def __init__(self, *, shards: Sequence[str], namespace: str, timeout_s: float) -> None:
        self._shards = tuple(shards)
        self._namespace = namespace
        self._timeout_s = timeout_s
        self._handles: dict[str, Any] = {}

    async def _handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            try:
                handle = await asyncio.to_thread(ray.get_actor, name, namespace=self._namespace)
            except ValueError:
                raise ShardUnavailable(
                    f"Capture shard {name} does not exist (livesnap cluster up).") from None
            self._handles[name] = handle
        return handle

    async def _call(self, job_id: str, method: str, *args: Any) -> dict[str, Any]:
        name = owner(job_id, self._shards)
        try:
            reply = await self._ask(name, method, job_id, *args)
        except ActorDiedError:
            # this instance is gone for good (a rebalance moved the shard, or cluster
            # down/up): look the name up again, once
            reply = await self._ask(name, method, job_id, *args, last=True)
        raise_reply(reply)
        return reply

    async def _ask(
        self, name: str, method: str, job_id: str, *args: Any, last: bool = False
    ) -> dict[str, Any]:
        """One call to the shard's instance; ``ActorDiedError`` (unless ``last``) when that
        instance is gone for good, ``ShardUnavailable`` for every other failure."""
        handle = await self._handle(name)
        ref = getattr(handle, method).remote(job_id, *args, self._timeout_s)
        try:
            reply: dict[str, Any] = await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), self._timeout_s + 2)
        except (TimeoutError, GetTimeoutError, RayActorError, RayError) as exc:
            if isinstance(exc, ActorDiedError):
                self._handles.pop(name, None)
                if not last:
                    raise
            raise ShardUnavailable(
                f"Capture shard {name} did not answer ({type(exc).__name__}).") from None
        return reply

    async def _command(self, method: str, job_id: str, *args: Any) -> dict[str, Any]:
        return await self._call(job_id, method, *args)

    async def shutdown(self, timeout_s: float) -> None:
        """Nothing to stop: the shards keep capturing when an API node goes away."""

