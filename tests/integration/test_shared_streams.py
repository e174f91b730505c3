"""Jobs on one stream share its connection (livesnap.capture.shared) — against a real
nginx-rtmp origin and a looping ffmpeg publisher; the origin's ``/stat`` counts the players."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import simplejpeg
from tests.acceptance.test_per_tick import players
from tests.support.waiting import wait_until

from livesnap.capture.render import Renderer
from livesnap.capture.shared import SharedReader, StreamHub
from livesnap.capture.source import (
    Captured,
    Connected,
    Disconnected,
    ReaderEvent,
    SourceOptions,
    StreamReader,
    make_tap,
)
from livesnap.jobs.models import ImageOptions

pytestmark = pytest.mark.integration

OPTIONS = SourceOptions(rw_timeout_s=2.0)


def until(predicate: Callable[[], object], timeout: float, what: str = "the condition") -> None:
    wait_until(predicate, timeout, what, step=0.05)


class Sub:
    """One subscriber: its selector answer, its events."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.events: list[ReaderEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: ReaderEvent) -> None:
        with self._lock:
            self.events.append(event)

    def on_keyframe(self, wall_time: float) -> bool:
        return self.answer

    def of(self, kind: type) -> list:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def pictures(self) -> dict[float | None, bytes]:
        return {c.frame.stream_time: c.frame.image.data for c in self.of(Captured)}


@pytest.fixture
def hub() -> Iterator[Callable[..., tuple[SharedReader, Sub]]]:
    """``join(url, answer=True, image=None)``: a started subscriber; all stopped at teardown."""
    streams = StreamHub()
    made: list[SharedReader] = []

    def join(url: str, *, answer: bool = True,
             image: ImageOptions | None = None) -> tuple[SharedReader, Sub]:
        sub = Sub(answer)
        name = f"sub{len(made)}"
        tap = make_tap(options=OPTIONS, selector=sub, emit=sub.emit, name=name,
                       renderer=Renderer(image or ImageOptions(quality_gate=False)))
        reader = streams.reader(url, options=OPTIONS, name=name, tap=tap)
        reader.start()
        made.append(reader)
        return reader, sub

    join.streams = streams  # type: ignore[attr-defined]
    yield join
    for reader in made:
        reader.stop()
    for reader in made:
        assert reader.join(10), "reader thread did not end"
    until(lambda: streams.connections == 0, 10)


def test_three_jobs_on_one_stream_use_one_connection_and_one_decode_per_keyframe(
    rtmp_origin, publisher_factory, hub
):
    url = publisher_factory().url
    first, a = hub(url)
    until(lambda: a.of(Connected), 15)
    _, b = hub(url)
    _, small = hub(url, image=ImageOptions(quality_gate=False, width=320))
    until(lambda: len(b.of(Captured)) >= 3 and len(small.of(Captured)) >= 3, 20)

    assert hub.streams.connections == 1
    assert players(rtmp_origin, url) == 1
    # every keyframe the late joiners captured, the first one captured too, decoded once
    a_pics, b_pics, small_pics = a.pictures(), b.pictures(), small.pictures()
    common = set(b_pics) & set(small_pics) & set(a_pics)
    assert len(common) >= 3
    for stream_time in common:  # same options: the same picture; other options: their own
        assert b_pics[stream_time] == a_pics[stream_time]
        assert simplejpeg.decode_jpeg_header(small_pics[stream_time])[:2] == (180, 320)
        assert simplejpeg.decode_jpeg_header(a_pics[stream_time])[:2] == (720, 1280)
    stats = first.stats
    assert stats.decoded == stats.keyframes  # each keyframe decoded once for all three
    assert stats.captured == len(a.of(Captured)) + len(b.of(Captured)) + len(
        small.of(Captured))


def test_a_job_joining_a_live_connection_is_told_so(rtmp_origin, publisher_factory, hub):
    url = publisher_factory().url
    _, a = hub(url)
    until(lambda: a.of(Connected), 15)
    _, b = hub(url)
    until(lambda: b.of(Connected), 5)
    assert a.of(Connected)[0].joined is False and a.of(Connected)[0].opened_s > 0
    assert b.of(Connected)[0].joined is True and b.of(Connected)[0].opened_s == 0


def test_a_job_that_stops_leaves_the_connection_to_the_others(
    rtmp_origin, publisher_factory, hub
):
    url = publisher_factory().url
    leaving, a = hub(url)
    staying, b = hub(url)
    until(lambda: a.of(Captured) and b.of(Captured), 15)

    leaving.stop()
    until(lambda: a.of(Disconnected), 1, "the leaver was not let go at once")
    assert a.of(Disconnected)[0].reason == "stopped"
    assert leaving.join(0.1), "a job leaving others behind does not wait for the connection"
    before = len(b.of(Captured))
    until(lambda: len(b.of(Captured)) >= before + 2, 10)
    assert not b.of(Disconnected)
    assert players(rtmp_origin, url) == 1

    staying.stop()  # the last one closes the connection
    until(lambda: b.of(Disconnected), 10)
    assert staying.join(10)
    until(lambda: players(rtmp_origin, url) == 0, 10)
    assert hub.streams.connections == 0


def test_capture_now_is_served_to_the_job_that_asked_only(rtmp_origin, publisher_factory, hub):
    url = publisher_factory().url
    asking, a = hub(url, answer=False)
    _, b = hub(url, answer=False)
    until(lambda: a.of(Connected) and b.of(Connected), 15)
    asking.request_capture()
    until(lambda: a.of(Captured), 10)
    time.sleep(2.5)  # the next keyframe too: nothing for the job that did not ask
    assert len(a.of(Captured)) == 1
    assert b.of(Captured) == []


def test_a_connection_that_ends_ends_for_every_job_and_the_next_open_is_shared_again(
    rtmp_origin, publisher_factory, hub
):
    publisher = publisher_factory()
    url = publisher.url
    _, a = hub(url)
    _, b = hub(url)
    until(lambda: a.of(Captured) and b.of(Captured), 15)
    publisher.stop()
    until(lambda: a.of(Disconnected) and b.of(Disconnected), 15)
    assert a.of(Disconnected)[0].reason == b.of(Disconnected)[0].reason != "stopped"
    until(lambda: hub.streams.connections == 0, 5)

    publisher_factory(key=url.rsplit("/", 1)[1])
    _, c = hub(url)
    _, d = hub(url)
    until(lambda: c.of(Captured) and d.of(Captured), 15)
    assert hub.streams.connections == 1
    assert players(rtmp_origin, url) == 1


def test_a_reader_of_its_own_refuses_no_one_but_a_stopping_one_takes_no_one(
    rtmp_origin, publisher_factory
):
    url = publisher_factory().url
    owner = Sub()
    reader = StreamReader(url, options=OPTIONS, selector=owner, emit=owner.emit, name="own")
    reader.start()
    try:
        until(lambda: owner.of(Captured), 15)
        assert reader.subscribers == 1
        reader.stop()
        late = Sub()
        tap = make_tap(options=OPTIONS, selector=late, emit=late.emit, name="late")
        assert reader.attach(tap) is False
        assert reader.subscribers == 1
    finally:
        reader.stop()
        assert reader.join(10)
    assert late.events == []


def test_a_restart_ends_the_shared_connection_for_every_job_on_it(
    rtmp_origin, publisher_factory, hub
):
    url = publisher_factory().url
    broken, a = hub(url)
    _, b = hub(url)
    until(lambda: a.of(Captured) and b.of(Captured), 15)
    broken.restart("capture failed 3 times in a row (x); reconnecting")  # as a session does
    until(lambda: a.of(Disconnected) and b.of(Disconnected), 10)
    assert a.of(Disconnected)[0].reason == b.of(Disconnected)[0].reason == (
        "capture failed 3 times in a row (x); reconnecting")
    until(lambda: hub.streams.connections == 0, 5)
