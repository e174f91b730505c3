"""livesnap.capture.source.StreamReader against a real nginx-rtmp origin.

The origin is Debian's nginx + libnginx-mod-rtmp (infra.md §1), fed by ffmpeg
looping a small pre-encoded H.264 clip *with B-frames* (so a keyframe only
comes out of an undrained decoder two GOPs late). GOP = 50 frames at 25 fps,
so a keyframe every 2 s. Misbehaving origins are plain Python sockets.

Self-contained on purpose (no tests/support helpers): every process started
here is stopped in its fixture's teardown.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import numpy as np
import pytest
import simplejpeg
from tests.support.servers import RtmpOrigin
from tests.support.tls import write_certificates

from livesnap.capture.source import (
    Captured,
    CaptureFailed,
    Connected,
    Disconnected,
    ReaderEvent,
    SourceOptions,
    StreamReader,
)
from livesnap.jobs.urls import parse_networks

pytestmark = pytest.mark.integration

RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")
RW_TIMEOUT_S = 2.0
OPTIONS = SourceOptions(rw_timeout_s=RW_TIMEOUT_S)
GOP_S = 2.0
WIDTH, HEIGHT = 640, 360

E = TypeVar("E", bound=ReaderEvent)


# -- helpers -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Recorder:
    """The reader's ``emit``: keeps events with their arrival time."""

    def __init__(self) -> None:
        self.events: list[tuple[float, ReaderEvent]] = []
        self._lock = threading.Lock()

    def __call__(self, event: ReaderEvent) -> None:
        with self._lock:
            self.events.append((time.monotonic(), event))

    def of(self, kind: type[E]) -> list[E]:
        with self._lock:
            return [e for _, e in self.events if isinstance(e, kind)]

    def wait_for(self, kind: type[ReaderEvent], count: int = 1, timeout: float = 10.0) -> bool:
        return wait_until(lambda: len(self.of(kind)) >= count, timeout)


class Selector:
    """Always answers ``answer`` and counts the calls."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def on_keyframe(self, wall_time: float) -> bool:
        self.calls += 1
        return self.answer


@dataclass
class Run:
    reader: StreamReader
    recorder: Recorder
    selector: Selector


@pytest.fixture
def run_reader() -> Iterator[Callable[..., Run]]:
    """Start readers; every one is stopped and joined at teardown."""
    runs: list[Run] = []

    def start(
        url: str,
        *,
        answer: bool = True,
        emit: Callable[..., None] | None = None,
        options: SourceOptions = OPTIONS,
    ) -> Run:
        recorder, selector = Recorder(), Selector(answer)
        reader = StreamReader(
            url, options=options, selector=selector, emit=emit or recorder, name="test"
        )
        reader.start()
        runs.append(Run(reader, recorder, selector))
        return runs[-1]

    yield start
    for run in runs:
        run.reader.stop()
    for run in runs:
        assert run.reader.join(2 * RW_TIMEOUT_S + 2), "reader thread did not end"


def assert_disconnected_once_and_last(recorder: Recorder) -> Disconnected:
    kinds = [type(e) for _, e in recorder.events]
    assert kinds.count(Disconnected) == 1, kinds
    assert kinds[-1] is Disconnected, kinds
    last = recorder.events[-1][1]
    assert isinstance(last, Disconnected)
    return last


# -- origins -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> None:
    missing = [t for t in ("nginx", "ffmpeg") if shutil.which(t) is None]
    if missing or not RTMP_MODULE.exists():
        # scripts/test.sh installs these; a missing tool is a broken setup, not a reason to skip
        pytest.fail(f"needs nginx + libnginx-mod-rtmp + ffmpeg (missing: {missing or RTMP_MODULE})")


@pytest.fixture(scope="module")
def origin(tools: None) -> Iterator[RtmpOrigin]:
    with RtmpOrigin() as rtmp:
        yield rtmp


def encode_clip(path: Path, width: int, height: int) -> Path:
    """6 s of x264 High with B-frames, GOP 2 s (1.7 s to encode at 640x360)."""
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=25", "-t", "6"),
            *("-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p", str(path)),
        ],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def clip(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return encode_clip(tmp_path_factory.mktemp("clip") / "clip.flv", WIDTH, HEIGHT)


def publish(clip: Path, url: str) -> subprocess.Popen[bytes]:
    """Loop ``clip`` into the origin in real time (-c copy: ~0.015 core)."""
    proc = subprocess.Popen(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1"),
            *("-i", str(clip), "-c", "copy", "-f", "flv", url),
        ],
        stdin=subprocess.DEVNULL,
    )
    if not wait_until(lambda: _playable(url), 15, step=0.2):
        stop_process(proc)
        pytest.fail(f"publisher never became playable at {url}")
    return proc


def _playable(url: str) -> bool:
    opts = {"rw_timeout": "1000000", "analyzeduration": "0", "probesize": "32768"}
    try:
        with av.open(url, container_options=opts):
            return True
    except av.error.FFmpegError:
        return False


@pytest.fixture(scope="module")
def live_url(origin: RtmpOrigin, clip: Path) -> Iterator[str]:
    url = origin.url("test")
    proc = publish(clip, url)
    yield url
    stop_process(proc)


@pytest.fixture
def serve_socket() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A TCP server on a free port whose connections are handled by ``handler``."""
    servers: list[socket.socket] = []
    stop = threading.Event()

    def start(handler: Callable[[socket.socket], None]) -> int:
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.1)
        servers.append(server)

        def accept_loop() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=_handle, args=(conn, handler), daemon=True).start()

        threading.Thread(target=accept_loop, daemon=True).start()
        port: int = server.getsockname()[1]
        return port

    def _handle(conn: socket.socket, handler: Callable[[socket.socket], None]) -> None:
        with conn:
            try:
                handler(conn)
                stop.wait(2 * RW_TIMEOUT_S + 5)  # hold the connection open, say nothing
            except OSError:
                pass

    yield start
    stop.set()
    for server in servers:
        server.close()


def say_nothing(conn: socket.socket) -> None:
    """Accept the TCP connection, never answer the RTMP handshake."""


def say_garbage(conn: socket.socket) -> None:
    """Answer the handshake with a plausible version byte, then noise."""
    conn.recv(4096)
    conn.sendall(b"\x03" + os.urandom(1536 * 2) + b"\xff" * 4096)


# -- live stream -------------------------------------------------------------


def test_captures_each_keyframe_as_a_jpeg_right_away(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    run = run_reader(live_url, answer=True)

    assert run.recorder.wait_for(Captured, count=1, timeout=GOP_S + 5)
    after_first = run.reader.stats
    assert run.recorder.wait_for(Captured, count=3, timeout=2 * GOP_S + 3)
    before_stop = run.reader.stats
    run.reader.stop()
    assert run.reader.join(RW_TIMEOUT_S + 1)

    first = run.recorder.events[0][1]
    assert isinstance(first, Connected)
    assert (first.codec, first.width, first.height) == ("h264", WIDTH, HEIGHT)
    # from the start of the connect to the first packet: what a per-tick job's lead learns
    assert 0 < first.opened_s <= GOP_S + 5
    frames = [e.frame for e in run.recorder.of(Captured)]
    for frame in frames:
        assert (frame.image.width, frame.image.height) == (WIDTH, HEIGHT)
        assert simplejpeg.decode_jpeg(frame.image.data).shape == (HEIGHT, WIDTH, 3)
        # The drain trick: the keyframe leaves the decoder at once, not 2 GOPs late.
        assert 0 <= frame.encoded_wall - frame.arrival_wall < 1.0
    with av.open(io.BytesIO(frames[-1].image.data)) as jpeg:
        decoded = next(jpeg.decode(video=0))
        assert (decoded.width, decoded.height) == (WIDTH, HEIGHT)
    # Keyframes only: one capture per GOP, in wall time and in stream time.
    # (The first keyframe came out of the probe buffer, so its arrival is the
    # end of av.open rather than its own arrival: leave it out.)
    for earlier, later in itertools.pairwise(frames[1:]):
        assert later.arrival_wall - earlier.arrival_wall == pytest.approx(GOP_S, abs=0.5)
        assert earlier.stream_time is not None and later.stream_time is not None
        assert later.stream_time - earlier.stream_time == pytest.approx(GOP_S, abs=0.1)
    assert not run.recorder.of(CaptureFailed)
    assert before_stop.decoded == before_stop.captured == before_stop.keyframes
    assert_disconnected_once_and_last(run.recorder)
    # Python sees keyframes only: the demuxer discards the rest. Only packets
    # buffered while probing (32 KB) may be non-key, and none after that.
    assert after_first.packets - after_first.keyframes < 20
    assert before_stop.keyframes - after_first.keyframes >= 2
    assert (
        before_stop.packets - before_stop.keyframes == after_first.packets - after_first.keyframes
    )


def jpeg_luma(data: bytes) -> np.ndarray:
    """The JPEG's Y plane, as FFmpeg's mjpeg decoder gives it (full range)."""
    with av.open(io.BytesIO(data)) as jpeg:
        plane = next(jpeg.decode(video=0)).planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        return rows[:, : plane.width].copy()


def test_captured_jpeg_is_full_range(live_url: str, run_reader: Callable[..., Run]) -> None:
    # The clip is limited-range yuv420p and testsrc2's black is luma 15 or 16 in every
    # frame. In the JPEG it must be expanded to about 0, not kept as a washed-out grey.
    run = run_reader(live_url, answer=True)

    assert run.recorder.wait_for(Captured, count=1, timeout=GOP_S + 5)

    luma = jpeg_luma(run.recorder.of(Captured)[0].frame.image.data)
    assert int(luma.min()) <= 4


def test_skip_loop_filter_option_still_captures(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    options = SourceOptions(rw_timeout_s=RW_TIMEOUT_S, skip_loop_filter=True)
    run = run_reader(live_url, answer=True, options=options)

    assert run.recorder.wait_for(Captured, count=2, timeout=2 * GOP_S + 5)

    for captured in run.recorder.of(Captured):
        image = captured.frame.image
        assert (image.width, image.height) == (WIDTH, HEIGHT)
        assert jpeg_luma(image.data).shape == (HEIGHT, WIDTH)
    assert not run.recorder.of(CaptureFailed)


def test_a_scheme_in_capitals_reads_the_stream(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    # URL schemes are case-insensitive and the API accepts RTMP://; FFmpeg knows only rtmp
    run = run_reader("RTMP" + live_url.removeprefix("rtmp"), answer=True)
    assert run.recorder.wait_for(Captured, timeout=2 * GOP_S + 5), run.recorder.events


def named(url: str, name: str) -> str:
    """``url`` with its loopback address replaced by the host name ``name``."""
    return url.replace("127.0.0.1", name, 1)


def test_ffmpeg_connects_to_the_address_the_check_resolved(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    # FFmpeg cannot resolve a .invalid name itself: it captures only by the checked address
    # (the name's first address refuses the connection: the next one is tried)
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.2", "127.0.0.1"]

    options = dataclasses.replace(OPTIONS, resolve=resolve)
    run = run_reader(named(live_url, "camera.invalid"), answer=True, options=options)
    assert run.recorder.wait_for(Captured, timeout=2 * GOP_S + 5), run.recorder.events
    assert asked == ["camera.invalid"]


def test_http_flv_by_checked_address_still_names_its_host(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
) -> None:
    heads: list[bytes] = []

    def answer_404(conn: socket.socket) -> None:
        heads.append(conn.recv(4096))
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    port = serve_socket(answer_404)
    options = dataclasses.replace(OPTIONS, resolve=lambda host, port: ["127.0.0.1"])
    run = run_reader(f"http://cdn.invalid:{port}/live/cam.flv", options=options)
    assert run.recorder.wait_for(Disconnected, timeout=10), run.recorder.events
    assert heads and heads[0].startswith(b"GET /live/cam.flv HTTP/1.1\r\n"), heads
    assert f"\r\nHost: cdn.invalid:{port}\r\n".encode() in heads[0]
    assert heads[0].lower().count(b"\r\nhost:") == 1  # FFmpeg added no Host of its own


def test_a_name_that_resolves_into_a_blocked_network_is_never_opened(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    options = dataclasses.replace(OPTIONS, resolve=lambda host, port: ["127.0.0.1"],
                                  blocked_networks=parse_networks(["127.0.0.0/8"]))
    run = run_reader(named(live_url, "camera.invalid"), answer=True, options=options)
    assert run.recorder.wait_for(Disconnected, timeout=5), run.recorder.events
    reason = assert_disconnected_once_and_last(run.recorder).reason
    assert "camera.invalid resolves into a blocked network (127.0.0.1)" in reason
    assert not run.recorder.of(Connected)


def test_selector_false_decodes_nothing(live_url: str, run_reader: Callable[..., Run]) -> None:
    run = run_reader(live_url, answer=False)

    assert wait_until(lambda: run.selector.calls >= 2, 2 * GOP_S + 5)
    run.reader.stop()
    assert run.reader.join(RW_TIMEOUT_S + 1)

    stats = run.reader.stats
    assert stats.keyframes == run.selector.calls >= 2
    assert stats.decoded == 0
    assert not run.recorder.of(Captured)
    assert not run.recorder.of(CaptureFailed)


def test_request_capture_takes_the_next_keyframe_once(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    run = run_reader(live_url, answer=False)
    assert run.recorder.wait_for(Connected, timeout=GOP_S + 5)

    run.reader.request_capture()
    assert run.recorder.wait_for(Captured, timeout=GOP_S + 1)
    calls = run.selector.calls
    assert wait_until(lambda: run.selector.calls >= calls + 1, GOP_S + 1)

    assert len(run.recorder.of(Captured)) == 1
    assert run.reader.stats.decoded == 1


def test_stop_ends_the_thread_with_one_last_disconnected(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    run = run_reader(live_url, answer=False)
    assert run.recorder.wait_for(Connected, timeout=GOP_S + 5)

    stopped_at = time.monotonic()
    run.reader.stop()
    assert run.reader.join(RW_TIMEOUT_S + 1)

    assert time.monotonic() - stopped_at < RW_TIMEOUT_S + 1
    assert assert_disconnected_once_and_last(run.recorder) == Disconnected("stopped", True)
    assert not run.recorder.of(CaptureFailed)


def test_failing_owner_callback_does_not_kill_the_reader(
    live_url: str, run_reader: Callable[..., Run]
) -> None:
    recorder = Recorder()

    def flaky_emit(event: ReaderEvent) -> None:
        recorder(event)
        if isinstance(event, Connected):
            raise RuntimeError("owner bug")

    run = run_reader(live_url, answer=True, emit=flaky_emit)
    assert recorder.wait_for(Captured, timeout=GOP_S + 5)
    run.reader.stop()
    assert run.reader.join(RW_TIMEOUT_S + 1)
    assert assert_disconnected_once_and_last(recorder).reason == "stopped"


def test_publisher_killed_ends_the_reader(
    origin: RtmpOrigin, clip: Path, run_reader: Callable[..., Run]
) -> None:
    url = origin.url("dying")
    publisher = publish(clip, url)
    try:
        run = run_reader(url, answer=False)
        assert run.recorder.wait_for(Connected, timeout=GOP_S + 5)
        publisher.kill()
        killed_at = time.monotonic()
        # nginx keeps the play session open, so rw_timeout has to notice; the
        # RTMP layer takes about twice rw_timeout mid-stream (measured 2.1x).
        assert run.recorder.wait_for(Disconnected, timeout=2 * RW_TIMEOUT_S + 3)
    finally:
        stop_process(publisher)

    when, last = run.recorder.events[-1]
    assert when - killed_at < 2 * RW_TIMEOUT_S + 3
    assert isinstance(last, Disconnected)
    assert last.was_live
    assert last.reason != "stopped"
    assert assert_disconnected_once_and_last(run.recorder) is last


def test_publisher_restarting_with_another_size_is_followed(
    origin: RtmpOrigin, clip: Path, tmp_path: Path, run_reader: Callable[..., Run]
) -> None:
    # A camera's encoder restarts with new settings within rw_timeout: nginx
    # keeps the play session and the FLV demuxer attaches the new SPS/PPS, as
    # new_extradata side data, to the next keyframe. The h264 decoder would
    # pick that up by itself, so skip that keyframe: later fresh decoders only
    # get the new parameters if the reader kept them.
    small = encode_clip(tmp_path / "small.flv", 320, 180)
    url = origin.url("restarting")
    first = publish(clip, url)
    try:
        run = run_reader(url, answer=True)
        assert run.recorder.wait_for(Captured, timeout=GOP_S + 5)
        run.selector.answer = False
        stop_process(first)
        calls = run.selector.calls
        second = publish(small, url)
        try:
            assert wait_until(lambda: run.selector.calls > calls, GOP_S + 5)
            run.selector.answer = True
            assert wait_until(
                lambda: any(e.frame.image.width == 320 for e in run.recorder.of(Captured)),
                GOP_S + 5,
            )
        finally:
            stop_process(second)
    finally:
        stop_process(first)

    sizes = [(e.frame.image.width, e.frame.image.height) for e in run.recorder.of(Captured)]
    assert sizes[0] == (WIDTH, HEIGHT)
    assert sizes[-1] == (320, 180)
    assert not run.recorder.of(CaptureFailed)
    assert not run.recorder.of(Disconnected)


def test_unpublished_stream_is_not_live(origin: RtmpOrigin, run_reader: Callable[..., Run]) -> None:
    started = time.monotonic()
    run = run_reader(origin.url("nobody"))

    assert run.recorder.wait_for(Disconnected, timeout=RW_TIMEOUT_S + 2)
    assert time.monotonic() - started < RW_TIMEOUT_S + 2
    assert assert_disconnected_once_and_last(run.recorder).was_live is False


# -- broken origins ----------------------------------------------------------


def test_nothing_listening_fails_fast(run_reader: Callable[..., Run]) -> None:
    started = time.monotonic()
    run = run_reader(f"rtmp://127.0.0.1:{free_port()}/live/x")

    assert run.recorder.wait_for(Disconnected, timeout=2)
    assert time.monotonic() - started < 1.0
    last = assert_disconnected_once_and_last(run.recorder)
    assert last == Disconnected("connection refused", False)


def test_silent_origin_times_out(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
) -> None:
    port = serve_socket(say_nothing)
    started = time.monotonic()
    run = run_reader(f"rtmp://127.0.0.1:{port}/live/x")

    assert run.recorder.wait_for(Disconnected, timeout=RW_TIMEOUT_S + 2)
    assert time.monotonic() - started < RW_TIMEOUT_S + 2
    last = assert_disconnected_once_and_last(run.recorder)
    assert last.was_live is False
    assert last.reason == "timed out"


def test_a_server_that_closes_at_once_sent_no_stream(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
) -> None:
    # what an unreachable host or an origin that turns unknown streams away looks like to
    # FFmpeg (end of file before anything): not "stream ended", nothing was ever live
    def read_the_handshake_then_close(conn: socket.socket) -> None:  # a FIN: end of file
        received = b""
        while len(received) < 1537 and (chunk := conn.recv(4096)):
            received += chunk
        conn.close()

    def close_unread(conn: socket.socket) -> None:  # unread bytes: the close is a reset
        time.sleep(0.2)
        conn.close()

    for handler in (read_the_handshake_then_close, close_unread):
        port = serve_socket(handler)
        run = run_reader(f"rtmp://127.0.0.1:{port}/live/x")

        assert run.recorder.wait_for(Disconnected, timeout=RW_TIMEOUT_S + 2)
        last = assert_disconnected_once_and_last(run.recorder)
        assert last.was_live is False
        assert last.reason.startswith("the server sent no stream"), last


def test_an_rtsps_certificate_is_checked_before_ffmpeg_connects(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
    tmp_path: Path,
) -> None:
    # FFmpeg's RTSP demuxer opens TLS without verification: livesnap's own handshake checks
    # the certificate first. The server speaks TLS with a certificate of a private CA.
    ca, cert, key = write_certificates(tmp_path / "tls", ["127.0.0.1"])
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    handshakes: list[bool] = []

    def tls_then_silence(conn: socket.socket) -> None:
        try:
            with server_tls.wrap_socket(conn, server_side=True):
                handshakes.append(True)
                time.sleep(2 * RW_TIMEOUT_S + 1)
        except OSError:
            handshakes.append(False)  # the client refused the certificate

    url = f"rtsps://127.0.0.1:{serve_socket(tls_then_silence)}/cam"
    refused = run_reader(url)  # trusting the system's authorities only
    assert refused.recorder.wait_for(Disconnected, timeout=RW_TIMEOUT_S + 2)
    reason = assert_disconnected_once_and_last(refused.recorder).reason
    assert reason.startswith("TLS certificate not accepted"), reason
    assert handshakes == [False]  # FFmpeg never connected

    trusted = run_reader(url, options=dataclasses.replace(OPTIONS, tls_ca_file=str(ca)))
    assert wait_until(lambda: handshakes.count(True) >= 2, RW_TIMEOUT_S + 2)  # ours, FFmpeg's
    trusted.reader.stop()
    assert trusted.recorder.wait_for(Disconnected, timeout=2 * RW_TIMEOUT_S + 2)
    assert "certificate" not in assert_disconnected_once_and_last(trusted.recorder).reason


def test_stop_during_a_stalled_open(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
) -> None:
    port = serve_socket(say_nothing)
    run = run_reader(f"rtmp://127.0.0.1:{port}/live/x")
    time.sleep(0.2)

    run.reader.stop()

    assert run.reader.join(RW_TIMEOUT_S + 1)
    assert assert_disconnected_once_and_last(run.recorder) == Disconnected("stopped", False)


def test_garbage_origin_disconnects_without_crashing(
    serve_socket: Callable[[Callable[[socket.socket], None]], int],
    run_reader: Callable[..., Run],
) -> None:
    # An exception escaping the thread would fail this test too: pytest turns
    # unhandled thread exceptions into warnings, and warnings are errors here.
    port = serve_socket(say_garbage)
    run = run_reader(f"rtmp://127.0.0.1:{port}/live/x")

    assert run.recorder.wait_for(Disconnected, timeout=RW_TIMEOUT_S + 2)
    assert run.reader.join(1)
    last = assert_disconnected_once_and_last(run.recorder)
    assert last.was_live is False
    assert last.reason


def test_stop_before_start_never_connects(run_reader: Callable[..., Run]) -> None:
    recorder = Recorder()
    reader = StreamReader(
        f"rtmp://127.0.0.1:{free_port()}/live/x",
        options=OPTIONS,
        selector=Selector(True),
        emit=recorder,
        name="early",
    )
    assert reader.join(0)  # never started: nothing to wait for
    reader.stop()
    reader.start()
    assert reader.join(1)
    assert [e for _, e in recorder.events] == [Disconnected("stopped", False)]
