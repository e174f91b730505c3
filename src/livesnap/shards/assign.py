"""Which capture shard owns a job: rendezvous (highest random weight) hashing, pure.

Every API node and every shard computes the same owner from the job id and the configured
shard names alone, with no table to keep in sync. Adding a shard to K moves only the jobs
the new shard wins, about 1/(K+1) of them; removing one moves only its own jobs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = ["owner", "shard_names"]


def _weight(job_id: str, shard: str) -> bytes:
    return hashlib.blake2b(f"{job_id}\x00{shard}".encode(), digest_size=8).digest()


def owner(job_id: str, shards: Sequence[str]) -> str:
    """The shard that runs ``job_id`` (ties cannot matter: names are distinct)."""
    if not shards:
        raise ValueError("no shards configured")
    return max(shards, key=lambda shard: _weight(job_id, shard))


def shard_names(count: int) -> list[str]:
    """The conventional names ``shard-0`` … ``shard-{count-1}``."""
    if count < 1:
        raise ValueError("at least one shard is needed")
    return [f"shard-{i}" for i in range(count)]
