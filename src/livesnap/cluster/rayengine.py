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
from collections.abc import Sequence
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from livesnap.cluster.nodes import node_rows
from livesnap.config import Settings
from livesnap.errors import ShardUnavailable
from livesnap.shards.assign import owner
from livesnap.shards.remote import RemoteEngine, raise_reply

logger = logging.getLogger(__name__)

__all__ = ["RayEngine", "cluster_status", "connect", "launch_shards", "node_status",
           "remove_shards"]

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


def connect(address: str, namespace: str) -> None:
    """Join the Ray cluster at ``address``, or with "" the cluster of this machine's Ray node
    (a driver attaches to a local raylet either way), never starting one.
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
                 logging_level=logging.WARNING)
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
    host: type, settings: Settings, names: Sequence[str], *, resource: str = ""
) -> dict[str, Any]:
    """Create the named shard actors that do not exist yet; name → actor handle.

    ``host`` is the actor's class (``livesnap.node.shardhost.ShardHost``, passed in by the
    composition root), constructed as ``host(settings, name, names)``.
    """
    actor: Any = ray.remote(host)
    resources = {resource: 1} if resource else {}
    handles = {}
    for name in names:
        handles[name] = actor.options(
            name=name, namespace=settings.cluster.ray_namespace, lifetime="detached",
            get_if_exists=True, max_restarts=-1, max_task_retries=-1, max_concurrency=32,
            num_cpus=0, resources=resources, scheduling_strategy="SPREAD",
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
        try:
            ray.get(handle.close.remote(5.0), timeout=15)
        except RayError as exc:
            logger.warning("shard did not close cleanly", extra={"shard": name,
                                                                 "reason": str(exc)[:200]})
        ray.kill(handle, no_restart=True)
        removed.append(name)
    return removed


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
        handle = await self._handle(name)
        ref = getattr(handle, method).remote(job_id, *args, self._timeout_s)
        try:
            reply: dict[str, Any] = await asyncio.wait_for(
                asyncio.wrap_future(ref.future()), self._timeout_s + 2)
        except (TimeoutError, GetTimeoutError, RayActorError, RayError) as exc:
            raise ShardUnavailable(
                f"Capture shard {name} did not answer ({type(exc).__name__}).") from None
        raise_reply(reply)
        return reply

    async def _command(self, method: str, job_id: str, *args: Any) -> dict[str, Any]:
        return await self._call(job_id, method, *args)

    async def shutdown(self, timeout_s: float) -> None:
        """Nothing to stop: the shards keep capturing when an API node goes away."""

