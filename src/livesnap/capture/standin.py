"""A capture engine for nodes without capture: every stream reports as not live."""

from __future__ import annotations

from livesnap.errors import JobNotStarted, StreamNotFound
from livesnap.jobs.models import Job
from livesnap.jobs.ports import CaptureResult


class NoCapture:
    """``start`` with a probe fails with ``StreamNotFound``; nothing ever runs."""

    async def start(self, job: Job, *, probe: bool) -> None:
        if probe:
            raise StreamNotFound("No such stream (capture is disabled on this node).")

    async def stop(self, job_id: str) -> None:
        return None

    async def capture_now(self, job: Job) -> CaptureResult:
        raise JobNotStarted("Capture is disabled on this node.")

    def is_running(self, job_id: str) -> bool:
        return False

    def running_count(self) -> int:
        return 0

    async def shutdown(self, timeout_s: float) -> None:
        return None
