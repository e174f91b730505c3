"""What the pages show, computed from domain objects: badges, picture ages, times. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from livesnap.jobs.manager import STORAGE_ERROR_PREFIX
from livesnap.jobs.models import Job, JobStatus, SnapshotFile, StreamStatus

STALE_GRACE_MS = 10_000


@dataclass(frozen=True, kw_only=True)
class Badge:
    """A status badge: ``kind`` picks the style, ``text`` is what it says (never colour only)."""

    kind: str  # live | trouble | reconnecting | offline | paused
    text: str


def badge_for(job: Job) -> Badge:
    """live / reconnecting / offline / paused, from the job and stream status."""
    if job.stream_status is StreamStatus.WAITING:  # not started, or paused: probed again
        return Badge(kind="offline", text="Waiting for stream")
    if job.status is JobStatus.PAUSED:
        return Badge(kind="paused", text="Paused")
    if job.status is JobStatus.INIT:
        return Badge(kind="offline", text="Not started")
    if job.stream_status is StreamStatus.LIVE and job.last_error.startswith(STORAGE_ERROR_PREFIX):
        return Badge(kind="trouble", text="Not storing")  # live, but no picture gets stored
    if job.stream_status is StreamStatus.LIVE:
        return Badge(kind="live", text="Live")
    if job.stream_status is StreamStatus.RECONNECTING:
        return Badge(kind="reconnecting", text="Reconnecting")
    if job.stream_status is StreamStatus.CONNECTING:
        return Badge(kind="reconnecting", text="Connecting")
    return Badge(kind="offline", text="Offline")


def interval_ms(job: Job) -> int:
    """How often the job really captures (the effective interval when the GOP is longer)."""
    return max(job.effective_interval_ms or 0, job.interval_s * 1000)


def stale_after_ms(job: Job) -> int | None:
    """A picture older than this has missed a capture (None: the job is not capturing)."""
    if job.status is not JobStatus.STARTED:
        return None
    return 2 * interval_ms(job) + STALE_GRACE_MS


def age_text(age_ms: int) -> str:
    """``12 s ago``, ``3 min ago``, ``2 h ago``, ``4 d ago``."""
    seconds = max(age_ms, 0) // 1000
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return f"{seconds // 86400} d ago"


def utc_text(ms: int | None) -> str:
    """``2026-01-31 12:00:05 UTC`` (empty for None)."""
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def local_input_value(ms: int) -> str:
    """A ``datetime-local`` input value (UTC, seconds precision)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def local_input_value_ms(ms: int) -> str:
    """A ``datetime-local`` value with milliseconds (for "later files" links)."""
    moment = datetime.fromtimestamp(ms // 1000, tz=UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}"


def parse_local_input(text: str | None) -> int | None:
    """Epoch ms from a ``datetime-local`` value read as UTC; None if empty or malformed."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, kw_only=True)
class Picture:
    """The newest stored picture of a job, as the wall and the job page show it."""

    taken_ms: int
    age_ms: int
    stale: bool
    width: int
    height: int

    @property
    def age(self) -> str:
        return age_text(self.age_ms)


def picture_of(job: Job, latest: SnapshotFile | None, now_ms: int) -> Picture | None:
    if latest is None:
        return None
    age = now_ms - latest.create_ms
    limit = stale_after_ms(job)
    return Picture(
        taken_ms=latest.create_ms,
        age_ms=age,
        stale=limit is not None and age > limit,
        width=latest.width,
        height=latest.height,
    )


def job_state(job: Job, latest: SnapshotFile | None, now_ms: int) -> dict[str, object]:
    """The JSON the wall's refresh loop reads for one job."""
    badge = badge_for(job)
    return {
        "id": job.id,
        "status": job.status.value,
        "streamStatus": job.stream_status.value,
        "badge": {"kind": badge.kind, "text": badge.text},
        "takenMs": latest.create_ms if latest else None,
        "nowMs": now_ms,
        "intervalMs": interval_ms(job),
        "staleAfterMs": stale_after_ms(job),
        "snapshotCount": job.snapshot_count,
        "lastError": job.last_error,
    }
