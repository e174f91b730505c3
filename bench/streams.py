"""Cost per stream, side by side: livesnap vs ffmpeg-per-stream, on the same live streams.

One run starts a private nginx-rtmp origin and one looping ``ffmpeg -c copy`` publisher per
distinct stream (a pre-encoded H.264 clip, x264 High with B-frames, GOP 2 s, 25 fps; made once
and cached), then measures one contender after the other on those streams:

1. ``livesnap``: the real service (``livesnap serve`` as a subprocess, SQLite, local-disk
   sink, file records, callbacks to a receiver in this process that answers 200) with N jobs
   at the system template's 5 s interval, submitted through the official SDK;
2. ``ffmpeg_fps``: ``ffmpeg -i URL -vf fps=1/5 -update 1 out.jpg``, one process per stream;
3. ``ffmpeg_nokey``: the same with ``-skip_frame nokey`` before ``-i``;
4. ``ffmpeg_discard``: the same with ``-discard:v nokey -skip_frame nokey`` (the best ffmpeg);
5. ``demux_floor``: PyAV demux only (every packet, nothing decoded), one process per stream.

For each: CPU-seconds per stream-minute (user+system of every process of the contender, with
their children, over a window after a warm-up; the input is real time, so wall time is stream
time), RSS per stream, and for livesnap the ticks missed and the capture lag (keyframe arrival
→ file record written: a callback's ``EventTime`` minus its ``CreateTimestamp``; the session's
own arrival → JPEG-handed-to-storage figure is ``CaptureLag`` in ListLiveSnapshotFiles). The
origin's and the publishers' CPU are reported on their own and charged to nobody.

    .venv/bin/python bench/streams.py --quick          # < 1 min: 2 jobs, no fps baseline
    .venv/bin/python bench/streams.py --json           # full: baselines, then N = 20, 40, ...
    .venv/bin/python bench/streams.py --streams 200 --skip ffmpeg_fps,ffmpeg_nokey

livesnap's jobs each hold a connection of their own here, as each ffmpeg process does: the
jobs stand for streams of their own and share the ``--distinct`` publishers only to save CPU.
Jobs that really watch one stream share its connection and decode (the service's default);
``--env LIVESNAP_SHARE_STREAMS=true`` measures that, for example against the same jobs
unshared in the same run:

    .venv/bin/python bench/streams.py --only livesnap --distinct 2 --streams 40 \
        --env LIVESNAP_SHARE_STREAMS=true --variant unshared:LIVESNAP_SHARE_STREAMS=false

The full mode measures the baselines once at ``--baseline-streams`` (one process each costs
100 MiB, so hundreds of them do not fit), then livesnap at each N of ``--scale`` until the
machine saturates (missed ticks, or lag p99 over ``--lag-limit-ms``), and reports the knee.

The interval sweep (``--intervals``) measures how the cost follows ``TimeInterval``: at each
interval I, ``livesnap serve`` with N jobs (``--streams N``, default 20) on a custom template
with ``TimeInterval=I`` and ``ConnectMode=MODE`` (one run per mode of ``--modes``: persistent
keeps one connection per job, per-tick connects shortly before each tick; a service that does
not know the field ignores it, which the output shows), then the best ffmpeg
(``ffmpeg_discard`` with ``fps=1/I``), one process per job URL. Each window spans
``max(--window, --window-ticks x I)`` (default max(60 s, 3 I)). Besides CPU and RSS per
stream: captures per job and tick, missed ticks, ``CaptureLag``, the gaps between a job's
captures, the distance of each capture to the job's estimated tick (its first capture + k I),
and the origin's CPU, new connections per second (nginx-rtmp's ``naccepted``) and players
during the window (:data:`SWEEP_METHOD` has every definition; it is also in the JSON).

    .venv/bin/python bench/streams.py --intervals 5,15,60 --json     # ~20 min at N = 20
    .venv/bin/python bench/streams.py --intervals --quick            # ~80 s: 2 jobs, 5 and 10 s
    .venv/bin/python bench/streams.py --intervals 10,30 --modes auto,per-tick --streams 40

Every process started here is stopped before it exits. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the fixtures live in tests/support, shared with the tests
    sys.path.insert(0, str(ROOT))

from tests.support.servers import (  # noqa: E402
    CLIP_GOP,
    FFMPEG,
    Publisher,
    RtmpOrigin,
    free_port,
    make_clip,
    wait_stream_live,
)
from tests.support.service import LivesnapServer, core_client, core_request, ice_client  # noqa: E402

MIB = 1024 * 1024
INTERVAL_S = 5.0  # the system template's interval
GOP_S = CLIP_GOP / 25
CONTENDERS = ("livesnap", "ffmpeg_fps", "ffmpeg_nokey", "ffmpeg_discard", "demux_floor",
              "capture_path")
FFMPEG_VARIANTS: dict[str, list[str]] = {
    "ffmpeg_fps": [],
    "ffmpeg_nokey": ["-skip_frame", "nokey"],
    "ffmpeg_discard": ["-discard:v", "nokey", "-skip_frame", "nokey"],
}
LABELS = {
    "livesnap": "livesnap serve (API + capture + local sink + records + callbacks)",
    "ffmpeg_fps": "ffmpeg -i URL -vf fps=1/5 -update 1 out.jpg",
    "ffmpeg_nokey": "ffmpeg -skip_frame nokey -i URL -vf fps=1/5 -update 1 out.jpg",
    "ffmpeg_discard": "ffmpeg -discard:v nokey -skip_frame nokey -i URL -vf fps=1/5 ...",
    "demux_floor": "PyAV demux only (no decode), one process per stream",
    "capture_path": "livesnap's StreamReaders alone, one process (no API, records, callbacks)",
}
# The floor contender: what reading a stream costs one process with PyAV and nothing else.
FLOOR_CODE = """\
import sys, av
opts = {"rw_timeout": "5000000", "probesize": "32768", "analyzeduration": "0"}
with av.open(sys.argv[1], container_options=opts) as c:
    video = c.streams.video[0]
    ready = False
    for packet in c.demux(video):
        if not ready:
            print("ready", flush=True)
            ready = True
"""


# The capture path alone: N StreamReaders in one process, one JPEG per 5 s each, thrown away.
CAPTURE_PATH_CODE = """\
import sys, threading, time
from livesnap.capture.source import (Captured, Connected, SourceOptions, StreamReader,
                                     tune_malloc)
tune_malloc()
interval, urls = float(sys.argv[1]), sys.argv[2:]
class Every:
    def __init__(self, phase):
        self.next, self.phase = None, phase
    def on_keyframe(self, now):
        if self.next is None:
            self.next = now + self.phase
        if now < self.next:
            return False
        while self.next <= now:
            self.next += interval
        return True
connected = set()
def emitter(i):
    def emit(event):
        if isinstance(event, Connected) and i not in connected:
            connected.add(i)
            if len(connected) == len(urls):
                print("ready", flush=True)
    return emit
readers = [StreamReader(url, options=SourceOptions(), name=f"r{i}", emit=emitter(i),
                        selector=Every(i * interval / len(urls))) for i, url in enumerate(urls)]
for reader in readers:
    reader.start()
while True:
    time.sleep(3600)
"""

# -- results --------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One contender at one N over one window."""

    contender: str
    streams: int
    window_s: float
    cpu_s: float
    rss_mib_per_stream: float
    origin_cores: float
    publishers_cores: float
    processes_alive: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_s_per_stream_min(self) -> float:
        return self.cpu_s / self.window_s * 60 / self.streams

    @property
    def cores(self) -> float:
        return self.cpu_s / self.window_s

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cpu_s_per_stream_min"] = round(self.cpu_s_per_stream_min, 4)
        data["cores"] = round(self.cores, 3)
        data["label"] = LABELS[self.contender]
        return data


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def family(procs: Sequence[psutil.Process]) -> Iterator[psutil.Process]:
    """``procs`` and their live descendants, each once (a vanished process is left out)."""
    seen: set[int] = set()
    for proc in procs:
        try:
            members = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in members:
            if member.pid not in seen:
                seen.add(member.pid)
                yield member


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """user+system of ``procs`` and their live descendants (a vanished process counts 0)."""
    total = 0.0
    for member in family(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def rss_bytes(procs: Sequence[psutil.Process]) -> int:
    """RSS of ``procs`` and their live descendants (``livesnap serve``'s capture process)."""
    total = 0
    for member in family(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total


# -- fixtures: origin, publishers -------------------------------------------------------------


@dataclass
class Streams:
    """The origin and its publishers; ``urls`` are the distinct live streams."""

    origin: RtmpOrigin
    publishers: list[Publisher]
    urls: list[str]
    resolution: str

    def origin_procs(self) -> list[psutil.Process]:
        assert self.origin.pid is not None
        return [psutil.Process(self.origin.pid)]

    def publisher_procs(self) -> list[psutil.Process]:
        return [psutil.Process(p.pid) for p in self.publishers if p.pid is not None]


@contextlib.contextmanager
def live_streams(resolution: str, distinct: int, clip_seconds: int) -> Iterator[Streams]:
    """Start nginx-rtmp and ``distinct`` publishers of the cached clip; wait until all are live."""
    clip = make_clip(resolution, seconds=clip_seconds)
    with RtmpOrigin() as origin:
        publishers: list[Publisher] = []
        try:
            for i in range(distinct):
                publisher = Publisher(clip, origin.url(f"bench{i}")).start()
                publishers.append(publisher)
                # Start them a little apart, so the keyframes of distinct streams are not aligned.
                time.sleep(GOP_S / max(distinct, 1) if distinct > 1 else 0)
            for i, publisher in enumerate(publishers):
                wait_stream_live(origin, f"bench{i}", 20, publisher=publisher)
            yield Streams(origin, publishers, [p.url for p in publishers], resolution)
        finally:
            for publisher in publishers:
                publisher.stop()


def _stat_counters(streams: Streams) -> tuple[int | None, int]:
    """(nginx-rtmp's cumulative ``naccepted``, RTMP clients now playing) from ``/stat``."""
    root = ET.fromstring(streams.origin.stat_xml())
    accepted = root.findtext("naccepted")
    players = sum(1 for client in root.iter("client") if client.find("publishing") is None)
    return (int(accepted) if accepted and accepted.strip().isdigit() else None), players


def origin_players(streams: Streams) -> int:
    """RTMP clients playing from the origin now (its ``/stat`` clients that do not publish)."""
    return _stat_counters(streams)[1]


class OriginProbe:
    """What the origin saw over one window: new connections, plays, concurrent players.

    * ``connections``: the difference of nginx-rtmp's ``naccepted`` (``/stat``: every RTMP TCP
      connection the server accepted since it started) between the window's ends. Exact
      however short the connections are, which sampling ``ss`` or ``/stat``'s client list is
      not (a per-tick connection lives for about one GOP).
    * ``plays``: the ``play:`` commands in the origin's info-level error log between the two
      ends (read by byte offset, so no 1-second timestamps to parse); a cross-check that the
      new connections were players.
    * ``players_mean`` / ``players_max``: ``/stat``'s playing clients sampled every
      ``sample_s`` (when given; each sample is one small HTTP request to the origin).
    """

    def __init__(self, streams: Streams, sample_s: float | None = None) -> None:
        self.streams = streams
        self.sample_s = sample_s
        self.samples: list[int] = []
        self._marks: list[tuple[int | None, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _log(self) -> Path | None:
        directory = self.streams.origin.directory
        return None if directory is None else directory / "logs" / "error.log"

    def _mark(self) -> None:
        accepted: int | None = None
        with contextlib.suppress(OSError, ET.ParseError):
            accepted = _stat_counters(self.streams)[0]
        log = self._log()
        offset = log.stat().st_size if log is not None and log.exists() else 0
        self._marks.append((accepted, offset))

    def _sample(self) -> None:
        assert self.sample_s is not None
        while not self._stop.wait(self.sample_s):
            with contextlib.suppress(OSError, ET.ParseError):
                self.samples.append(origin_players(self.streams))

    def __enter__(self) -> OriginProbe:
        self._mark()
        if self.sample_s:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mark()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def figures(self, span: float) -> dict[str, Any]:
        (a0, off0), (a1, off1) = self._marks[0], self._marks[-1]
        connections = None if a0 is None or a1 is None else a1 - a0
        plays = None
        log = self._log()
        if log is not None and log.exists():
            with log.open("rb") as f:
                f.seek(off0)
                plays = f.read(max(0, off1 - off0)).count(b" play: name=")
        return {
            "connections": connections,
            "connections_per_s": None if connections is None else round(connections / span, 3),
            "plays": plays,
            "players_mean": round(statistics.mean(self.samples), 2) if self.samples else None,
            "players_max": max(self.samples) if self.samples else None,
            "player_samples": len(self.samples),
        }


@dataclass
class WindowFigures:
    """One measured window: the contenders' CPU (by name), the origin's and the publishers'."""

    cpu_s: dict[str, float]
    window_s: float
    origin_cores: float
    publishers_cores: float
    wall_start: float
    wall_end: float
    origin: dict[str, Any]


class Window:
    """Measures CPU of some processes, the origin and the publishers over one window."""

    def __init__(
        self, streams: Streams,
        procs: Callable[[], list[psutil.Process] | dict[str, list[psutil.Process]]],
        *, sample_players_s: float | None = None,
    ) -> None:
        self.streams = streams
        self.procs = procs
        self.sample_players_s = sample_players_s

    def run(self, seconds: float) -> WindowFigures:
        """CPU of each group of processes (a plain list is the group ``""``) over ``seconds``."""
        found = self.procs()
        groups = found if isinstance(found, dict) else {"": found}
        origin, pubs = self.streams.origin_procs(), self.streams.publisher_procs()
        with OriginProbe(self.streams, self.sample_players_s) as probe:
            c0 = {k: cpu_seconds(v) for k, v in groups.items()}
            o0, p0 = cpu_seconds(origin), cpu_seconds(pubs)
            m0, w0 = time.monotonic(), time.time()
            time.sleep(seconds)
            c1 = {k: cpu_seconds(v) for k, v in groups.items()}
            o1, p1 = cpu_seconds(origin), cpu_seconds(pubs)
            m1, w1 = time.monotonic(), time.time()
        span = m1 - m0
        return WindowFigures(
            cpu_s={k: c1[k] - c0[k] for k in groups}, window_s=span,
            origin_cores=(o1 - o0) / span, publishers_cores=(p1 - p0) / span,
            wall_start=w0, wall_end=w1, origin=probe.figures(span))


# -- baselines: one process per stream -------------------------------------------------------


@dataclass
class ProcessGroup:
    """One baseline: its processes and how to tell each one is running."""

    contender: str
    procs: list[subprocess.Popen[bytes]]
    ready: Callable[[], bool]
    streams: int

    def psutil_procs(self) -> list[psutil.Process]:
        found = []
        for proc in self.procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                found.append(psutil.Process(proc.pid))
        return found


def start_baseline(
    contender: str, urls: list[str], workdir: Path, *, interval: float = INTERVAL_S,
) -> ProcessGroup:
    """Start one process per URL for ``contender`` (an ffmpeg variant or the demux floor);
    the ffmpeg variants and the capture path take one picture per ``interval`` seconds."""
    procs: list[subprocess.Popen[bytes]] = []
    outputs: list[Path] = []
    if contender == "capture_path":
        procs.append(subprocess.Popen(
            [sys.executable, "-c", CAPTURE_PATH_CODE, str(interval), *urls],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        ))
        line = _ReadyLine(procs[0])
        return ProcessGroup(contender, procs, lambda: line.seen, len(urls))
    try:
        for i, url in enumerate(urls):
            if contender == "demux_floor":
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", FLOOR_CODE, url],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                ))
                continue
            out = workdir / f"{contender}-{i}.jpg"
            outputs.append(out)
            procs.append(subprocess.Popen(
                [
                    FFMPEG, "-hide_banner", "-loglevel", "error", "-nostdin",
                    *FFMPEG_VARIANTS[contender], "-i", url,
                    "-vf", f"fps=1/{interval:g}", "-update", "1", "-y", str(out),
                ],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))  # fmt: skip
    except BaseException:
        stop_all(procs)
        raise
    if contender == "demux_floor":
        lines = [_ReadyLine(p) for p in procs]
        return ProcessGroup(contender, procs, lambda: all(line.seen for line in lines), len(urls))
    return ProcessGroup(
        contender, procs, lambda: all(out.exists() for out in outputs), len(urls))


class _ReadyLine:
    """Reads the floor process's one ``ready`` line in a thread (then nothing more comes)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.seen = False
        assert proc.stdout is not None
        stdout = proc.stdout

        def read() -> None:
            self.seen = stdout.readline().startswith(b"ready")

        threading.Thread(target=read, daemon=True).start()


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


def job_urls(streams: Streams, n: int) -> list[str]:
    """N job URLs spread round-robin over the distinct streams."""
    return [streams.urls[i % len(streams.urls)] for i in range(n)]


@contextlib.contextmanager
def running_baselines(
    streams: Streams, contenders: dict[str, int], *, workdir: Path, ready_timeout: float = 40.0,
    interval: float = INTERVAL_S, ready_when: str = "output",
) -> Iterator[list[ProcessGroup]]:
    """Start the given baselines ({contender: N}), wait until each one runs, stop them after.

    For ``ready_when="output"`` a baseline runs once each ffmpeg wrote its first picture (the
    floor and the capture path say ``ready``); for ``"playing"`` once the origin lists one more
    player per process (ffmpeg's ``fps=1/I`` writes its first picture only after about 1.5 I,
    too long to wait for at long intervals).
    """
    groups: list[ProcessGroup] = []
    try:
        players_before = origin_players(streams) if ready_when == "playing" else 0
        for contender, n in contenders.items():
            groups.append(start_baseline(contender, job_urls(streams, n), workdir,
                                         interval=interval))
        expected_players = players_before + sum(len(g.procs) for g in groups)

        def ready() -> bool:
            if ready_when == "playing":
                return origin_players(streams) >= expected_players
            return all(g.ready() for g in groups)

        deadline = time.monotonic() + ready_timeout
        while not ready():
            exited = [g.contender for g in groups if any(p.poll() is not None for p in g.procs)]
            if time.monotonic() > deadline or exited:
                late = [g.contender for g in groups if not g.ready()]
                raise RuntimeError(f"baselines not running after {ready_timeout:.0f} s: {late}"
                                   f"{f' (exited: {exited})' if exited else ''}")
            time.sleep(0.2)
        yield groups
    finally:
        for group in groups:
            stop_all(group.procs)


def baseline_measurement(
    group: ProcessGroup, figures: WindowFigures, rss: int, alongside: list[str],
    interval: float,
) -> Measurement:
    """One baseline's figures from a window in which it ran (``alongside`` the others)."""
    return Measurement(
        contender=group.contender, streams=group.streams, window_s=figures.window_s,
        cpu_s=figures.cpu_s[group.contender],
        rss_mib_per_stream=rss / group.streams / MIB,
        origin_cores=figures.origin_cores, publishers_cores=figures.publishers_cores,
        processes_alive=sum(1 for p in group.procs if p.poll() is None),
        extra={"measured_alongside": alongside, "interval_s": interval,
               "origin": figures.origin},
    )


def measure_baselines(
    streams: Streams, contenders: dict[str, int], *, warmup: float, window: float,
    workdir: Path, ready_timeout: float = 40.0, interval: float = INTERVAL_S,
    ready_when: str = "output", sample_players_s: float | None = None,
) -> list[Measurement]:
    """Run the given baselines ({contender: N}) side by side and measure each one's processes.

    Each baseline's CPU is its own processes' CPU, so running several together only adds
    noise; the full mode runs them one at a time. The window starts ``warmup`` seconds after
    every process is running (:func:`running_baselines`).
    """
    with running_baselines(streams, contenders, workdir=workdir, ready_timeout=ready_timeout,
                           interval=interval, ready_when=ready_when) as groups:
        time.sleep(warmup)
        ps = {g.contender: g.psutil_procs() for g in groups}
        figures = Window(streams, lambda: ps, sample_players_s=sample_players_s).run(window)
        return [baseline_measurement(group, figures, rss_bytes(ps[group.contender]),
                                     [g.contender for g in groups if g is not group], interval)
                for group in groups]


# -- livesnap ---------------------------------------------------------------------------------


class CallbackReceiver:
    """A tiny HTTP server that answers 200 to every POST and keeps the parsed bodies."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.time()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                with contextlib.suppress(ValueError):
                    receiver.add(arrived, json.loads(body))

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def add(self, arrived: float, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append((arrived, event))

    def captured(self) -> list[tuple[float, dict[str, Any]]]:
        """Deliveries of LiveSnapshotCaptured, first delivery of each EventId."""
        seen: set[str] = set()
        found = []
        with self._lock:
            events = list(self.events)
        for arrived, event in events:
            if event.get("EventType") == "LiveSnapshotCaptured" and event["EventId"] not in seen:
                seen.add(event["EventId"])
                found.append((arrived, event))
        return found

    def jobs_with_capture(self) -> set[str]:
        return {event["JobId"] for _, event in self.captured()}

    def __enter__(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _epoch_ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_files(server: LivesnapServer, job_id: str, start: float, end: float) -> list[dict]:
    """Every file record of a job between two wall times (raw JSON, with the extensions)."""
    acs = core_client(server.endpoint)
    files: list[dict] = []
    start_iso = _iso(start)
    while True:
        req = core_request("ListLiveSnapshotFiles", "GET", {
            "JobId": job_id, "StartTime": start_iso, "EndTime": _iso(end), "Limit": 100})
        body = json.loads(acs.do_action_with_exception(req))
        files += body["FileList"]
        if not body.get("NextStartTime"):
            return files
        start_iso = body["NextStartTime"]


def snapshot_count(server: LivesnapServer, job_id: str) -> int:
    acs = core_client(server.endpoint)
    req = core_request("GetLiveSnapshotJob", "GET", {"JobId": job_id})
    return int(json.loads(acs.do_action_with_exception(req)).get("SnapshotCount") or 0)


def missed_ticks(create_ms: list[int], t0_ms: int, t1_ms: int, interval_ms: int) -> int:
    """Ticks of one job inside [t0, t1] that got no capture.

    A capture lands up to one GOP after its tick, so consecutive captures are 5 ± 2 s apart;
    a gap of g ms hides ``floor((g - GOP - 0.5 s) / interval)`` missed ticks. The window edges
    count as captures at t0 and t1.
    """
    slack = GOP_S * 1000 + 500
    points = [t0_ms, *sorted(t for t in create_ms if t0_ms <= t <= t1_ms), t1_ms]
    return sum(max(0, int((b - a - slack) // interval_ms)) for a, b in itertools.pairwise(points))


def tick_figures(
    creates: dict[str, list[int]], t0_ms: int, t1_ms: int, interval_ms: int,
) -> dict[str, Any]:
    """How the captures of each job in [t0, t1] kept to the job's ticks.

    ``creates`` holds every capture's ``CreateTimestamp`` (ms) per job since it was submitted.

    * captures per job and per tick: the window's captures of a job over the ticks the window
      holds (``window / interval``): 1.0 is one capture per tick;
    * gaps: ``CreateTimestamp`` minus the job's previous one, for each capture in the window;
      with a GOP of G the gaps of a job that captures every tick are ``interval ± G``;
    * delay to the tick: the service does not publish a job's tick times (they are aligned to
      its session's start), so the job's first capture stands for its phase and its k-th tick
      is estimated as ``first + k * interval``. A capture's delay is
      ``d = (CreateTimestamp - first) mod interval``, taken as ``min(d, interval - d)`` (the
      distance to the nearest estimated tick, so a capture a little *before* the estimate,
      possible because the first capture itself came up to one GOP after its real tick,
      counts as small, not as almost one interval). It is therefore a distance to a tick
      estimate, with up to one GOP of error, not an absolute delay: the absolute keyframe
      arrival -> stored delay is ``CaptureLag``.
    """
    per_job: list[int] = []
    gaps: list[float] = []
    delays: list[float] = []
    for stamps in creates.values():
        ordered = sorted(stamps)
        inside = [t for t in ordered if t0_ms <= t <= t1_ms]
        per_job.append(len(inside))
        gaps += [b - a for a, b in itertools.pairwise(ordered) if t0_ms <= b <= t1_ms]
        if ordered:
            for t in inside:
                d = (t - ordered[0]) % interval_ms
                delays.append(min(d, interval_ms - d))
    ticks = (t1_ms - t0_ms) / interval_ms
    expected = len(creates) * ticks

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    return {
        "captures_per_job_per_tick": (round(sum(per_job) / expected, 3) if expected else None),
        "captures_per_job_min": min(per_job, default=None),
        "captures_per_job_max": max(per_job, default=None),
        "ticks_per_job_in_window": round(ticks, 2),
        "gap_ms_min": rounded(percentile(gaps, 0)),
        "gap_ms_p50": rounded(percentile(gaps, 50)),
        "gap_ms_p99": rounded(percentile(gaps, 99)),
        "gap_ms_max": rounded(percentile(gaps, 100)),
        "gap_samples": len(gaps),
        "tick_delay_p50_ms": rounded(percentile(delays, 50)),
        "tick_delay_p99_ms": rounded(percentile(delays, 99)),
        "tick_delay_samples": len(delays),
    }


def create_template(
    server: LivesnapServer, interval: float, extensions: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """A custom template like the system one (both formats) with ``TimeInterval=interval``
    and livesnap's extension fields (``ConnectMode``, ``ImageFormat``, ...) through the core
    SDK's CommonRequest. Returns its id and what GetLiveSnapshotTemplate says of it (a field
    the server does not know is ignored on create and absent from that answer)."""
    if interval != int(interval):
        raise ValueError(f"TimeInterval is whole seconds, not {interval}")
    acs = core_client(server.endpoint)
    name = "bench-" + "-".join([f"{int(interval)}s", *(f"{v}" for v in extensions.values())])
    params = {"TemplateName": name[:128], "TimeInterval": str(int(interval)),
              "OverwriteFormat": "snapshot/{JobId}.jpg",
              "SequenceFormat": "snapshot/{JobId}/{UnixTimestamp}.jpg", **extensions}
    body = json.loads(acs.do_action_with_exception(
        core_request("CreateLiveSnapshotTemplate", "POST", body=params)))
    template_id = str(body["TemplateId"])
    detail = json.loads(acs.do_action_with_exception(
        core_request("GetLiveSnapshotTemplate", "GET", {"TemplateId": template_id})))
    return template_id, detail


# In --env/--variant: BENCH_PIN_CAPTURE=1 pins each capture process of the service (its child
# processes, LIVESNAP_ENGINE=process) to a core of its own, round robin over this process's
# cores, with every thread (`taskset -a`); the API process and the streams stay unpinned.
PIN_CAPTURE = "BENCH_PIN_CAPTURE"
# BENCH_KEEP_LOG=DIR (in this process's environment): each livesnap run's server log is copied
# to DIR/<jobs>-server.log before its data directory goes (what an overloaded run did).
KEEP_LOG = "BENCH_KEEP_LOG"


def pin_capture_processes(proc: psutil.Process) -> dict[str, int]:
    """Pin each child of ``proc`` to a core of its own; child pid -> core."""
    cores = sorted(os.sched_getaffinity(0))
    children = sorted((c for c in proc.children()
                       if "resource_tracker" not in " ".join(c.cmdline())), key=lambda c: c.pid)
    if not children:
        raise RuntimeError(f"{PIN_CAPTURE}=1 but the service has no capture process "
                           "(LIVESNAP_ENGINE=process)")
    pinned: dict[str, int] = {}
    for i, child in enumerate(children):
        core = cores[i % len(cores)]
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(child.pid)], check=True,
                       stdout=subprocess.DEVNULL)
        pinned[str(child.pid)] = core
    return pinned


def keep_log(log: Path, n: int) -> None:
    """Copy a run's server log where ``BENCH_KEEP_LOG`` says, if it says."""
    if os.environ.get(KEEP_LOG):
        shutil.copy(log, Path(os.environ[KEEP_LOG]) / f"{n}-server.log")


def measure_livesnap(
    streams: Streams, n: int, *, warmup: float, window: float, workdir: Path,
    env: dict[str, str] | None = None, ready_timeout: float | None = None,
    idle_window: float = 3.0, callbacks: bool = True, variant: str = "default",
    interval: float = INTERVAL_S, template: dict[str, str] | None = None,
    settle: float = 2.5, sample_players_s: float | None = None, ready_share: float = 1.0,
    alongside: Sequence[str] = (),
) -> Measurement:
    """N jobs through the real service; CPU/RSS of ``livesnap serve``; ticks and lag from records.

    The window starts once ``ready_share`` of the jobs have delivered a capture (all, unless
    an overloaded service is measured: ``--ready-share``).

    The baselines named in ``alongside`` (N processes' worth each, on the same URLs) run through
    the same window, so livesnap's ratio to them is not blurred by the machine's drift between
    windows (``--alongside``); their figures are in ``extra["alongside"]``.

    Without ``callbacks`` the jobs have no CallbackUrl (to see what delivering them costs);
    the lag is then only the session's own ``CaptureLag``. The jobs use the system template
    (5 s) unless ``interval`` differs or ``template`` gives extension fields: then a custom
    template (:func:`create_template`).
    """
    urls = job_urls(streams, n)
    data_dir = Path(tempfile.mkdtemp(prefix="ls-", dir=workdir))
    server_env = {
        "LIVESNAP_MAX_JOBS_PER_ACCOUNT": str(max(n, 100)),
        "LIVESNAP_MAX_JOBS_PER_NODE": str(max(n, 500)),
        # a connection per job, as each ffmpeg has: the bench's jobs stand for streams of their
        # own and only share publishers to save CPU (--env LIVESNAP_SHARE_STREAMS=true measures
        # jobs that really watch the same stream)
        "LIVESNAP_SHARE_STREAMS": "false",
        "LIVESNAP_RATE_LIMIT_RPS": "0",  # submitting hundreds of jobs is not what is measured
        **{k: v for k, v in (env or {}).items() if k != PIN_CAPTURE},
    }
    with running_baselines(streams, dict.fromkeys(alongside, n), workdir=workdir) as side, \
            CallbackReceiver() as receiver, LivesnapServer(data_dir, env=server_env) as server:
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        time.sleep(settle)  # the fresh service (and a capture process) settles before its idle size
        pinned = pin_capture_processes(proc) if (env or {}).get(PIN_CAPTURE) == "1" else {}
        idle_rss = rss_bytes([proc])
        idle0, idle_t0 = cpu_seconds([proc]), time.monotonic()
        time.sleep(idle_window)
        idle_cores = (cpu_seconds([proc]) - idle0) / (time.monotonic() - idle_t0)
        client = ice_client(server.endpoint)
        from alibabacloud_ice20201109 import models as m

        template_id, template_detail = "system", None
        if template is not None or interval != INTERVAL_S:
            template_id, template_detail = create_template(server, interval, template or {})
        output = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
            storage_type="oss", endpoint="oss-bench.example.com", bucket="bench")
        submitted: dict[str, float] = {}
        for i, url in enumerate(urls):
            body = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
                job_name=f"bench-{i}", template_id=template_id, snapshot_output=output,
                callback_url=receiver.url if callbacks else None,
                stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=url),
            )).body
            submitted[body.job_id] = time.time()
        # A job's first capture may wait for its first tick (a per-tick job, a long interval).
        timeout = ready_timeout or max(30.0, 10 + n * 0.6, interval + 2 * GOP_S + 10)
        deadline = time.monotonic() + timeout
        def started() -> int:
            if callbacks:
                return len(receiver.jobs_with_capture() & submitted.keys())
            return sum(1 for j in submitted if snapshot_count(server, j) > 0)

        need = max(1, math.ceil(n * ready_share))
        while started() < need:
            if time.monotonic() > deadline or server.proc.poll() is not None:
                have = started()
                raise RuntimeError(
                    f"only {have}/{n} jobs delivered a capture callback within {timeout:.0f} s "
                    "(is the callback dispatcher wired?); server log tail:\n"
                    + server.log()[-3000:])
            time.sleep(0.2 if callbacks else 1.0)
        time.sleep(warmup)
        side_ps = {g.contender: g.psutil_procs() for g in side}
        figures = Window(streams, lambda: {"": [proc], **side_ps},
                         sample_players_s=sample_players_s).run(window)
        cpu_s, span, w0, w1 = figures.cpu_s[""], figures.window_s, figures.wall_start, \
            figures.wall_end
        side_figures = [baseline_measurement(g, figures, rss_bytes(side_ps[g.contender]),
                                             ["livesnap"], interval) for g in side]
        rss = rss_bytes([proc])
        threads = proc.num_threads()
        job_detail: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # what the service says of one job (ConnectMode?)
            job_detail = json.loads(core_client(server.endpoint).do_action_with_exception(
                core_request("GetLiveSnapshotJob", "GET", {"JobId": next(iter(submitted))})))
        # The authoritative records: per job, what was written in the window.
        t0_ms, t1_ms = int(w0 * 1000), int(w1 * 1000)
        creates: dict[str, list[int]] = {}
        capture_lags: list[int] = []
        first_snapshot_s: list[float] = []
        for job_id, when in submitted.items():
            files = list_files(server, job_id, when - 5, w1 + 5)
            stamps = sorted(f["CreateTimestamp"] for f in files)
            creates[job_id] = stamps
            if stamps:
                first_snapshot_s.append(stamps[0] / 1000 - when)
            capture_lags += [f["CaptureLag"] for f in files
                             if f.get("CaptureLag") is not None
                             and t0_ms <= f["CreateTimestamp"] <= t1_ms]
        alive = 1 if server.proc.poll() is None else 0
        # Wait (a little) for the callbacks of the window's last records.
        recorded = {(j, t) for j, stamps in creates.items() for t in stamps}
        deadline = time.monotonic() + (10 if callbacks else 0)
        while time.monotonic() < deadline:
            called = {(e["JobId"], e["CreateTimestamp"]) for _, e in receiver.captured()}
            if recorded <= called:
                break
            time.sleep(0.1)
        delivered = [(a, e) for a, e in receiver.captured() if e["JobId"] in submitted]
    keep_log(server.log_path, n)
    shutil.rmtree(data_dir, ignore_errors=True)
    in_window = [(a, e) for a, e in delivered if t0_ms <= e["CreateTimestamp"] <= t1_ms]
    record_lags = [_epoch_ms(e["EventTime"]) - e["CreateTimestamp"] for _, e in in_window]
    delivery = [a * 1000 - _epoch_ms(e["EventTime"]) for a, e in in_window]
    captures = sum(1 for stamps in creates.values() for t in stamps if t0_ms <= t <= t1_ms)
    interval_ms = int(interval * 1000)
    missed = sum(missed_ticks(s, t0_ms, t1_ms, interval_ms) for s in creates.values())

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    measured = Measurement(
        contender="livesnap", streams=n, window_s=span, cpu_s=cpu_s,
        rss_mib_per_stream=(rss - idle_rss) / n / MIB,
        origin_cores=figures.origin_cores, publishers_cores=figures.publishers_cores,
        processes_alive=alive,
        extra={
            "rss_total_mib": round(rss / MIB, 1),
            "rss_idle_mib": round(idle_rss / MIB, 1),
            "rss_total_mib_per_stream": round(rss / n / MIB, 2),
            "threads": threads,
            "service_idle_cores": round(idle_cores, 4),
            "callbacks_in_window": len(in_window),
            "captures": captures,
            "expected_captures": round(n * span / interval, 1),
            "missed_ticks": missed,
            "lag_p50_ms": rounded(percentile(record_lags, 50)),
            "lag_p99_ms": rounded(percentile(record_lags, 99)),
            "lag_max_ms": rounded(percentile(record_lags, 100)),
            "lag_samples": len(record_lags),
            "capture_lag_p50_ms": rounded(percentile(capture_lags, 50)),
            "capture_lag_p99_ms": rounded(percentile(capture_lags, 99)),
            "callback_delivery_p99_ms": rounded(percentile(delivery, 99)),
            "first_snapshot_s_p50": rounded(percentile(first_snapshot_s, 50)),
            "first_snapshot_s_max": rounded(percentile(first_snapshot_s, 100)),
            "env": env or {},
            "callbacks": callbacks,
            "variant": variant,
            "interval_s": interval,
            "template_id": template_id,
            "template_extensions": template or {},
            "template_detail": template_detail,
            "job_connect_mode": job_detail.get("ConnectMode"),
            "pinned_cpus": pinned,
            **tick_figures(creates, t0_ms, t1_ms, interval_ms),
            "origin": figures.origin,
        },
    )
    measured.extra["alongside"] = {
        b.contender: {
            "cpu_s_per_stream_min": round(b.cpu_s_per_stream_min, 4),
            "processes_alive": b.processes_alive,
            "livesnap_over_it": ratio(measured.cpu_s_per_stream_min, b.cpu_s_per_stream_min),
        } for b in side_figures}
    return measured


# -- the run ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import av

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    debian_ffmpeg = subprocess.run([FFMPEG, "-version"], capture_output=True, text=True)
    return {
        "cpu": model,
        "cores": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyav": av.__version__,
        "pyav_ffmpeg": getattr(av, "ffmpeg_version_info", ""),
        "ffmpeg_cli": debian_ffmpeg.stdout.split("\n", 1)[0],
        "load_average_at_start": [round(x, 2) for x in psutil.getloadavg()],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


def summarize(
    args: argparse.Namespace, baselines: list[Measurement], scaling: list[Measurement],
    notes: list[str], variants: list[Measurement] | None = None,
) -> dict[str, Any]:
    """The one JSON object: the headline figures, the ratios, the knee and every measurement."""
    by_name = {m.contender: m for m in baselines}
    # The headline livesnap run is the one at the baselines' N (like for like), else the first.
    headline = next((m for m in scaling if m.streams == args.baseline_streams), None)
    headline = headline or (scaling[0] if scaling else None)

    def per_min(name: str) -> float | None:
        found = by_name.get(name)
        return None if found is None else round(found.cpu_s_per_stream_min, 4)

    live = None if headline is None else round(headline.cpu_s_per_stream_min, 4)
    extra = headline.extra if headline is not None else {}
    ok = [m for m in scaling if m.extra["missed_ticks"] == 0
          and (m.extra["lag_p99_ms"] or 0) <= args.lag_limit_ms]
    bad = [m for m in scaling if m not in ok]
    summary: dict[str, Any] = {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "resolution": args.resolution,
        "distinct_streams": args.distinct,
        "interval_s": INTERVAL_S,
        "warmup_s": args.warmup,
        "window_s": args.window,
        "streams": None if headline is None else headline.streams,
        "baseline_streams": {m.contender: m.streams for m in baselines},
        "livesnap_cpu_s_per_stream_min": live,
        "ffmpeg_fps_cpu_s_per_stream_min": per_min("ffmpeg_fps"),
        "ffmpeg_nokey_cpu_s_per_stream_min": per_min("ffmpeg_nokey"),
        "ffmpeg_discard_cpu_s_per_stream_min": per_min("ffmpeg_discard"),
        "demux_floor_cpu_s_per_stream_min": per_min("demux_floor"),
        "capture_path_cpu_s_per_stream_min": per_min("capture_path"),
        "livesnap_rss_mib_per_stream": (
            None if headline is None else round(headline.rss_mib_per_stream, 2)),
        "livesnap_rss_total_mib_per_stream": extra.get("rss_total_mib_per_stream"),
        "ffmpeg_discard_rss_mib_per_stream": (
            round(by_name["ffmpeg_discard"].rss_mib_per_stream, 1)
            if "ffmpeg_discard" in by_name else None),
        "missed_ticks": extra.get("missed_ticks"),
        "captures": extra.get("captures"),
        "expected_captures": extra.get("expected_captures"),
        "lag_p50_ms": extra.get("lag_p50_ms"),
        "lag_p99_ms": extra.get("lag_p99_ms"),
        "capture_lag_p99_ms": extra.get("capture_lag_p99_ms"),
        "first_snapshot_s_max": extra.get("first_snapshot_s_max"),
        "origin_cores": round(statistics.mean(m.origin_cores for m in [*baselines, *scaling]), 4),
        "publishers_cores": round(
            statistics.mean(m.publishers_cores for m in [*baselines, *scaling]), 4),
        "ffmpeg_fps_over_livesnap": ratio(per_min("ffmpeg_fps"), live),
        "ffmpeg_nokey_over_livesnap": ratio(per_min("ffmpeg_nokey"), live),
        "ffmpeg_discard_over_livesnap": ratio(per_min("ffmpeg_discard"), live),
        "livesnap_over_demux_floor": ratio(live, per_min("demux_floor")),
        "ffmpeg_discard_over_capture_path": ratio(per_min("ffmpeg_discard"),
                                                  per_min("capture_path")),
        "capture_path_over_demux_floor": ratio(per_min("capture_path"), per_min("demux_floor")),
        "knee": {
            "last_ok_streams": max((m.streams for m in ok), default=None),
            "first_saturated_streams": min((m.streams for m in bad), default=None),
            "rule": f"saturated = any missed tick, or lag p99 > {args.lag_limit_ms:g} ms",
        },
        "scaling": [
            {"streams": m.streams, "cpu_s_per_stream_min": round(m.cpu_s_per_stream_min, 4),
             "cores": round(m.cores, 3), "rss_mib_per_stream": round(m.rss_mib_per_stream, 2),
             **{k: m.extra[k] for k in ("missed_ticks", "captures", "expected_captures",
                                        "lag_p50_ms", "lag_p99_ms", "capture_lag_p99_ms",
                                        "alongside")}}
            for m in scaling
        ],
        "variants": [
            {"variant": v.extra["variant"], "streams": v.streams,
             "cpu_s_per_stream_min": round(v.cpu_s_per_stream_min, 4),
             "rss_mib_per_stream": round(v.rss_mib_per_stream, 2),
             "over_default": ratio(v.cpu_s_per_stream_min, next(
                 (m.cpu_s_per_stream_min for m in scaling if m.streams == v.streams), None)),
             **{k: v.extra[k] for k in ("missed_ticks", "lag_p50_ms", "lag_p99_ms",
                                        "capture_lag_p99_ms", "env", "callbacks",
                                        "alongside")}}
            for v in variants or []
        ],
        "measurements": [m.as_dict() for m in [*baselines, *scaling, *(variants or [])]],
        "notes": notes,
    }
    return summary


def scale_up(
    args: argparse.Namespace, streams: Streams, workdir: Path, env: dict[str, str],
    scaling: list[Measurement], variants: list[Measurement], log: Callable[[str], None],
) -> None:
    """livesnap at each N of ``args.scale`` (and its variants) until the machine saturates."""
    for n in args.scale:
        m = None
        for name, variant_env, callbacks in [("default", env, True), *args.variant]:
            log(f"measuring livesnap ({name}) with {n} jobs ...")
            found = measure_livesnap(
                streams, n, warmup=args.warmup, window=args.window, workdir=workdir,
                env=variant_env, idle_window=1.0 if args.quick else 3.0,
                callbacks=callbacks, variant=name, ready_share=args.ready_share,
                alongside=args.alongside)
            x = found.extra
            log(f"  livesnap {name:10s} N={n:3d} {found.cpu_s_per_stream_min:.3f} "
                f"CPU-s/stream-min ({found.cores:.2f} cores), "
                f"{found.rss_mib_per_stream:.1f} MiB/stream, captures "
                f"{x['captures']}/{x['expected_captures']}, missed {x['missed_ticks']}, "
                f"lag p50/p99 {x['lag_p50_ms']}/{x['lag_p99_ms']} ms "
                f"(capture lag p99 {x['capture_lag_p99_ms']} ms)")
            for side, figures in x["alongside"].items():
                log(f"    alongside: {side} {figures['cpu_s_per_stream_min']:.3f} "
                    f"CPU-s/stream-min, livesnap {figures['livesnap_over_it']}x it")
            if name == "default":
                m = found
                scaling.append(found)
            else:
                variants.append(found)
        assert m is not None
        x = m.extra
        saturated = x["missed_ticks"] > 0 or (x["lag_p99_ms"] or 0) > args.lag_limit_ms
        if saturated and not args.keep_going:
            log("  saturated: stopping the scale-up here")
            break


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    notes: list[str] = []
    skipped = set(args.skip)
    if args.quick and "ffmpeg_fps" not in args.only:
        skipped.add("ffmpeg_fps")
        notes.append("quick mode: the ffmpeg fps baseline (decodes every frame) is skipped; "
                     "the other baselines ran side by side in one window")
    if args.only:
        skipped |= set(CONTENDERS) - set(args.only)
    baselines: list[Measurement] = []
    scaling: list[Measurement] = []
    variants: list[Measurement] = []
    env = dict(kv.split("=", 1) for kv in args.env)
    with tempfile.TemporaryDirectory(prefix="livesnap-bench-") as tmp, \
            live_streams(args.resolution, args.distinct, args.clip_seconds) as streams:
        workdir = Path(tmp)
        log(f"{len(streams.urls)} distinct {args.resolution} streams live on "
            f"{streams.origin.rtmp_base}")
        wanted = {c: (args.fps_streams if c == "ffmpeg_fps" else args.baseline_streams)
                  for c in CONTENDERS[1:] if c not in skipped}
        if args.quick:
            groups = [wanted] if wanted else []
        else:
            groups = [{c: n} for c, n in wanted.items()]
        for group in groups:
            log(f"measuring {', '.join(f'{c} x{n}' for c, n in group.items())} ...")
            found = measure_baselines(streams, group, warmup=args.warmup, window=args.window,
                                      workdir=workdir)
            for m in found:
                log(f"  {m.contender:15s} N={m.streams:3d} {m.cpu_s_per_stream_min:.3f} "
                    f"CPU-s/stream-min, {m.rss_mib_per_stream:.0f} MiB/stream, "
                    f"{m.processes_alive} process(es) alive")
            baselines += found
        if "livesnap" not in skipped:
            scale_up(args, streams, workdir, env, scaling, variants, log)
    for m in scaling[:1]:
        idle = m.extra["service_idle_cores"] * 60 / m.streams
        if idle > 0.05 * m.cpu_s_per_stream_min:
            cores = m.extra["service_idle_cores"]
            notes.append(f"at {m.streams} jobs the idle service ({cores:.3f}"
                         f" cores with no job) adds {idle:.2f} CPU-s per stream-minute: compare "
                         "livesnap with the baselines at 20 jobs or more")
    return summarize(args, baselines, scaling, notes, variants)


# -- the interval sweep -----------------------------------------------------------------------

CONNECT_MODES = ("auto", "persistent", "per-tick")
SWEEP_METHOD = {
    "cpu": "user+system CPU of every process of the contender (livesnap serve and its children; "
           "each ffmpeg) over the window, per stream and per minute of wall (= stream) time",
    "window": "max(--window, --window-ticks x interval), after every job captured once (livesnap) "
              "or every ffmpeg is playing (the origin lists it), then --warmup",
    "captures_per_job_per_tick": "files whose CreateTimestamp is in the window / (jobs x window "
                                 "/ interval)",
    "missed_ticks": "per job, gaps between consecutive captures (window edges included) longer "
                    "than interval + GOP + 0.5 s, in whole intervals",
    "gap_ms": "CreateTimestamp minus the job's previous CreateTimestamp, for captures in the "
              "window (interval +- GOP when every tick is captured)",
    "tick_delay_ms": "distance to the nearest estimated tick: d = (CreateTimestamp - the job's "
                     "first CreateTimestamp) mod interval, min(d, interval - d); the first "
                     "capture stands for the tick phase, so this carries up to one GOP of error",
    "capture_lag_ms": "the service's own CaptureLag (keyframe arrival -> JPEG handed to storage)",
    "origin_cpu_s_per_min": "nginx (master and worker) CPU over the contender's window, per "
                            "minute; it includes serving the publishers (origin_idle: no player)",
    "origin_connections_per_s": "difference of nginx-rtmp's cumulative /stat <naccepted> "
                                "(accepted RTMP connections) between the window's ends / window; "
                                "origin_plays counts the play commands its info log wrote in "
                                "the window; players_mean samples /stat's players every second; "
                                "origin_connections_per_job_per_tick = connections / (jobs x "
                                "window / interval): ~1 per-tick, ~0 persistent (the API reports "
                                "the mode asked for, so this shows what auto resolved to)",
    "ffmpeg_best": "ffmpeg -discard:v nokey -skip_frame nokey -i URL -vf fps=1/I -update 1 "
                   "out.jpg, one process per job URL",
}


@dataclass
class SweepRow:
    """One contender at one interval (and connect mode, for livesnap)."""

    interval_s: float
    mode: str | None  # the ConnectMode asked for; None for ffmpeg
    measurement: Measurement


def sweep_window(args: argparse.Namespace, interval: float) -> float:
    return max(args.window, args.window_ticks * interval)


def run_sweep(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """livesnap (one run per connect mode) and the best ffmpeg at each interval of the list."""
    n = args.scale[0]
    env = dict(kv.split("=", 1) for kv in args.env)
    skipped = set(args.skip)
    rows: list[SweepRow] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="livesnap-bench-") as tmp, \
            live_streams(args.resolution, args.distinct, args.clip_seconds) as streams:
        workdir = Path(tmp)
        log(f"{len(streams.urls)} distinct {args.resolution} streams live on "
            f"{streams.origin.rtmp_base}; {n} jobs per contender")
        idle = Window(streams, lambda: []).run(args.origin_idle_window)
        log(f"origin with no player: {idle.origin_cores * 60:.3f} CPU-s/min")
        for interval in args.intervals:
            window = sweep_window(args, interval)
            for mode in args.modes if "livesnap" not in skipped else []:
                log(f"I={interval:g} s: livesnap ConnectMode={mode}, {n} jobs, "
                    f"{window:g} s window ...")
                found = measure_livesnap(
                    streams, n, warmup=args.warmup, window=window, workdir=workdir, env=env,
                    idle_window=0.3 if args.quick else 3.0, settle=0.5 if args.quick else 2.5,
                    variant=f"{interval:g}s/{mode}", interval=interval,
                    template={"ConnectMode": mode}, sample_players_s=1.0,
                    callbacks=args.sweep_callbacks)
                rows.append(SweepRow(interval, mode, found))
                log("  " + sweep_line(rows[-1]))
            if "ffmpeg_discard" not in skipped:
                log(f"I={interval:g} s: best ffmpeg, {n} processes, {window:g} s window ...")
                [found] = measure_baselines(
                    streams, {"ffmpeg_discard": n}, warmup=args.warmup, window=window,
                    workdir=workdir, interval=interval, ready_when="playing",
                    sample_players_s=1.0)
                rows.append(SweepRow(interval, None, found))
                log("  " + sweep_line(rows[-1]))
    return summarize_sweep(args, rows, idle, notes)


def sweep_line(row: SweepRow) -> str:
    m, o = row.measurement, row.measurement.extra["origin"]
    text = (f"{m.contender}{'/' + row.mode if row.mode else ''}: "
            f"{m.cpu_s_per_stream_min:.3f} CPU-s/stream-min ({m.cores:.2f} cores), origin "
            f"{m.origin_cores * 60:.3f} CPU-s/min, {o['connections_per_s']} conn/s")
    if m.contender == "livesnap":
        x = m.extra
        text += (f", captures {x['captures']}/{x['expected_captures']}, missed "
                 f"{x['missed_ticks']}, capture lag p99 {x['capture_lag_p99_ms']} ms")
    return text


def sweep_row_dict(row: SweepRow) -> dict[str, Any]:
    m, x = row.measurement, row.measurement.extra
    o = x["origin"]
    data: dict[str, Any] = {
        "interval_s": row.interval_s,
        "contender": "livesnap" if m.contender == "livesnap" else "ffmpeg_best",
        "mode": row.mode,
        "streams": m.streams,
        "window_s": round(m.window_s, 2),
        "cpu_s_per_stream_min": round(m.cpu_s_per_stream_min, 4),
        "cores": round(m.cores, 3),
        "rss_mib_per_stream": round(m.rss_mib_per_stream, 2),
        "processes_alive": m.processes_alive,
        "origin_cpu_s_per_min": round(m.origin_cores * 60, 4),
        "origin_connections": o["connections"],
        "origin_connections_per_s": o["connections_per_s"],
        # ~1 when each job/process connects once per tick, ~0 when it stays connected
        "origin_connections_per_job_per_tick": (
            None if o["connections"] is None
            else round(o["connections"] / (m.streams * m.window_s / row.interval_s), 3)),
        "origin_plays": o["plays"],
        "origin_players_mean": o["players_mean"],
        "origin_players_max": o["players_max"],
        "publishers_cores": round(m.publishers_cores, 4),
    }
    if m.contender == "livesnap":
        detail = x["template_detail"] or {}
        data.update({
            "connect_mode_requested": row.mode,
            # What the service says back: None while it does not know ConnectMode.
            "connect_mode_echoed": detail.get("ConnectMode", x.get("job_connect_mode")),
            **{k: x[k] for k in (
                "captures", "expected_captures", "captures_per_job_per_tick",
                "captures_per_job_min", "captures_per_job_max", "missed_ticks",
                "capture_lag_p50_ms", "capture_lag_p99_ms", "lag_p50_ms", "lag_p99_ms",
                "gap_ms_min", "gap_ms_p50", "gap_ms_p99", "gap_ms_max",
                "tick_delay_p50_ms", "tick_delay_p99_ms", "tick_delay_samples",
                "first_snapshot_s_max", "service_idle_cores")},
        })
    return data


def summarize_sweep(
    args: argparse.Namespace, rows: list[SweepRow], idle: WindowFigures, notes: list[str],
) -> dict[str, Any]:
    """The sweep's JSON object: one row per (interval, contender, mode) and the ratios."""
    table = [sweep_row_dict(r) for r in rows]
    ratios = []
    for interval in args.intervals:
        best = next((r for r in table if r["interval_s"] == interval
                     and r["contender"] == "ffmpeg_best"), None)
        persistent = next((r for r in table if r["interval_s"] == interval
                           and r["mode"] == "persistent"), None)
        for r in table:
            if r["interval_s"] != interval or r["contender"] != "livesnap":
                continue
            ratios.append({
                "interval_s": interval, "mode": r["mode"],
                "ffmpeg_best_over_livesnap": ratio(
                    best and best["cpu_s_per_stream_min"], r["cpu_s_per_stream_min"]),
                "livesnap_over_persistent": ratio(
                    r["cpu_s_per_stream_min"], persistent and persistent["cpu_s_per_stream_min"]),
                "origin_cpu_over_ffmpeg_best": ratio(
                    r["origin_cpu_s_per_min"], best and best["origin_cpu_s_per_min"]),
            })
    ignored = sorted({r["mode"] for r in table
                      if r["contender"] == "livesnap" and r["connect_mode_echoed"] is None})
    if ignored:
        notes.append("the service did not echo ConnectMode for " + ", ".join(ignored) + " (not "
                     "in GetLiveSnapshotTemplate/Job): it ignored the field, so those rows "
                     "measure its default connection behaviour, not the mode")
    if args.quick:
        notes.append("quick mode: short windows (a tick or two), figures are a smoke test only")
    return {
        "kind": "interval_sweep",
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "resolution": args.resolution,
        "distinct_streams": args.distinct,
        "gop_s": GOP_S,
        "streams": args.scale[0],
        "intervals_s": args.intervals,
        "connect_modes": args.modes,
        "warmup_s": args.warmup,
        "window_min_s": args.window,
        "window_ticks": args.window_ticks,
        "origin_idle": {"window_s": round(idle.window_s, 2),
                        "cpu_s_per_min": round(idle.origin_cores * 60, 4),
                        "connections": idle.origin["connections"]},
        "publishers_cores": round(statistics.mean(
            [idle.publishers_cores, *(r.measurement.publishers_cores for r in rows)]), 4),
        "rows": table,
        "ratios": ratios,
        "method": SWEEP_METHOD,
        "measurements": [r.measurement.as_dict() for r in rows],
        "notes": notes,
    }


def print_sweep_table(summary: dict[str, Any]) -> None:
    mach = summary["machine"]
    print(f"\n{summary['date']}  {mach['cpu']} x{mach['cores']}, {mach['memory_gib']} GiB, "
          f"PyAV {mach['pyav']} (FFmpeg {mach['pyav_ffmpeg']}), {mach['ffmpeg_cli']}")
    print(f"interval sweep: {summary['resolution']}25 H.264 (GOP {summary['gop_s']:g} s) over "
          f"{summary['distinct_streams']} distinct stream(s), {summary['streams']} jobs/processes "
          f"per contender; window max({summary['window_min_s']:g} s, "
          f"{summary['window_ticks']:g} x I) after {summary['warmup_s']:g} s warm-up; origin "
          f"with no player {summary['origin_idle']['cpu_s_per_min']:.3f} CPU-s/min\n")

    def cell(value: object, fmt: str = "") -> str:
        return "-" if value is None else format(value, fmt)

    def pair(row: dict[str, Any], low: str, high: str, width: int) -> str:
        if row["contender"] != "livesnap":
            return " " * width
        text = f"{cell(row[low], '.0f')}/{cell(row[high], '.0f')}"
        return f"{text:>{width}s}"

    head = (f"{'I (s)':>5s} {'contender':11s} {'mode':10s} {'echo':10s} {'win s':>6s} "
            f"{'CPU-s/str-min':>13s} {'cores':>5s} {'cap/tick':>8s} {'missed':>6s} "
            f"{'caplag p50/p99 ms':>17s} {'tick-dly p50/p99 ms':>19s} {'gap p50/p99 ms':>15s} "
            f"{'origin CPU-s/min':>16s} {'conn/s':>6s} {'conn/job/tick':>13s} {'players':>7s}")
    print(head)
    for r in summary["rows"]:
        live = r["contender"] == "livesnap"
        print(f"{r['interval_s']:5g} {r['contender']:11s} {cell(r['mode']):10s} "
              f"{cell(r.get('connect_mode_echoed')) if live else '':10s} {r['window_s']:6.1f} "
              f"{r['cpu_s_per_stream_min']:13.3f} {r['cores']:5.2f} "
              f"{cell(r.get('captures_per_job_per_tick'), '.2f') if live else '':>8s} "
              f"{cell(r.get('missed_ticks')) if live else '':>6s} "
              f"{pair(r, 'capture_lag_p50_ms', 'capture_lag_p99_ms', 17)} "
              f"{pair(r, 'tick_delay_p50_ms', 'tick_delay_p99_ms', 19)} "
              f"{pair(r, 'gap_ms_p50', 'gap_ms_p99', 15)} "
              f"{r['origin_cpu_s_per_min']:16.3f} "
              f"{cell(r['origin_connections_per_s'], '.2f'):>6s} "
              f"{cell(r['origin_connections_per_job_per_tick'], '.2f'):>13s} "
              f"{cell(r['origin_players_mean'], '.1f'):>7s}")
    print("\nratios (same interval, same run):")
    for q in summary["ratios"]:
        print(f"  I={q['interval_s']:g} s {q['mode']:10s}: ffmpeg_best / livesnap "
              f"{cell(q['ffmpeg_best_over_livesnap'])}, livesnap / persistent "
              f"{cell(q['livesnap_over_persistent'])}, origin CPU livesnap / ffmpeg_best "
              f"{cell(q['origin_cpu_over_ffmpeg_best'])}")
    print("\n'echo' is the ConnectMode the service reports for the template ('-': ignored). "
          "tick delay = distance of each capture to the job's nearest estimated tick "
          "(first capture + k x I), so up to one GOP of error; caplag = the service's "
          "CaptureLag; conn/s = new RTMP connections to the origin (nginx-rtmp naccepted), "
          "conn/job/tick = the same per job and tick (~1 per-tick, ~0 persistent); players = "
          "mean concurrent players.")
    for note in summary["notes"]:
        print(f"note: {note}")


CHROMIUM = "/usr/bin/chromium"  # Debian's, driven by Playwright as in the console tests
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
PLOT_SIZE = (720, 360)


def plot(summary: dict[str, Any], path: Path) -> list[Path]:
    """The chart as SVG (no dependency) or, for a ``.png`` path, as both: the SVG drawn by
    headless Chromium. The files written."""
    svg = path.with_suffix(".svg")
    plot_svg(summary, svg)
    if path.suffix.lower() != ".png":
        return [svg]
    svg_to_png(svg, path)
    return [svg, path]


def svg_to_png(svg: Path, png: Path, *, scale: int = 2) -> None:
    """Rasterize one of :func:`plot_svg`'s charts at ``scale``× its size."""
    from playwright.sync_api import sync_playwright

    width, height = PLOT_SIZE
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height},
                                    device_scale_factor=scale)
            page.goto(svg.resolve().as_uri())
            page.screenshot(path=str(png), clip={"x": 0, "y": 0, "width": width,
                                                 "height": height})
        finally:
            browser.close()


def plot_svg(summary: dict[str, Any], path: Path) -> None:
    """CPU per stream-minute and lag p99 against N, as a dependency-free SVG line chart."""
    points = summary["scaling"]
    if not points:
        return
    (width, height), (left, right, top, bottom) = PLOT_SIZE, (70, 70, 40, 50)
    plot_w, plot_h = width - left - right, height - top - bottom
    max_n = max(p["streams"] for p in points)
    max_cpu = max([p["cpu_s_per_stream_min"] for p in points]
                  + [summary.get(k) or 0 for k in ("ffmpeg_discard_cpu_s_per_stream_min",
                                                   "demux_floor_cpu_s_per_stream_min")]) * 1.15
    lags = [p["lag_p99_ms"] or 0 for p in points]
    max_lag = max(max(lags) * 1.15, 1.0)

    def x(n: float) -> float:
        return left + plot_w * n / max_n

    def y(value: float, top_value: float) -> float:
        return top + plot_h * (1 - value / top_value)

    def line(values: list[tuple[float, float]], colour: str, dashed: bool = False) -> str:
        d = " ".join(f"{x(n):.1f},{v:.1f}" for n, v in values)
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        return (f'<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{d}"/>'
                + "".join(f'<circle cx="{x(n):.1f}" cy="{v:.1f}" r="3" fill="{colour}"/>'
                          for n, v in values))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="20" font-size="14">livesnap, {summary["resolution"]}25, one snapshot '
        f'per {summary["interval_s"]:g} s: CPU per stream (blue) and lag p99 (red) vs jobs</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#1f77b4"/>',
        f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#d62728"/>',
        f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">jobs (N)</text>',
        f'<text x="14" y="{top + plot_h / 2}" fill="#1f77b4" transform="rotate(-90 14 '
        f'{top + plot_h / 2})" text-anchor="middle">CPU-s per stream-minute</text>',
        f'<text x="{width - 14}" y="{top + plot_h / 2}" fill="#d62728" transform="rotate(90 '
        f'{width - 14} {top + plot_h / 2})" text-anchor="middle">lag p99 (ms)</text>',
    ]
    for i in range(5):
        frac = i / 4
        parts.append(f'<text x="{left - 6}" y="{y(max_cpu * frac, max_cpu) + 4:.1f}" '
                     f'text-anchor="end" fill="#1f77b4">{max_cpu * frac:.2f}</text>')
        parts.append(f'<text x="{left + plot_w + 6}" y="{y(max_lag * frac, max_lag) + 4:.1f}" '
                     f'fill="#d62728">{max_lag * frac:.0f}</text>')
    for p in points:
        parts.append(f'<text x="{x(p["streams"]):.1f}" y="{top + plot_h + 16}" '
                     f'text-anchor="middle">{p["streams"]}</text>')
    for key, label in (("ffmpeg_discard_cpu_s_per_stream_min", "best ffmpeg"),
                       ("capture_path_cpu_s_per_stream_min", "livesnap capture path alone"),
                       ("demux_floor_cpu_s_per_stream_min", "PyAV demux floor")):
        if summary.get(key):
            level = y(summary[key], max_cpu)
            parts.append(f'<line x1="{left}" y1="{level:.1f}" x2="{left + plot_w}" '
                         f'y2="{level:.1f}" stroke="#999" stroke-dasharray="3 3"/>')
            parts.append(f'<text x="{left + 4}" y="{level - 4:.1f}" fill="#666">{label} '
                         f'({summary[key]:.2f})</text>')
    parts.append(line([(p["streams"], y(p["cpu_s_per_stream_min"], max_cpu)) for p in points],
                      "#1f77b4"))
    parts.append(line([(p["streams"], y(p["lag_p99_ms"] or 0, max_lag)) for p in points],
                      "#d62728", dashed=True))
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def print_table(summary: dict[str, Any]) -> None:
    mach = summary["machine"]
    print(f"\n{summary['date']}  {mach['cpu']} x{mach['cores']}, {mach['memory_gib']} GiB, "
          f"PyAV {mach['pyav']} (FFmpeg {mach['pyav_ffmpeg']}), {mach['ffmpeg_cli']}")
    print(f"{summary['resolution']}25 H.264 (B-frames, GOP 2 s) over {summary['distinct_streams']}"
          f" distinct stream(s), one snapshot per {summary['interval_s']:g} s, "
          f"{summary['window_s']:g} s window after {summary['warmup_s']:g} s warm-up\n")
    print(f"{'contender':16s} {'N':>4s} {'CPU-s/stream-min':>17s} {'cores':>6s} "
          f"{'MiB/stream':>10s}  notes")
    for m in summary["measurements"]:
        notes = ""
        if m["contender"] == "livesnap":
            x = m["extra"]
            notes = (f"[{x['variant']}] captures {x['captures']}/{x['expected_captures']}, missed "
                     f"{x['missed_ticks']}, lag p50/p99 {x['lag_p50_ms']}/{x['lag_p99_ms']} ms")
        else:
            notes = f"{m['processes_alive']} process(es) alive"
        print(f"{m['contender']:16s} {m['streams']:4d} {m['cpu_s_per_stream_min']:17.3f} "
              f"{m['cores']:6.2f} {m['rss_mib_per_stream']:10.1f}  {notes}")
    print(f"\nratios (ffmpeg / livesnap): fps {summary['ffmpeg_fps_over_livesnap']}, nokey "
          f"{summary['ffmpeg_nokey_over_livesnap']}, discard "
          f"{summary['ffmpeg_discard_over_livesnap']}; livesnap / demux floor "
          f"{summary['livesnap_over_demux_floor']}")
    if summary.get("capture_path_cpu_s_per_stream_min"):
        print(f"capture path alone: {summary['capture_path_cpu_s_per_stream_min']:.3f} "
              f"CPU-s/stream-min; best ffmpeg / capture path "
              f"{summary['ffmpeg_discard_over_capture_path']}")
    print(f"origin {summary['origin_cores']:.3f} core, publishers "
          f"{summary['publishers_cores']:.3f} core (charged to nobody)")
    print(f"knee: {summary['knee']}")
    for note in summary["notes"]:
        print(f"note: {note}")


def parse_variant(text: str) -> tuple[str, dict[str, str], bool]:
    """``NAME:KEY=VALUE,...`` -> (name, environment, callbacks on)."""
    name, _, rest = text.partition(":")
    pairs = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    callbacks = pairs.pop("callbacks", "on") != "off"
    if not name or name == "default":
        raise argparse.ArgumentTypeError("a variant needs a name other than 'default'")
    return name, pairs, callbacks


def parse_alongside(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in CONTENDERS[1:]]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"not a baseline: {', '.join(unknown)} (one of {', '.join(CONTENDERS[1:])})")
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: 2 jobs, short window, no fps baseline")
    parser.add_argument("--resolution", choices=("1080p", "720p"), default="1080p")
    parser.add_argument("--distinct", type=int, help="distinct live streams (publishers)")
    parser.add_argument("--streams", type=int, nargs="+", dest="scale",
                        help="livesnap job counts to measure (default: 20 40 80 ... 320)")
    parser.add_argument("--baseline-streams", type=int, help="processes per ffmpeg/floor baseline")
    parser.add_argument("--fps-streams", type=int, help="processes of the fps baseline")
    parser.add_argument("--warmup", type=float, help="seconds before a window")
    parser.add_argument("--window", type=float, help="seconds measured")
    parser.add_argument("--clip-seconds", type=int, default=30, help="length of the looped clip")
    parser.add_argument("--ready-share", type=float, default=1.0,
                        help="start measuring once this share of the jobs delivered a capture "
                             "(below 1 to measure an overloaded service)")
    parser.add_argument("--lag-limit-ms", type=float, default=1000.0,
                        help="lag p99 above this counts as saturated")
    parser.add_argument("--skip", type=lambda s: s.split(","), default=[],
                        help=f"comma-separated contenders to skip ({','.join(CONTENDERS)})")
    parser.add_argument("--only", type=lambda s: s.split(","), default=[],
                        help="comma-separated contenders to run (the rest are skipped)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for livesnap serve (repeatable)")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        metavar="NAME:KEY=VALUE,...",
                        help="also measure livesnap with this environment at each N, right "
                             "after the default (repeatable); callbacks=off submits the jobs "
                             "without a CallbackUrl")
    parser.add_argument("--alongside", type=parse_alongside, default=[],
                        metavar="CONTENDER,...",
                        help="run these baselines (N processes' worth, on the same streams) "
                             "through each livesnap window too: a ratio free of the drift "
                             "between windows (e.g. capture_path)")
    parser.add_argument("--plot", type=Path, metavar="FILE.png|FILE.svg",
                        help="write CPU per stream and lag p99 against N as a chart (SVG; "
                             "for FILE.png also the PNG, drawn by headless Chromium)")
    parser.add_argument("--keep-going", action="store_true",
                        help="measure every N even after saturation")
    sweep = parser.add_argument_group(
        "interval sweep", "--intervals runs the sweep instead of the cost comparison: at each "
        "interval, livesnap with N jobs (--streams, one value; default 20, quick 2) on a custom "
        "template per ConnectMode, then the best ffmpeg with fps=1/I, one process per job; "
        "--window is then the shortest window (default 60 s, quick 5 s)")
    sweep.add_argument("--intervals", nargs="?", const="", metavar="S,S,...",
                       help="TimeIntervals to sweep, whole seconds 5-3600 (default 5,15,60; "
                            "with --quick 5,10)")
    sweep.add_argument("--modes", metavar="MODE,...",
                       help="ConnectMode values to measure livesnap with, of "
                            f"{','.join(CONNECT_MODES)} (default persistent,per-tick)")
    sweep.add_argument("--no-callbacks", dest="sweep_callbacks", action="store_false",
                       help="livesnap's jobs get no CallbackUrl (default: callbacks to a "
                            "receiver in this process, as in the cost comparison)")
    sweep.add_argument("--window-ticks", type=float,
                       help="a window spans at least this many intervals (default 3, quick 1)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.distinct = args.distinct or (2 if quick else 8)
    if args.intervals is not None:
        parse_sweep_args(parser, args)
    elif args.modes is not None or args.window_ticks is not None:
        parser.error("--modes and --window-ticks need --intervals")
    args.scale = args.scale or ([2] if quick else [20, 40, 80, 120, 160, 200, 240, 320])
    args.baseline_streams = args.baseline_streams or (2 if quick else 20)
    args.fps_streams = args.fps_streams or (1 if quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if quick else 10.0)
    args.window = args.window if args.window is not None else (8.0 if quick else 30.0)
    unknown = (set(args.skip) | set(args.only)) - set(CONTENDERS)
    if unknown:
        parser.error(f"unknown contender(s): {', '.join(sorted(unknown))}")
    return args


def parse_sweep_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The sweep's defaults (``--quick``: 2 jobs, 5 and 10 s, one-tick windows) and checks."""
    quick = args.quick
    text = args.intervals or ("5,10" if quick else "5,15,60")
    try:
        args.intervals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--intervals: whole seconds, comma-separated, not {text!r}")
    if not args.intervals or any(not 5 <= v <= 3600 for v in args.intervals):
        parser.error("--intervals: each TimeInterval must be 5-3600 s (the API's range)")
    args.modes = (args.modes or "persistent,per-tick").split(",")
    unknown = set(args.modes) - set(CONNECT_MODES)
    if unknown or len(set(args.modes)) != len(args.modes):
        parser.error(f"--modes: each of {', '.join(CONNECT_MODES)} at most once")
    if args.scale and len(args.scale) != 1:
        parser.error("--intervals takes one --streams N")
    if args.variant or args.plot or args.only:
        parser.error("--variant, --plot and --only do not apply to --intervals")
    args.scale = args.scale or [2 if quick else 20]
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 10.0)
    args.window = args.window if args.window is not None else (5.0 if quick else 60.0)
    args.window_ticks = args.window_ticks if args.window_ticks is not None else (
        1.0 if quick else 3.0)
    args.origin_idle_window = 1.0 if quick else 10.0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: every process is stopped


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def log(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    busy = [p.info["cmdline"] for p in psutil.process_iter(["pid", "cmdline"])
            if p.info["pid"] != os.getpid() and p.info["cmdline"]
            and any("bench" in part for part in p.info["cmdline"][1:2])]
    if busy:
        log(f"warning: other benchmark processes are running: {busy}")
    if args.intervals is not None:
        summary = run_sweep(args, log)
        if args.json:
            print(json.dumps(summary, indent=1))
        else:
            print_sweep_table(summary)
        return 0
    summary = run(args, log)
    if args.plot:
        written = plot(summary, args.plot)
        log(f"plot written to {', '.join(str(p) for p in written)}")
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
