"""The wall's filter, sort and pages (``console.present.arrange_wall``), pure."""

from __future__ import annotations

from urllib.parse import parse_qs

from tests.contract.test_store_contract import job

from livesnap.console.present import WallView, arrange_wall
from livesnap.jobs.models import JobStatus, LastError, StreamStatus


def started(jid: str, name: str, stream: StreamStatus = StreamStatus.LIVE, *, created: int = 0,
            error: str = ""):
    return job(jid, name=name, status=JobStatus.STARTED, stream_status=stream,
               created_ms=1_000 + created, last_error=error)


JOBS = [
    started("j-1", "Stage cam", created=3),
    started("j-2", "lobby cam", StreamStatus.RECONNECTING, created=1),
    started("j-3", "Yard", error=LastError.storage("the store has not answered").text, created=2),
    started("j-4", "attic", StreamStatus.OFFLINE, created=4),
]


def names(page) -> list[str]:
    return [j.name for j in page.jobs]


def test_trouble_comes_first_by_default_then_names():
    page = arrange_wall(JOBS, WallView())
    # not storing, offline, reconnecting, then live
    assert names(page) == ["Yard", "attic", "lobby cam", "Stage cam"]
    assert (page.matched, page.started, page.live, page.page, page.pages) == (4, 4, 1, 1, 1)


def test_sort_by_name_ignores_case_and_newest_by_creation():
    assert names(arrange_wall(JOBS, WallView(sort="name"))) == [
        "attic", "lobby cam", "Stage cam", "Yard"]
    assert names(arrange_wall(JOBS, WallView(sort="newest"))) == [
        "attic", "Stage cam", "Yard", "lobby cam"]


def test_filter_by_name_job_id_and_status():
    assert names(arrange_wall(JOBS, WallView(q="CAM", sort="name"))) == ["lobby cam", "Stage cam"]
    assert names(arrange_wall(JOBS, WallView(q="j-4"))) == ["attic"]
    # live but not storing is trouble, not live
    assert names(arrange_wall(JOBS, WallView(show="live", sort="name"))) == ["Stage cam"]
    trouble = arrange_wall(JOBS, WallView(show="trouble", sort="name"))
    assert names(trouble) == ["attic", "lobby cam", "Yard"]
    assert (trouble.matched, trouble.started) == (3, 4)
    assert arrange_wall(JOBS, WallView(q="nothing")).jobs == []


def test_pages_hold_per_page_jobs_and_a_page_past_the_end_shows_the_last():
    many = [started(f"id-{i:03}", f"cam {i:03}") for i in range(50)]
    first = arrange_wall(many, WallView(sort="name"), per_page=24)
    assert (len(first.jobs), first.first, first.pages) == (24, 1, 3)
    third = arrange_wall(many, WallView(sort="name", page=3), per_page=24)
    assert names(third) == ["cam 048", "cam 049"] and third.first == 49
    assert arrange_wall(many, WallView(sort="name", page=99), per_page=24).page == 3
    assert arrange_wall([], WallView()).pages == 1


def test_the_query_string_is_read_forgivingly_and_written_back_without_defaults():
    view = WallView.from_query({"q": "  lobby ", "show": "bogus", "sort": "name", "page": "x"})
    assert view == WallView(q="lobby", show="all", sort="name", page=1)
    assert WallView.from_query({"page": "-5"}).page == 1
    assert WallView().query() == "?"
    assert parse_qs(view.query(page=2)[1:]) == {"q": ["lobby"], "sort": ["name"], "page": ["2"]}
