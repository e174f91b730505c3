"""CPU per snapshot after the JPEG exists: storage write, file record, status, callback.

The whole single-node service runs in this process (``build_service``: SQLite, local-disk
storage, the callback dispatcher), with N started jobs on the system template (5 s, an
overwrite and a sequence object per capture). Only the stream reader is replaced: each job's
reader is a thread that "receives" a keyframe every ``--gop`` seconds, asks the job's real
tick schedule whether to keep it, and hands over the same ready JPEG (a 1080p picture) when
it says yes. So every CPU-second this process spends is the per-snapshot path (and the idle
service around it), and nothing of reading or decoding. Callbacks go to a receiver in a
child process that answers 200 (its CPU is not counted).

Reported, over a ``--window`` after ``--warmup``: snapshots recorded, callbacks received,
and the process's CPU (user + system) per snapshot, gross and net of the idle service
(the same N jobs for the same time with readers that keep nothing, measured first in the
same run). ``--no-callbacks`` submits the jobs without a CallbackUrl.

    .venv/bin/python bench/snapshot_path.py                  # 200 jobs, 40 snapshots/s
    .venv/bin/python bench/snapshot_path.py --jobs 100 --json
    .venv/bin/python bench/snapshot_path.py --quick          # ~20 s smoke run

Profile the path with py-spy while it runs (``--window 60`` and ``py-spy record --pid``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.server
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import simplejpeg

import livesnap.capture.shared as shared_module
from livesnap.capture.encode import EncodedImage
from livesnap.capture.source import Captured, CapturedFrame, Connected, Disconnected, Tap
from livesnap.config import AccessKey, KeyRing, Settings
from livesnap.jobs.models import JobQuery, JobSpec, JobStatus, StorageTarget, StorageType
from livesnap.node.service import build_service

ACCOUNT = "bench"


def picture() -> bytes:
    """A 1080p JPEG as livesnap writes it (q85 from the YUV planes) of ffmpeg's testsrc2, the
    benchmark clip's picture (about 96 KB)."""
    import numpy as np

    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=1",
         "-frames:v", "1", "-pix_fmt", "yuv420p", "-f", "rawvideo", "-"],
        check=True, capture_output=True).stdout
    y = np.frombuffer(raw, np.uint8, 1920 * 1080).reshape(1080, 1920)
    u = np.frombuffer(raw, np.uint8, 960 * 540, 1920 * 1080).reshape(540, 960)
    v = np.frombuffer(raw, np.uint8, 960 * 540, 1920 * 1080 + 960 * 540).reshape(540, 960)
    return bytes(simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=85))


class SyntheticReader:
    """Stands in for ``StreamReader`` under the stream hub: keyframes every ``gop`` seconds,
    no network, no decode. Each bench job has a stream of its own, so nothing joins it."""

    gop_s = 2.0
    keep = True
    image: EncodedImage | None = None

    def __init__(self, url: str, *, tap: Tap, on_closed: Callable[[Any], None] | None = None,
                 **_: Any) -> None:
        self.tap, self._on_closed = tap, on_closed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.keyframes = 0

    @property
    def stats(self) -> Any:
        return type("Stats", (), {"keyframes": self.keyframes})()

    def start(self) -> None:
        self._thread.start()

    def attach(self, tap: Tap) -> bool:
        return False

    def detach(self, tap: Tap) -> bool:
        self._stop.set()
        return False

    def restart(self, reason: str) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        tap = self.tap
        tap.emit(Connected(codec="h264", width=1920, height=1080, opened_s=0.01))
        phase = random.random() * self.gop_s
        while not self._stop.wait(phase):
            phase = self.gop_s
            now = time.time()
            self.keyframes += 1
            wanted = tap.selector.on_keyframe(now)
            if tap.feedback is not None:
                tap.feedback.take_missed()
            if not (wanted and self.keep) and not tap.requested.is_set():
                continue
            tap.requested.clear()
            if tap.feedback is not None and wanted:
                tap.feedback.accepted()
            assert self.image is not None
            tap.emit(Captured(CapturedFrame(image=self.image, stream_time=now,
                                            arrival_wall=now, encoded_wall=now)))
        if self._on_closed is not None:
            self._on_closed(self)
        tap.emit(Disconnected("stopped", was_live=True))


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    count = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", "0")))
        type(self).count += 1
        self._answer(b"ok")

    def do_GET(self) -> None:
        self._answer(str(type(self).count).encode())

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        return None


def _receive(port: Any) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    port.put(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    """A callback receiver in a child process; yields its URL."""
    ctx = multiprocessing.get_context("spawn")
    ports: Any = ctx.Queue()
    proc = ctx.Process(target=_receive, args=(ports,), daemon=True)
    proc.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=30)}/cb"
    finally:
        proc.terminate()
        proc.join(5)


def received(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(answer.read())


@dataclass
class Phase:
    name: str
    seconds: float
    cpu_s: float
    snapshots: int
    callbacks: int
    system_s: float = 0.0
    ctx_switches: int = 0

    @property
    def ms_per_snapshot(self) -> float:
        return 1000 * self.cpu_s / self.snapshots if self.snapshots else float("nan")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    SyntheticReader.gop_s = args.gop
    SyntheticReader.image = EncodedImage(data=picture(), width=1920, height=1080,
                                         content_type="image/jpeg")
    shared_module.StreamReader = SyntheticReader  # type: ignore[misc,assignment]
    proc = psutil.Process()
    results: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="livesnap-bench-") as tmp, receiver() as url:
        settings = Settings(data_dir=Path(tmp), max_jobs_per_node=args.jobs + 10,
                            max_jobs_per_account=args.jobs + 10, log_level="WARNING")
        keys = KeyRing([AccessKey(id="bench", secret="x" * 16, account=ACCOUNT)])
        async with build_service(settings, keys) as service:
            manager = service.manager
            for i in range(args.jobs):
                spec = JobSpec(
                    name=f"bench-{i}", template_id="system",
                    stream_url=f"rtmp://127.0.0.1/live/s{i}", stream_type="live",
                    storage=StorageTarget(storage_type=StorageType.LOCAL, endpoint="local",
                                          bucket="bench"),
                    callback_url=None if args.no_callbacks else url,
                )
                await manager.submit_job(ACCOUNT, spec)
            await _wait_started(manager, args.jobs)

            async def count() -> tuple[int, int]:
                total, no = 0, 0
                while no * 100 < args.jobs:
                    no += 1
                    page = await manager.list_jobs(ACCOUNT, _every_job(page_size=100, page_no=no))
                    total += sum(j.snapshot_count for j in page.items)
                calls = 0 if args.no_callbacks else await asyncio.to_thread(received, url)
                return total, calls

            async def measure(name: str, profile: str | None = None) -> Phase:
                await asyncio.sleep(args.warmup)
                snaps0, calls0 = await count()
                cpu0, t0 = _cpu(proc), time.monotonic()
                sys0, ctx0 = proc.cpu_times().system, sum(proc.num_ctx_switches())
                spy = _py_spy(profile, args.window) if profile else None
                await asyncio.sleep(args.window)
                if spy is not None:
                    await asyncio.to_thread(spy.wait, 60)
                cpu1, t1 = _cpu(proc), time.monotonic()
                sys1, ctx1 = proc.cpu_times().system, sum(proc.num_ctx_switches())
                snaps1, calls1 = await count()
                phase = Phase(name, t1 - t0, cpu1 - cpu0, snaps1 - snaps0, calls1 - calls0,
                              sys1 - sys0, ctx1 - ctx0)
                results.append(phase)
                print(f"{name:>10}: {phase.snapshots} snapshots, {phase.callbacks} callbacks, "
                      f"{phase.cpu_s:.2f} CPU-s ({phase.system_s:.2f} system, "
                      f"{phase.ctx_switches} context switches) in {phase.seconds:.0f} s"
                      + (f" = {phase.ms_per_snapshot:.2f} ms/snapshot" if phase.snapshots
                         else ""), file=sys.stderr)
                return phase

            SyntheticReader.keep = False
            idle = await measure("idle")
            SyntheticReader.keep = True
            busy = await measure("snapshots", args.profile)
    net_cpu = busy.cpu_s - idle.cpu_s * busy.seconds / idle.seconds
    return {
        "jobs": args.jobs, "callbacks": not args.no_callbacks,
        "phases": [asdict(p) for p in results],
        "ms_per_snapshot_gross": round(busy.ms_per_snapshot, 3),
        "ms_per_snapshot_net_of_idle": round(1000 * net_cpu / busy.snapshots, 3)
        if busy.snapshots else None,
        "idle_cores": round(idle.cpu_s / idle.seconds, 4),
    }


def _py_spy(path: str, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy sampling this process's GIL holder (Python CPU) for ``seconds``, raw format."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--gil", "--rate", "250",
                             "--duration", str(int(seconds) - 1), "--format", "raw",
                             "--nonblocking", "-o", path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _every_job(**query: Any) -> JobQuery:
    return JobQuery(start_ms=0, end_ms=2**62, **query)


async def _wait_started(manager: Any, jobs: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        page = await manager.list_jobs(ACCOUNT, _every_job(page_size=1, page_no=1,
                                                           status=JobStatus.STARTED))
        if page.total >= jobs:
            return
        await asyncio.sleep(0.5)
    raise SystemExit(f"only {page.total} of {jobs} jobs started within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gop", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--no-callbacks", action="store_true")
    parser.add_argument("--quick", action="store_true", help="20 jobs, 5 s windows")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy (--gil, raw format) the snapshot window into FILE")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.warmup, args.window = 20, 6.0, 6.0
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['ms_per_snapshot_gross']} ms CPU per snapshot "
              f"({out['ms_per_snapshot_net_of_idle']} net of the idle service, "
              f"idle {out['idle_cores']} cores)")


if __name__ == "__main__":
    main()
