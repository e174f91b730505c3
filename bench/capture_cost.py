"""CPU and memory per stream: livesnap's StreamReader vs the best ffmpeg CLI.

One run does both, one after the other, on the same live 1080p25 stream
(x264 High, B-frames, GOP 2 s, looped into a private nginx-rtmp with
``-c copy``):

1. N ``StreamReader`` threads in this process, each capturing one keyframe
   every ``--interval`` seconds (JPEG from the YUV planes);
2. N processes of ``ffmpeg -discard:v nokey -skip_frame nokey -i URL
   -vf fps=1/5 -update 1 -y out.jpg`` (the cheapest ffmpeg in infra.md §2b).

For each: CPU-s per stream-minute (user+system over a ``--window`` after
``--warmup``; the input is real time, so wall time is stream time) and RSS
per stream. Reference figures (infra.md §2b, 2 vCPU EPYC, N=40): about 0.20
for the in-process capture path and 0.46 for that ffmpeg.

    .venv/bin/python bench/capture_cost.py --streams 20

The clip is generated once (about 35 s) and cached under .cache/bench/.
Every nginx and ffmpeg process started here is stopped before exiting.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import av
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.servers import RtmpOrigin

from livesnap.capture.source import (
    Captured,
    CaptureFailed,
    Connected,
    Disconnected,
    ReaderEvent,
    SourceOptions,
    StreamReader,
)

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
MIB = 1024 * 1024



# -- fixtures: clip, origin, publisher ---------------------------------------


def ensure_clip(seconds: int) -> Path:
    path = CACHE / f"src1080-{seconds}s-g50.flv"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"encoding {path.name} once (about {seconds // 2 + 5} s)...", flush=True)
    partial = path.with_suffix(".part.flv")
    subprocess.run(
        [
            *("ffmpeg", "-hide_banner", "-loglevel", "error", "-y"),
            *("-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-t", str(seconds)),
            *("-c:v", "libx264", "-g", "50", "-pix_fmt", "yuv420p", str(partial)),
        ],
        check=True,
    )
    partial.rename(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def nginx_origin() -> Iterator[tuple[int, psutil.Process]]:
    """The tests' nginx-rtmp origin (tests/support/servers.py): its port and master process."""
    with RtmpOrigin() as origin:
        assert origin.pid is not None
        yield origin.rtmp_port, psutil.Process(origin.pid)


@contextmanager
def running(args: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_processes([proc])


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def poll(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    if not poll(predicate, timeout):
        raise SystemExit(f"timed out waiting for {what}")


def playable(url: str) -> bool:
    opts = {"rw_timeout": "1000000", "analyzeduration": "0", "probesize": "32768"}
    try:
        with av.open(url, container_options=opts):
            return True
    except av.error.FFmpegError:
        return False


# -- the two contenders --------------------------------------------------------


class Never:
    """Capture nothing: what reading alone costs (the in-process floor)."""

    def on_keyframe(self, wall_time: float) -> bool:
        return False


class EveryInterval:
    """Capture the first keyframe at or after each tick of a fixed interval."""

    def __init__(self, interval: float, phase: float) -> None:
        self.interval = interval
        self.phase = phase
        self.next_tick: float | None = None

    def on_keyframe(self, wall_time: float) -> bool:
        if self.next_tick is None:
            self.next_tick = wall_time + self.phase
        if wall_time < self.next_tick:
            return False
        while self.next_tick <= wall_time:
            self.next_tick += self.interval
        return True


@dataclass
class Tally:
    """The readers' emit target; appending is all a reader thread pays."""

    events: list[tuple[float, ReaderEvent]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, event: ReaderEvent) -> None:
        with self.lock:
            self.events.append((time.monotonic(), event))

    def count(self, kind: type, since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for t, e in self.events if isinstance(e, kind) and t >= since)

    def lags_ms(self, since: float) -> list[float]:
        with self.lock:
            return [
                (e.frame.encoded_wall - e.frame.arrival_wall) * 1000
                for t, e in self.events
                if isinstance(e, Captured) and t >= since
            ]


@dataclass
class Result:
    label: str
    cpu_s: float
    window_s: float
    streams: int
    rss_per_stream_mib: float
    notes: str

    @property
    def per_stream_minute(self) -> float:
        return self.cpu_s / self.window_s * 60 / self.streams


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def measure_livesnap(
    url: str, args: argparse.Namespace, origin: psutil.Process, *, capture: bool = True
) -> Result:
    me = psutil.Process()
    rss_before = me.memory_info().rss
    tally = Tally()
    options = SourceOptions(rw_timeout_s=5.0)
    readers = [
        StreamReader(
            url,
            options=options,
            selector=(
                EveryInterval(args.interval, phase=i * args.interval / args.streams)
                if capture
                else Never()
            ),
            emit=tally,
            name=f"bench-{i}",
        )
        for i in range(args.streams)
    ]
    for reader in readers:
        reader.start()
    try:
        wait_for(lambda: tally.count(Connected) == args.streams, 30, "all readers connected")
        time.sleep(args.warmup)
        origin_procs = [origin, *origin.children()]
        cpu0, origin0, t0 = cpu_seconds([me]), cpu_seconds(origin_procs), time.monotonic()
        time.sleep(args.window)
        cpu1, origin1, t1 = cpu_seconds([me]), cpu_seconds(origin_procs), time.monotonic()
        rss_after = me.memory_info().rss
    finally:
        for reader in readers:
            reader.stop()
        for reader in readers:
            reader.join(10)
    lags = sorted(tally.lags_ms(since=t0))
    captures = len(lags)
    expected = args.streams * args.window / args.interval if capture else 0
    p50 = statistics.median(lags) if lags else float("nan")
    p99 = lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))] if lags else float("nan")
    notes = (
        f"captures {captures} in window (expect ~{expected:.0f}), "
        f"failed {tally.count(CaptureFailed)}, disconnects before the end {_early(tally, t1)}; "
        f"lag p50 {p50:.1f} ms p99 {p99:.1f} ms; origin {(origin1 - origin0) / (t1 - t0):.3f} core"
    )
    if not capture:
        notes += "; RSS understated (memory kept from the capture phase is reused)"
    return Result(
        "livesnap StreamReader (threads, one process)"
        if capture
        else "floor: same readers, selector never captures",
        cpu1 - cpu0,
        t1 - t0,
        args.streams,
        (rss_after - rss_before) / args.streams / MIB,
        notes,
    )


def _early(tally: Tally, window_end: float) -> int:
    with tally.lock:
        return sum(1 for t, e in tally.events if isinstance(e, Disconnected) and t < window_end)


def measure_ffmpeg(url: str, args: argparse.Namespace, workdir: Path) -> Result:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.streams):
            out = workdir / f"ffmpeg-{i}.jpg"
            procs.append(
                subprocess.Popen(
                    [
                        *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"),
                        *("-discard:v", "nokey", "-skip_frame", "nokey", "-i", url),
                        *("-vf", f"fps=1/{args.interval:g}", "-update", "1", "-y", str(out)),
                    ],
                    stdin=subprocess.DEVNULL,
                )
            )
        ps = [psutil.Process(p.pid) for p in procs]
        first_jpegs = [workdir / f"ffmpeg-{i}.jpg" for i in range(args.streams)]
        wait_for(lambda: all(p.exists() for p in first_jpegs), 30, "every ffmpeg's first JPEG")
        time.sleep(args.warmup)
        cpu0, t0 = cpu_seconds(ps), time.monotonic()
        time.sleep(args.window)
        cpu1, t1 = cpu_seconds(ps), time.monotonic()
        rss = statistics.mean(p.memory_info().rss for p in ps)
        alive = sum(1 for p in procs if p.poll() is None)
    finally:
        stop_processes(procs)
    return Result(
        "ffmpeg -discard:v nokey -skip_frame nokey (one process per stream)",
        cpu1 - cpu0,
        t1 - t0,
        args.streams,
        rss / MIB,
        f"{alive}/{args.streams} still running at the end of the window",
    )


# -- main ----------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=20, help="readers / ffmpeg processes")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between captures")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--window", type=float, default=30.0, help="seconds measured")
    parser.add_argument("--clip-seconds", type=int, default=60, help="length of the 1080p clip")
    parser.add_argument("--skip-ffmpeg", action="store_true", help="only measure livesnap")
    parser.add_argument(
        "--floor", action="store_true", help="also measure readers that never capture"
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    for tool in ("nginx", "ffmpeg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found")
    clip = ensure_clip(args.clip_seconds)
    print(f"load average before start: {psutil.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="livesnap-bench-") as tmp:
        workdir = Path(tmp)
        with nginx_origin() as (port, origin):
            url = f"rtmp://127.0.0.1:{port}/live/bench"
            publisher = [
                *("ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re"),
                *("-stream_loop", "-1", "-i", str(clip), "-c", "copy", "-f", "flv", url),
            ]
            with running(publisher):
                wait_for(lambda: playable(url), 20, "the stream to be playable")
                results = [measure_livesnap(url, args, origin)]
                if args.floor:
                    results.append(measure_livesnap(url, args, origin, capture=False))
                if not args.skip_ffmpeg:
                    results.append(measure_ffmpeg(url, args, workdir))
    report(results, args)
    return 0


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\n{args.streams} streams of 1080p25 (GOP 2 s), one capture every {args.interval:g} s, "
        f"{args.window:g} s window after {args.warmup:g} s warm-up"
    )
    for r in results:
        print(
            f"  {r.label}:\n"
            f"    {r.per_stream_minute:.3f} CPU-s/stream-min "
            f"({r.cpu_s:.2f} CPU-s in {r.window_s:.1f} s = {r.cpu_s / r.window_s:.3f} core), "
            f"RSS {r.rss_per_stream_mib:.1f} MiB/stream\n"
            f"    {r.notes}"
        )
    if not args.skip_ffmpeg:
        ratio = results[-1].per_stream_minute / results[0].per_stream_minute
        print(f"  ffmpeg / livesnap CPU ratio: {ratio:.2f}x")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
