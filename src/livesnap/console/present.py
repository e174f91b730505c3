"""What the pages show, computed from domain objects: badges, picture ages, times. Pure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from livesnap.jobs.models import ErrorKind, Job, JobStatus, LastError, SnapshotFile, StreamStatus

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
    storing = LastError.of(job.last_error).kind is not ErrorKind.STORAGE
    if job.stream_status is StreamStatus.LIVE and not storing:
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
    """A ``datetime-local`` value with milliseconds (for the file pages' links)."""
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
    return round(parsed.timestamp() * 1000)  # not int(): x.567 s may be 566.99… ms as a float


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


# the wall: which started jobs it shows, in what order, one page at a time ---------------------
WALL_TILES_PER_PAGE = 24
WALL_SHOWS = {"all": "All started jobs", "live": "Live only", "trouble": "Not live or not storing"}
WALL_SORTS = {"status": "Trouble first", "name": "Name", "newest": "Newest first"}
# "status" order: what needs a look first
_BADGE_ORDER = {"trouble": 0, "offline": 1, "reconnecting": 2, "paused": 3, "live": 4}


@dataclass(frozen=True, kw_only=True)
class WallView:
    """The wall's filter (``q`` in the name or a job id prefix, ``show``), sort and page."""

    q: str = ""
    show: str = "all"
    sort: str = "status"
    page: int = 1

    @classmethod
    def from_query(cls, params: dict[str, str]) -> WallView:
        """From the page's query string; anything unknown falls back to the default."""
        default = cls()
        show, sort = params.get("show"), params.get("sort")
        try:
            page = max(1, min(int(params.get("page", default.page)), 10_000))
        except ValueError:
            page = default.page
        return cls(q=params.get("q", default.q).strip()[:100],
                   show=show if show in WALL_SHOWS else default.show,
                   sort=sort if sort in WALL_SORTS else default.sort, page=page)

    @property
    def narrowed(self) -> bool:
        """A filter or sort other than the default is chosen (the page aside)."""
        return dataclasses.replace(self, page=1) != WallView()

    def query(self, **changes: object) -> str:
        """This view's query string with ``changes`` (the pager's links), defaults left out."""
        defaults = dataclasses.asdict(WallView())
        values = {**dataclasses.asdict(self), **changes}
        kept = {k: str(v) for k, v in values.items() if v != defaults[k]}
        return "?" + urlencode(kept) if kept else "?"


@dataclass(frozen=True, kw_only=True)
class WallPage:
    """One page of the wall: its jobs, and how many matched and were started in all."""

    jobs: list[Job]
    first: int  # the position of the first job shown among those matched, from 1
    matched: int
    started: int
    live: int
    page: int
    pages: int


def arrange_wall(jobs: list[Job], view: WallView, per_page: int = WALL_TILES_PER_PAGE) -> WallPage:
    """Filter, sort and page the started jobs for the wall."""
    badges = {job.id: badge_for(job).kind for job in jobs}
    needle = view.q.casefold()
    matched = [
        job for job in jobs
        if (not needle or needle in job.name.casefold() or job.id.startswith(view.q))
        and (view.show == "all" or (badges[job.id] == "live") == (view.show == "live"))
    ]
    if view.sort == "name":
        matched.sort(key=lambda job: (job.name.casefold(), job.id))
    elif view.sort == "newest":
        matched.sort(key=lambda job: (-job.created_ms, job.id))
    else:
        matched.sort(key=lambda job: (_BADGE_ORDER.get(badges[job.id], 9),
                                      job.name.casefold(), job.id))
    pages = max(1, -(-len(matched) // per_page))
    page = min(view.page, pages)
    start = (page - 1) * per_page
    return WallPage(jobs=matched[start:start + per_page], first=start + 1, matched=len(matched),
                    started=len(jobs), live=sum(kind == "live" for kind in badges.values()),
                    page=page, pages=pages)
