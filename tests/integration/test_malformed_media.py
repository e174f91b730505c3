"""Malformed media against the real capture engine (issue 9, "Malformed media").

A real nginx-rtmp origin, real ffmpeg publishers pushing crafted FLV files, and livesnap's
capture engine in-process: ``CaptureSupervisor`` sessions reporting to a ``JobManager`` over
the memory store, snapshots on local disk. One healthy job captures for the whole module; every
case checks that it kept capturing while the malformed stream was being handled.

The crafted files are made from the cached test clips: cut in the middle of a keyframe tag,
garbage after the FLV header, slice headers of keyframes overwritten, clips of two sizes
chained tag by tag, an AAC-only file. An ffmpeg publisher rebuilds the FLV framing it sends
(it drops a cut tag and refuses a file it cannot parse), so the truncated and garbage files are
also served raw over HTTP-FLV, which hands the bytes to livesnap's own demuxer.

``LIVESNAP_LONG_TESTS=1`` adds the long variant of the keyframe case (60 s without one).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BufferedIOBase
from pathlib import Path
from typing import TypeVar

import pytest
import pytest_asyncio
import simplejpeg
from tests.support.fixtures import ClipFactory
from tests.support.servers import FFMPEG, Publisher, RtmpOrigin, wait_stream_live

from livesnap.capture.session import SessionOptions
from livesnap.capture.source import SourceOptions
from livesnap.capture.supervisor import CaptureSupervisor
from livesnap.clock import SystemClock
from livesnap.errors import StreamNotFound
from livesnap.jobs.manager import JobManager, Policy
from livesnap.jobs.models import (
    FileQuery,
    Job,
    JobSpec,
    JobStatus,
    SnapshotFile,
    StorageTarget,
    StorageType,
    StreamStatus,
    Verdict,
)
from livesnap.jobs.ports import CaptureReport
from livesnap.jobs.retry import Backoff
from livesnap.outputs.router import StorageRouter
from livesnap.store import MemoryStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

RW_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 6.0
# longer than a GOP plus the ~2 x rw_timeout in which a stall is noticed, so that a frozen
# stream is reported as a stall, not as missing keyframes
KEYFRAME_TIMEOUT_S = 8.0
PROBE_TIMEOUT_S = 8.0
GOP_S = 2.0  # the test clips' keyframe interval
INTERVAL_S = 5  # the system template's TimeInterval
# a publisher that stops sending is noticed after about twice rw_timeout (source.py)
STALL_NOTICED_S = 2 * RW_TIMEOUT_S + 3
OPTIONS = SessionOptions(
    source=SourceOptions(rw_timeout_s=RW_TIMEOUT_S, open_timeout_s=OPEN_TIMEOUT_S),
    backoff=Backoff(base_s=0.5, cap_s=2.0),
    outage_window_s=300.0,
    capture_timeout_s=10.0,
    keyframe_timeout_s=KEYFRAME_TIMEOUT_S,
)
ACCOUNT = "acct-malformed"
TARGET = StorageTarget(storage_type=StorageType.LOCAL, endpoint="local", bucket="snaps")
NO_DATA = "no data (I/O error or read timeout)"
LONG_TESTS = os.environ.get("LIVESNAP_LONG_TESTS") == "1"

T = TypeVar("T")


# -- FLV crafting --------------------------------------------------------------------------

FLV_AUDIO, FLV_VIDEO, FLV_SCRIPT = 8, 9, 18
TAG_HEADER = 11


@dataclass(frozen=True)
class Tag:
    """One FLV tag: where it starts in the file, its type, payload size and timestamp (ms)."""

    offset: int
    kind: int
    size: int
    timestamp: int

    @property
    def end(self) -> int:
        """Offset just after the tag and its trailing PreviousTagSize."""
        return self.offset + TAG_HEADER + self.size + 4


def flv_header_size(blob: bytes) -> int:
    """The FLV header plus the first PreviousTagSize (0)."""
    assert blob[:3] == b"FLV", "not an FLV file"
    return int(struct.unpack(">I", blob[5:9])[0]) + 4


def flv_tags(blob: bytes) -> list[Tag]:
    tags, offset = [], flv_header_size(blob)
    while offset + TAG_HEADER <= len(blob):
        size = int.from_bytes(blob[offset + 1 : offset + 4], "big")
        timestamp = int.from_bytes(blob[offset + 4 : offset + 7], "big") | blob[offset + 7] << 24
        tags.append(Tag(offset, blob[offset], size, timestamp))
        offset = tags[-1].end
    return tags


def avc_packet_type(blob: bytes, tag: Tag) -> int:
    """0: sequence header (SPS/PPS), 1: NAL units, 2: end of sequence."""
    return blob[tag.offset + TAG_HEADER + 1]


def is_keyframe(blob: bytes, tag: Tag) -> bool:
    first = blob[tag.offset + TAG_HEADER]
    return tag.kind == FLV_VIDEO and first >> 4 == 1 and avc_packet_type(blob, tag) == 1


def keyframes(blob: bytes) -> list[Tag]:
    return [tag for tag in flv_tags(blob) if is_keyframe(blob, tag)]


def cut_in_last_keyframe(blob: bytes) -> bytes:
    """The file up to the middle of its last keyframe tag."""
    last = keyframes(blob)[-1]
    return blob[: last.offset + TAG_HEADER + last.size // 2]


def garbage_after_header(blob: bytes, size: int = 256 * 1024) -> bytes:
    """A valid FLV header, then seeded random bytes, then the file's own tags."""
    header = flv_header_size(blob)
    return blob[:header] + random.Random(9).randbytes(size) + blob[header:]


def corrupt_idr_slices(blob: bytes, *, every: int, seed: int = 3) -> bytes:
    """Overwrite the slice header of the IDR NAL units in every ``every``-th keyframe."""
    out = bytearray(blob)
    rnd = random.Random(seed)
    for index, tag in enumerate(keyframes(blob)):
        if index % every:
            continue
        pos, end = tag.offset + TAG_HEADER + 5, tag.offset + TAG_HEADER + tag.size
        while pos + 4 <= end:
            length = int(struct.unpack(">I", blob[pos : pos + 4])[0])
            if blob[pos + 4] & 0x1F == 5:  # IDR slice: keep the NAL header byte
                start = pos + 5
                out[start : start + 24] = rnd.randbytes(min(24, end - start))
            pos += 4 + length
    return bytes(out)


def chain(clips: list[bytes]) -> bytes:
    """Clips played one after the other in one FLV: each keeps its own AVC sequence header
    (so the size changes mid-stream), timestamps run on, inner end-of-sequence tags dropped."""
    out = bytearray(clips[0][: flv_header_size(clips[0])])
    shift = 0
    for number, blob in enumerate(clips):
        last = 0
        for tag in flv_tags(blob):
            if tag.kind == FLV_SCRIPT and number:
                continue
            if tag.kind == FLV_VIDEO and avc_packet_type(blob, tag) == 2:
                continue
            raw = bytearray(blob[tag.offset : tag.end])
            stamp = tag.timestamp + shift
            raw[4:7] = (stamp & 0xFFFFFF).to_bytes(3, "big")
            raw[7] = stamp >> 24 & 0xFF
            out += raw
            last = max(last, tag.timestamp)
        shift += last + 40  # one frame at 25 fps after the clip's last tag
    return bytes(out)


def encode_audio_only(path: Path) -> Path:
    """6 s of a sine tone as AAC in FLV: no video stream at all."""
    subprocess.run(
        [FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
         "-f", "lavfi", "-i", "sine=frequency=440:duration=6", "-c:a", "aac", "-b:a", "64k",
         "-f", "flv", str(path)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return path


@dataclass(frozen=True)
class Media:
    """The crafted files, made from 640x360 clips (``good`` is a whole one)."""

    good: Path
    truncated: Path
    garbage: Path
    corrupt_every_keyframe: Path
    corrupt_every_other_keyframe: Path
    switching: Path
    audio_only: Path


@pytest.fixture(scope="module")
def media(make_test_clip: ClipFactory, tmp_path_factory: pytest.TempPathFactory) -> Media:
    folder = tmp_path_factory.mktemp("malformed-media")
    good = make_test_clip("360p", seconds=6)
    base = good.read_bytes()
    ten = make_test_clip("360p", seconds=10).read_bytes()
    eight = make_test_clip("360p", seconds=8).read_bytes()
    small = make_test_clip("360p", seconds=4).read_bytes()
    large = make_test_clip("720p", seconds=4).read_bytes()

    def write(name: str, data: bytes) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return Media(
        good=good,
        truncated=write("truncated.flv", cut_in_last_keyframe(ten)),
        garbage=write("garbage.flv", garbage_after_header(base)),
        corrupt_every_keyframe=write("corrupt-all.flv", corrupt_idr_slices(base, every=1)),
        # keyframes at 0, 2, 4, 6 s, the 1st and 3rd broken: never two broken ones in a row,
        # and the two good ones differ (a gated job would reject a repeated picture)
        corrupt_every_other_keyframe=write("corrupt-half.flv", corrupt_idr_slices(eight, every=2)),
        # 360p, 720p, 360p: looping back to the start keeps the size, so each change
        # in the stream comes with a new sequence header
        switching=write("switching.flv", chain([small, large, small])),
        audio_only=encode_audio_only(folder / "audio.flv"),
    )


# -- publishers and a raw HTTP-FLV origin --------------------------------------------------


class OncePublisher(Publisher):
    """Publishes the file once, in real time: the stream ends where the file does."""

    def command(self) -> list[str]:
        cmd = super().command()
        loop = cmd.index("-stream_loop")
        del cmd[loop : loop + 2]
        return cmd


@dataclass
class Publishers:
    origin: RtmpOrigin
    started: list[Publisher]

    async def start(
        self, clip: Path, *, once: bool = False, wait: bool = True, key: str | None = None
    ) -> Publisher:
        key = key or f"malformed-{uuid.uuid4().hex[:10]}"
        publisher = (OncePublisher if once else Publisher)(clip, self.origin.url(key))
        self.started.append(publisher)
        publisher.start()
        if wait:
            await asyncio.to_thread(wait_stream_live, self.origin, key, publisher=publisher)
        return publisher


@pytest_asyncio.fixture(loop_scope="module")
async def publishers(rtmp_origin: RtmpOrigin) -> AsyncIterator[Publishers]:
    pubs = Publishers(rtmp_origin, [])
    yield pubs
    for publisher in pubs.started:
        if publisher.pid is not None and publisher.alive:
            os.killpg(publisher.pid, signal.SIGCONT)  # a stalled one must see the SIGTERM
        await asyncio.to_thread(publisher.stop)


class FlvOrigin:
    """HTTP-FLV over loopback: each GET gets a file's bytes as they are, or an FLV header
    and then random bytes until the client hangs up."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.bodies: dict[str, bytes] = {}
        self.endless: dict[str, bytes] = {}
        self.requests: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                origin.requests.append(self.path)
                body = origin.bodies.get(self.path)
                header = origin.endless.get(self.path)
                if body is None and header is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "video/x-flv")
                self.end_headers()
                try:
                    if body is not None:
                        self.wfile.write(body)
                    else:
                        origin.send_forever(self.wfile, header or b"")
                except (BrokenPipeError, ConnectionResetError):
                    return  # the reader hung up: what the endless case waits for

            def log_message(self, format: str, *args: object) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = False  # server_close joins the handlers: no socket left open

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def send_forever(self, out: BufferedIOBase, header: bytes) -> None:
        out.write(header)
        rnd = random.Random(11)
        while not self.stop.wait(0.01):
            out.write(rnd.randbytes(16 * 1024))

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/{name}"

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def flv_origin() -> Iterator[FlvOrigin]:
    origin = FlvOrigin()
    yield origin
    origin.close()


# -- the engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One ``stream_changed`` report of a session, as the engine sent it."""

    job_id: str
    status: StreamStatus
    error: str


class Journal:
    """The engine's ``CaptureReports``: the manager, plus a record of every stream change
    (the job row only keeps the latest, and some states last a fraction of a second)."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager
        self.changes: list[Change] = []

    def of(self, job_id: str, since: int = 0) -> list[Change]:
        return [c for c in self.changes[since:] if c.job_id == job_id]

    async def stream_changed(
        self, job_id: str, stream_status: StreamStatus, *, error: str = ""
    ) -> None:
        self.changes.append(Change(job_id, stream_status, error))
        await self._manager.stream_changed(job_id, stream_status, error=error)

    async def snapshot_stored(self, job: Job, report: CaptureReport) -> SnapshotFile | None:
        return await self._manager.snapshot_stored(job, report)

    async def stream_gone(self, job_id: str, reason: str) -> None:
        await self._manager.stream_gone(job_id, reason)

    async def next_sequence(self, job_id: str) -> int:
        return await self._manager.next_sequence(job_id)

    async def effective_interval(self, job_id: str, interval_ms: int) -> None:
        await self._manager.effective_interval(job_id, interval_ms)

    async def storage_changed(self, job_id: str, error: str) -> None:
        await self._manager.storage_changed(job_id, error)

    async def quality_changed(self, job_id: str, verdict: Verdict) -> None:
        await self._manager.quality_changed(job_id, verdict)

    async def ticks_missed(self, job_id: str, count: int) -> None:
        await self._manager.ticks_missed(job_id, count)

    async def check_host(self, name: str, host: str) -> None:
        await self._manager.check_host(name, host)


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float, what: str) -> T:
    """Poll ``probe`` until it returns something other than None (a bounded liveness wait)."""
    deadline = time.monotonic() + within
    while True:
        found = await probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.1)


async def until(check: Callable[[], T | None], within: float, what: str) -> T:
    """``eventually`` for a plain (non-async) check."""

    async def probe() -> T | None:
        return check()

    return await eventually(probe, within, what)


def reader_threads(job_id: str) -> list[threading.Thread]:
    """Reader threads of a job that are still running (named after the job, see session.py)."""
    name = f"livesnap-reader-reader-{job_id[:8]}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


@dataclass
class Engine:
    manager: JobManager
    supervisor: CaptureSupervisor
    journal: Journal
    storage: Path
    submitted: list[str]

    async def submit(self, url: str, name: str) -> str:
        spec = JobSpec(
            name=name,
            template_id="system",
            stream_url=url,
            stream_type="rtmp",
            storage=TARGET,
            callback_url=None,
        )
        job_id = (await self.manager.submit_job(ACCOUNT, spec)).id
        self.submitted.append(job_id)
        return job_id

    async def job(self, job_id: str) -> Job:
        return await self.manager.get_job(ACCOUNT, job_id)

    async def wait(
        self, job_id: str, check: Callable[[Job], bool], within: float, what: str
    ) -> Job:
        last: list[Job] = []

        async def probe() -> Job | None:
            job = await self.job(job_id)
            last[:] = [job]
            return job if check(job) else None

        try:
            return await eventually(probe, within, what)
        except AssertionError as exc:
            job = last[0]
            raise AssertionError(
                f"{exc}; job is {job.status.value}/{job.stream_status.value}, "
                f"LastError={job.last_error!r}, snapshots={job.snapshot_count}, "
                f"reports={self.journal.of(job_id)}"
            ) from None

    async def files(self, job_id: str) -> list[SnapshotFile]:
        now_ms = int(time.time() * 1000)
        query = FileQuery(job_id=job_id, start_ms=0, end_ms=now_ms + 3_600_000, limit=1000)
        return await self.manager.list_files(ACCOUNT, query)

    def jpeg_size(self, file: SnapshotFile) -> tuple[int, int]:
        """(width, height) of the stored JPEG, read back from disk and fully decoded."""
        data = (self.storage / ACCOUNT / TARGET.endpoint / TARGET.bucket / file.object_key
                ).read_bytes()
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        assert simplejpeg.decode_jpeg(data).shape == (height, width, 3)
        return width, height

    async def reader_gone(self, job_id: str, within: float) -> None:
        await until(
            lambda: True if not reader_threads(job_id) else None,
            within,
            f"reader thread of {job_id} ended",
        )

    async def stop(self, job_id: str) -> None:
        await self.manager.command(ACCOUNT, job_id, "stop")


def started_live(job: Job) -> bool:
    return job.status is JobStatus.STARTED and job.stream_status is StreamStatus.LIVE


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Engine]:
    root = tmp_path_factory.mktemp("engine")
    clock = SystemClock()
    # jobs whose probe fails are marked waiting, not probed again: each test here watches
    # one probe's verdict and the reader it leaves (waiting is tested in test_waiting.py)
    manager = JobManager(store=MemoryStore(), clock=clock, policy=Policy(watch_waiting=False))
    journal = Journal(manager)
    router = StorageRouter(root=root / "storage", spool_dir=root / "spool")
    supervisor = CaptureSupervisor(
        reports=journal, sinks=router, clock=clock, options=OPTIONS, probe_timeout_s=PROBE_TIMEOUT_S
    )
    manager.attach_engine(supervisor)
    await manager.open()
    try:
        engine = Engine(manager, supervisor, journal, root / "storage", [])
        yield engine
    finally:
        await manager.close(RW_TIMEOUT_S + 5)
        await router.close(5)
    assert not [t for job_id in engine.submitted for t in reader_threads(job_id)]


@pytest_asyncio.fixture(loop_scope="module")
async def jobs(engine: Engine) -> AsyncIterator[list[str]]:
    """Jobs a test submits; stopped at its end so that the next test starts clean."""
    submitted: list[str] = []
    yield submitted
    for job_id in submitted:
        await engine.stop(job_id)
        await engine.reader_gone(job_id, RW_TIMEOUT_S + 2)


# -- the healthy neighbour -----------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    snapshots: int
    reports: int


@dataclass
class Healthy:
    engine: Engine
    job_id: str

    async def mark(self) -> Mark:
        job = await self.engine.job(self.job_id)
        return Mark(job.snapshot_count, len(self.engine.journal.changes))

    async def assert_unaffected(self, since: Mark) -> None:
        """Still live, no error, and capturing: at least one new snapshot since ``since``."""
        job = await self.engine.wait(
            self.job_id,
            lambda j: j.snapshot_count > since.snapshots,
            INTERVAL_S + GOP_S + 3,
            "the healthy job stored a new snapshot",
        )
        assert started_live(job), job
        assert job.last_error == ""
        assert self.engine.journal.of(self.job_id, since.reports) == []
        assert reader_threads(self.job_id), "the healthy job's reader ended"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def healthy(
    engine: Engine, rtmp_origin: RtmpOrigin, make_test_clip: ClipFactory
) -> AsyncIterator[Healthy]:
    key = f"healthy-{uuid.uuid4().hex[:8]}"
    # five different keyframes a loop: a 5 s tick never meets the picture it took last time
    publisher = Publisher(make_test_clip("360p", seconds=10), rtmp_origin.url(key))
    publisher.start()
    try:
        await asyncio.to_thread(wait_stream_live, rtmp_origin, key, publisher=publisher)
        job_id = await engine.submit(publisher.url, "healthy")
        await engine.wait(
            job_id,
            lambda j: started_live(j) and j.snapshot_count >= 1,
            PROBE_TIMEOUT_S + GOP_S + 5,
            "healthy job capturing",
        )
        yield Healthy(engine, job_id)
        await engine.stop(job_id)
    finally:
        await asyncio.to_thread(publisher.stop)


# -- 1. truncated FLV ------------------------------------------------------------------------


async def test_truncated_flv_from_a_publisher_ends_the_stream_and_recovers(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.truncated, once=True)
    job_id = await engine.submit(publisher.url, "truncated")
    jobs.append(job_id)
    await engine.wait(
        job_id,
        lambda j: started_live(j) and j.snapshot_count >= 1,
        PROBE_TIMEOUT_S + GOP_S + 3,
        "live and capturing",
    )

    # ffmpeg sends the file up to the cut tag, drops the partial tag and ends the stream
    await until(
        lambda: None if publisher.alive else True,
        10 + 5,
        "the publisher reached the cut",
    )
    job = await engine.wait(
        job_id,
        lambda j: j.stream_status is StreamStatus.RECONNECTING,
        STALL_NOTICED_S,
        "reconnecting after the stream ended",
    )
    assert job.status is JobStatus.STARTED
    assert job.status_reason == "stream live at submit"
    assert job.last_error == NO_DATA
    files = await engine.files(job_id)
    assert files and {engine.jpeg_size(f) for f in files} == {(640, 360)}
    assert not [c for c in engine.journal.of(job_id) if c.error.startswith("capture failed")]

    # the publisher comes back with a whole file: live again, capturing, error cleared
    await publishers.start(media.good, key=publisher.url.rsplit("/", 1)[1])
    count = len(files)
    job = await engine.wait(
        job_id,
        lambda j: started_live(j) and j.snapshot_count > count,
        RW_TIMEOUT_S + 2 + INTERVAL_S + GOP_S + 5,
        "live again",
    )
    assert job.last_error == ""
    await healthy.assert_unaffected(mark)


async def test_truncated_flv_served_raw_reaches_the_demuxer_and_ends_cleanly(
    engine: Engine, healthy: Healthy, media: Media, flv_origin: FlvOrigin, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    flv_origin.bodies["/truncated.flv"] = media.truncated.read_bytes()
    job_id = await engine.submit(flv_origin.url("truncated.flv"), "truncated-raw")
    jobs.append(job_id)

    # Each connection gets the whole file at once, so the job goes live, takes the tick's
    # keyframe, and meets the cut tag at the end of the data: FFmpeg reports the connection
    # closing inside a tag as an I/O error, the session reconnects, and so on.
    job = await engine.wait(
        job_id,
        lambda j: j.snapshot_count >= 1,
        PROBE_TIMEOUT_S + 3,
        "a snapshot from the served file",
    )
    await until(lambda: len(flv_origin.requests) >= 3 or None, 10, "reconnects")
    assert job.status is JobStatus.STARTED
    changes = engine.journal.of(job_id)
    assert Change(job_id, StreamStatus.RECONNECTING, NO_DATA) in changes, changes
    assert {c.error for c in changes} == {"", NO_DATA}, changes
    assert {engine.jpeg_size(f) for f in await engine.files(job_id)} == {(640, 360)}

    await engine.stop(job_id)
    await engine.reader_gone(job_id, RW_TIMEOUT_S + 1)
    job = await engine.job(job_id)
    assert (job.status, job.stream_status) == (JobStatus.PAUSED, StreamStatus.OFFLINE)
    await healthy.assert_unaffected(mark)


# -- 2. garbage after a valid FLV header ------------------------------------------------------


async def test_garbage_after_header_is_never_published(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.garbage, wait=False)
    await until(lambda: None if publisher.alive else True, 15, "ffmpeg gave up on the file")
    key = publisher.url.rsplit("/", 1)[1]
    status = publishers.origin.stream_status(key)
    assert status is None or not status.publishing, publisher.errors

    job_id = await engine.submit(publisher.url, "garbage")
    jobs.append(job_id)
    job = await engine.wait(
        job_id, lambda j: j.last_error != "", PROBE_TIMEOUT_S + 3, "the submit probe's verdict"
    )
    assert job.status is JobStatus.INIT
    assert job.stream_status is StreamStatus.WAITING
    assert job.last_error == f"No such stream ({NO_DATA})."
    assert not engine.supervisor.is_running(job_id)
    await engine.reader_gone(job_id, 1)
    await healthy.assert_unaffected(mark)


async def test_endless_garbage_after_header_fails_the_open_in_time(
    engine: Engine, healthy: Healthy, media: Media, flv_origin: FlvOrigin, jobs: list[str]
) -> None:
    # FFmpeg's FLV demuxer resynchronises through garbage for as long as bytes keep coming,
    # and rw_timeout only ends silent reads: only the open deadline ends this.
    mark = await healthy.mark()
    header = media.good.read_bytes()[: flv_header_size(media.good.read_bytes())]
    flv_origin.endless["/garbage.flv"] = header
    job_id = await engine.submit(flv_origin.url("garbage.flv"), "garbage-raw")
    jobs.append(job_id)

    job = await engine.wait(
        job_id, lambda j: j.last_error != "", PROBE_TIMEOUT_S + 3, "the submit probe's verdict"
    )
    assert job.status is JobStatus.INIT
    assert job.stream_status is StreamStatus.WAITING
    assert job.last_error.startswith(
        f"No such stream (no playable stream within {OPEN_TIMEOUT_S:g} s"
    ), job.last_error
    await engine.reader_gone(job_id, 2)
    assert not engine.supervisor.is_running(job_id)
    await healthy.assert_unaffected(mark)


# -- 3. corrupted NAL units -------------------------------------------------------------------


async def test_corrupt_keyframes_report_and_reconnect_with_the_reason(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.corrupt_every_keyframe)
    job_id = await engine.submit(publisher.url, "corrupt-all")
    jobs.append(job_id)

    restart = "capture failed 3 times in a row (invalid data); reconnecting"

    async def reconnected() -> bool | None:
        changes = engine.journal.of(job_id)
        reconnect = Change(job_id, StreamStatus.RECONNECTING, restart)
        if reconnect not in changes:
            return None
        return True if changes[changes.index(reconnect) + 1 :] else None

    await eventually(
        reconnected,
        PROBE_TIMEOUT_S + 4 * GOP_S + STALL_NOTICED_S,
        "three failed captures, a reconnect, and the next connection",
    )
    changes = engine.journal.of(job_id)
    assert Change(job_id, StreamStatus.LIVE, "capture failed: invalid data") in changes
    assert {c.error for c in changes} <= {"", "capture failed: invalid data", restart}
    job = await engine.job(job_id)
    assert job.status is JobStatus.STARTED
    assert job.snapshot_count == 0
    assert await engine.files(job_id) == []
    await healthy.assert_unaffected(mark)


async def test_some_corrupt_keyframes_are_reported_and_capture_goes_on(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.corrupt_every_other_keyframe)
    job_id = await engine.submit(publisher.url, "corrupt-half")
    jobs.append(job_id)

    # A tick takes the first keyframe after it. Ticks are 5 s apart and keyframes 2 s, so
    # within three ticks one lands on a broken keyframe; the schedule then tries the tick's
    # next keyframe, which is whole (with the quality gate off, as here by default).
    async def failed_once() -> bool | None:
        errors = {c.error for c in engine.journal.of(job_id)}
        return True if "capture failed: invalid data" in errors else None

    await eventually(failed_once, PROBE_TIMEOUT_S + 3 * INTERVAL_S + GOP_S + 3, "a broken keyframe")
    failed_at = (await engine.job(job_id)).snapshot_count
    job = await engine.wait(
        job_id,
        lambda j: j.snapshot_count > failed_at,
        INTERVAL_S + 2 * GOP_S + 3,
        "a snapshot after the broken keyframe",
    )
    assert started_live(job)
    assert {engine.jpeg_size(f) for f in await engine.files(job_id)} == {(640, 360)}
    changes = engine.journal.of(job_id)
    assert {c.error for c in changes} == {"", "capture failed: invalid data"}
    assert {c.status for c in changes} == {StreamStatus.CONNECTING, StreamStatus.LIVE}
    await healthy.assert_unaffected(mark)


# -- 4. resolution change mid-stream ----------------------------------------------------------


async def test_resolution_switch_mid_stream_gives_snapshots_of_both_sizes(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.switching)
    job_id = await engine.submit(publisher.url, "switching")
    jobs.append(job_id)
    await engine.wait(job_id, started_live, PROBE_TIMEOUT_S + 3, "live")

    # The file is 4 s at 640x360, 4 s at 1280x720, 4 s at 640x360, looped. "capture" takes
    # the next keyframe (one every 2 s), so one loop's worth of them covers both sizes.
    sizes: dict[tuple[int, int], SnapshotFile] = {}
    deadline = time.monotonic() + 2 * 12 + 5
    while len(sizes) < 2 and time.monotonic() < deadline:
        file = await engine.manager.command(ACCOUNT, job_id, "capture")
        assert file is not None
        sizes[(file.width, file.height)] = file
    assert set(sizes) == {(640, 360), (1280, 720)}
    for size, file in sizes.items():
        assert engine.jpeg_size(file) == size
    job = await engine.job(job_id)
    assert started_live(job) and job.last_error == ""
    assert engine.journal.of(job_id) == [
        Change(job_id, StreamStatus.CONNECTING, ""),
        Change(job_id, StreamStatus.LIVE, ""),
    ]
    await healthy.assert_unaffected(mark)


# -- 5. no keyframes for a while ----------------------------------------------------------------


@pytest.mark.parametrize("gap_s", [15, *([60] if LONG_TESTS else [])], ids=lambda gap: f"{gap}s")
async def test_no_keyframes_for_a_while(
    gap_s: int,
    engine: Engine,
    healthy: Healthy,
    make_test_clip: ClipFactory,
    publishers: Publishers,
    jobs: list[str],
) -> None:
    # Keyframes at 0, 2 and 4 s, then none for gap_s seconds; looped. The quick variant's gap
    # is longer than everything it checks; LIVESNAP_LONG_TESTS=1 adds the 60 s gap.
    clip = make_test_clip("keyframe_gap", seconds=4 + gap_s)
    mark = await healthy.mark()
    publisher = await publishers.start(clip)
    gap_starts = time.monotonic() + 4  # about: the publisher is live within a fraction of 1 s
    watched = await engine.submit(publisher.url, "gap-watched")
    stopped = await engine.submit(publisher.url, "gap-stopped")
    jobs.extend([watched, stopped])
    for job_id in (watched, stopped):
        await engine.wait(
            job_id,
            lambda j: started_live(j) and j.snapshot_count >= 1,
            PROBE_TIMEOUT_S,
            "live and capturing before the gap",
        )

    # Packets keep coming, so the stream is live and nothing times out; LastError says why
    # there are no snapshots.
    job = await engine.wait(
        watched,
        lambda j: j.last_error.startswith("no keyframe for "),
        4 + KEYFRAME_TIMEOUT_S + OPTIONS.keyframe_check_s + 3,
        "the missing keyframes reported",
    )
    assert started_live(job)
    seconds = int(job.last_error.removeprefix("no keyframe for ").removesuffix(" s"))
    assert seconds >= KEYFRAME_TIMEOUT_S
    in_gap = job.snapshot_count

    # Stopping a job in the gap ends its reader at once, not at the next keyframe.
    await engine.stop(stopped)
    await engine.reader_gone(stopped, RW_TIMEOUT_S + 1)
    assert time.monotonic() < gap_starts + gap_s, "the gap ended too early to tell"
    job = await engine.job(stopped)
    assert (job.status, job.stream_status) == (JobStatus.PAUSED, StreamStatus.OFFLINE)

    # The next keyframe ends the gap: the watched job captures again, never having dropped.
    job = await engine.wait(
        watched,
        lambda j: j.snapshot_count > in_gap,
        gap_starts + gap_s - time.monotonic() + GOP_S + INTERVAL_S + 5,
        "a snapshot after the gap",
    )
    assert started_live(job)
    statuses = {c.status for c in engine.journal.of(watched)}
    assert statuses == {StreamStatus.CONNECTING, StreamStatus.LIVE}
    await healthy.assert_unaffected(mark)


# -- 6. audio only ----------------------------------------------------------------------------


async def test_audio_only_stream_reports_no_video_and_keeps_nothing_running(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.audio_only)
    job_id = await engine.submit(publisher.url, "audio-only")
    jobs.append(job_id)

    job = await engine.wait(
        job_id, lambda j: j.last_error != "", PROBE_TIMEOUT_S + 3, "the submit probe's verdict"
    )
    assert job.status is JobStatus.INIT
    assert job.stream_status is StreamStatus.WAITING
    assert job.last_error == "No such stream (no video stream)."
    assert not engine.supervisor.is_running(job_id)
    await engine.reader_gone(job_id, 1)

    with pytest.raises(StreamNotFound, match=r"no video stream"):
        await engine.manager.command(ACCOUNT, job_id, "start")
    assert not engine.supervisor.is_running(job_id)
    await engine.reader_gone(job_id, 1)
    # nothing keeps polling the stream: nginx has only the publisher on it
    key = publisher.url.rsplit("/", 1)[1]

    async def only_publisher() -> bool | None:
        status = await asyncio.to_thread(publishers.origin.stream_status, key)
        return True if status is not None and status.nclients == 1 else None

    await eventually(only_publisher, 5, "no player left on the audio-only stream")
    await healthy.assert_unaffected(mark)


# -- 7. an origin that stalls mid-stream ------------------------------------------------------


async def test_stalled_origin_reconnects_after_rw_timeout_and_comes_back(
    engine: Engine, healthy: Healthy, media: Media, publishers: Publishers, jobs: list[str]
) -> None:
    mark = await healthy.mark()
    publisher = await publishers.start(media.good)
    job_id = await engine.submit(publisher.url, "stalling")
    jobs.append(job_id)
    job = await engine.wait(
        job_id,
        lambda j: started_live(j) and j.snapshot_count >= 1,
        PROBE_TIMEOUT_S + GOP_S + 3,
        "live and capturing",
    )
    assert publisher.pid is not None

    # The publisher freezes: nginx keeps every connection open and sends nothing.
    os.killpg(publisher.pid, signal.SIGSTOP)
    try:
        frozen = time.monotonic()
        job = await engine.wait(
            job_id,
            lambda j: j.stream_status is StreamStatus.RECONNECTING,
            STALL_NOTICED_S,
            "reconnecting after rw_timeout",
        )
        assert time.monotonic() - frozen >= RW_TIMEOUT_S
        assert job.status is JobStatus.STARTED
        assert job.last_error == NO_DATA
        count = job.snapshot_count
        await asyncio.sleep(RW_TIMEOUT_S)  # a reconnect attempt meets the frozen stream too
    finally:
        os.killpg(publisher.pid, signal.SIGCONT)

    job = await engine.wait(
        job_id,
        lambda j: started_live(j) and j.snapshot_count > count,
        RW_TIMEOUT_S + 2 + GOP_S + INTERVAL_S + 5,
        "live again",
    )
    assert job.last_error == ""
    statuses = [c.status for c in engine.journal.of(job_id)]
    assert statuses == [
        StreamStatus.CONNECTING,
        StreamStatus.LIVE,
        StreamStatus.RECONNECTING,
        StreamStatus.LIVE,
    ]
    await healthy.assert_unaffected(mark)


# -- a probe given up by its caller ------------------------------------------------------------


async def test_a_probe_whose_caller_is_cancelled_stays_a_cancellation(
    engine: Engine, rtmp_origin: RtmpOrigin, jobs: list[str]
) -> None:
    """A shard cancels a start that took longer than its call timeout: the cancellation must
    reach the caller as one (it used to come back as StreamNotFound, an error nobody read),
    and the session it started is stopped."""
    url = rtmp_origin.url(f"nobody-{uuid.uuid4().hex[:8]}")  # no publisher: the play waits
    job_id = await engine.submit(url, "cancelled-probe")
    jobs.append(job_id)
    job = await engine.job(job_id)
    probe = asyncio.create_task(engine.supervisor.start(job, probe=True))
    await asyncio.sleep(1.0)
    assert not probe.done()  # still waiting for video
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    await until(lambda: True if not engine.supervisor.is_running(job_id) else None,
                RW_TIMEOUT_S + 5, "the probing session stopped")
