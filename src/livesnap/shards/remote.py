"""The engine of a process whose capture runs in other processes (a node's capture processes,
a cluster's Ray shards), and the plain-data errors their replies carry across the boundary.
"""

from __future__ import annotations

import logging
from typing import Any

from livesnap import errors
from livesnap.errors import LivesnapError, ShardUnavailable
from livesnap.jobs.models import Job
from livesnap.jobs.ports import CaptureResult

logger = logging.getLogger(__name__)

__all__ = ["RemoteEngine", "error_reply", "raise_reply"]


def error_reply(exc: LivesnapError) -> dict[str, str]:
    """A ``LivesnapError`` as plain data for the reply of a shard call (a process boundary)."""
    return {"error": type(exc).__name__, "message": exc.message}


def raise_reply(reply: dict[str, Any]) -> None:
    """Re-raise an error made by :func:`error_reply` (an unknown kind as ``ShardUnavailable``)."""
    if "error" in reply:
        cls = getattr(errors, str(reply["error"]), None)
        if not (isinstance(cls, type) and issubclass(cls, LivesnapError)):
            cls = ShardUnavailable
        raise cls(str(reply.get("message", "")))


class RemoteEngine:
    """A ``CaptureEngine`` whose sessions run in another process (a Ray shard, the capture
    process), reached by ``_command(method, job_id, *args)`` → the reply of a
    ``ShardHost`` method, its errors re-raised.

    Nothing runs here, so ``is_running`` is False and ``running_count`` 0 (the other side
    keeps the session cap). When it does not answer in time, stop succeeds anyway and so
    does a start in the background (resume, a publish hook): the other side applies the
    job's stored state when it is back (reconcile). A start by command or submit
    (``probe``) raises ``ShardUnavailable`` instead, for the manager to record the job as
    started with a ``LastError`` that says why it does not capture yet; a capture-now fails
    with ``ServiceUnavailable``.
    """

    async def _command(self, method: str, job_id: str, *args: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def start(self, job: Job, *, probe: bool) -> None:
        try:
            await self._command("start", job.id, probe)
        except ShardUnavailable as exc:
            logger.warning("capture unavailable; the job starts when it is back", extra={
                "action": "engine_start", "job_id": job.id, "reason": exc.message})
            if probe:
                raise

    async def stop(self, job_id: str) -> None:
        try:
            await self._command("stop", job_id)
        except ShardUnavailable as exc:
            logger.warning("capture unavailable; the job stops when it is back", extra={
                "action": "engine_stop", "job_id": job_id, "reason": exc.message})

    async def capture_now(self, job: Job) -> CaptureResult:
        file = (await self._command("capture", job.id)).get("file")
        if file is None:
            raise errors.CaptureTimeout()
        return CaptureResult(file=file)

    def is_running(self, job_id: str) -> bool:
        return False

    def running_count(self) -> int:
        return 0
