"""API throughput and latency under load, and what that load does to capture, in one run.

One run starts a private nginx-rtmp origin with a few looping publishers of a small clip
(``bench/streams.py``'s machinery), one ``livesnap serve`` subprocess (SQLite, local disk,
callbacks to a receiver in this process), and N jobs (default 100) spread over the streams at
the system template's 5 s interval. Then it measures, one window after the other:

* ``capture``: the jobs capture, nothing else happens (the capture baseline);
* ``capture+load``: the same, while load processes hammer the API (closed loop);
* ``capture+paced``: the same, with the API load paced at ``--paced-rate`` requests/s (full mode);
* ``load``: every job stopped (jobs and files still stored), the same closed-loop load (the API
  baseline). The full mode takes it before the capture windows and again after them.

The load is real signed HTTP (ACS3-HMAC-SHA256 and RPC HMAC-SHA1, alternating, every request
with a fresh nonce, so every signature is verified) over keep-alive connections, from separate
processes (``--clients`` processes × ``--connections`` connections each), so the client's CPU is
not charged to the server. The requests cycle through GetLiveSnapshotJob (a random job),
ListLiveSnapshotJobs (first page of 10) and ListLiveSnapshotFiles (a random job, Limit 10).

Server CPU is read from ``/proc/<pid>/stat`` of the server and its children (with
``--env LIVESNAP_ENGINE=process``, the capture process) and split by thread from
``/proc/<pid>/task``: the server's main thread (the event loop: the API, and in one process
also records and callbacks), the SQLite worker threads (told by
their OS name, ``ls-sqlite``: every database transaction, the API's reads included), the other
threads that were running before any job was submitted, and the threads started since (stream
readers: read, decode, JPEG; plus file-write and DNS workers).

Capture figures per window: CPU-s per stream-minute of the whole server and of the capture
threads, captures, missed ticks, the session's capture lag (keyframe arrival → JPEG handed to
storage, ``CaptureLag``) and the record lag (arrival → file record written, from callbacks).
Every figure under load is reported as a ratio to the capture baseline of the same run.

    .venv/bin/python bench/api_load.py --quick           # < 1 min: 8 jobs, short windows
    .venv/bin/python bench/api_load.py --json            # full: 100 jobs, 2 rounds, ~6 min

Every process started here is stopped before it exits. Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psutil

ROOT = Path(__file__).resolve().parent.parent
for _path in (ROOT, ROOT / "bench"):  # tests/support and bench/streams.py are shared
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import runqueue  # noqa: E402
import streams as sb  # noqa: E402
from tests.support.service import LivesnapServer, ice_client  # noqa: E402
from tests.support.signing import acs3_headers, rpc_query  # noqa: E402

from livesnap.store.sql import SQLITE_THREAD_NAME  # noqa: E402

ACTIONS = ("GetLiveSnapshotJob", "ListLiveSnapshotJobs", "ListLiveSnapshotFiles")
SIGNATURE_CODES = frozenset({
    "IncompleteSignature", "SignatureDoesNotMatch", "SignatureNonceUsed",
    "InvalidTimeStamp.Format", "InvalidTimeStamp.Expired", "InvalidAccessKeyId.NotFound",
})  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")
EXECUTOR_SLACK = 8  # asyncio's default executor may start threads while the jobs stop
KEY, SECRET = "testid", "testsecret"  # tests.support.service.KEYS


# -- the load generator (runs in its own processes) -----------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoadSpec:
    """What one load process does; passed to it as JSON on the command line."""

    port: int
    job_ids: list[str]
    files_since: str  # StartTime of ListLiveSnapshotFiles (ISO)
    start_at: float  # wall time: requests completed before it are warm-up, not counted
    end_at: float
    connections: int
    rate: float  # requests/s of this process, over all its connections; 0 = closed loop
    seed: int
    nice: int = 0  # how much less CPU this process gets than the server when both want it


def _iso_now() -> str:
    return datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_request(spec: LoadSpec, n: int, rng: random.Random) -> tuple[str, str, dict[str, str]]:
    """(action, path with query, headers) of the ``n``-th request: signed, fresh nonce."""
    action = ACTIONS[n % len(ACTIONS)]
    if action == "GetLiveSnapshotJob":
        params = {"JobId": rng.choice(spec.job_ids)}
    elif action == "ListLiveSnapshotJobs":
        params = {"PageNo": "1", "PageSize": "10"}
    else:
        params = {"JobId": rng.choice(spec.job_ids), "StartTime": spec.files_since,
                  "EndTime": _iso_now(), "Limit": "10"}
    if (n // len(ACTIONS)) % 2 == 0:  # every action is sent with both schemes
        query = rpc_query(action, params, key_id=KEY, secret=SECRET)
        return action, f"/?{query}", {"host": f"127.0.0.1:{spec.port}"}
    query = urlencode(params)
    headers = acs3_headers(action, method="GET", host=f"127.0.0.1:{spec.port}",
                           raw_query=query, key_id=KEY, secret=SECRET)
    return action, f"/?{query}", headers


@dataclass
class LoadTally:
    """What one load process saw inside the window."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ACTIONS})
    status: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    connection_errors: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, action: str, status: int, code: str | None, latency_ms: float) -> None:
        with self.lock:
            self.latencies_ms[action].append(round(latency_ms, 3))
            self.status[str(status)] += 1
            if code:
                self.codes[code] += 1


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body).get("Code") or "?")
    except (ValueError, AttributeError):
        return "not-json"


def _connection_loop(spec: LoadSpec, index: int, tally: LoadTally) -> None:
    """One keep-alive connection: send, read, repeat until ``end_at`` (paced if ``rate``)."""
    rng = random.Random(spec.seed * 1000 + index)
    period = spec.connections / spec.rate if spec.rate > 0 else 0.0
    due = time.time() + rng.random() * period  # spread the paced connections
    conn = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=60)
    n = index
    while time.time() < spec.end_at:
        if period:
            time.sleep(max(0.0, due - time.time()))
        action, path, headers = build_request(spec, n, rng)
        n += spec.connections
        # paced: latency from the due time, so a server that falls behind shows it
        began = due if period else time.time()
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            tally.connection_errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", spec.port, timeout=60)
            continue
        finally:
            due += period
        done = time.time()
        if spec.start_at <= began and done <= spec.end_at:
            code = None if response.status == 200 else _error_code(body)
            tally.add(action, response.status, code, (done - began) * 1000)
    conn.close()


def lower_priority(nice: int) -> None:
    """Run this process (started in a session of its own) at ``nice``. With autogroups (Linux's
    default for desktop kernels and this machine) CPU is shared between sessions first and a
    thread's nice value only orders it within its own session, so the session's nice is set as
    well (``/proc/self/autogroup``; raising it needs no privilege)."""
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        autogroup.write_text(str(nice))


def load_worker(spec: LoadSpec) -> dict[str, Any]:
    if spec.nice:
        lower_priority(spec.nice)
    tally = LoadTally()
    threads = [threading.Thread(target=_connection_loop, args=(spec, i, tally), daemon=True)
               for i in range(spec.connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times = os.times()
    return {"latencies_ms": tally.latencies_ms, "status": dict(tally.status),
            "codes": dict(tally.codes), "connection_errors": tally.connection_errors,
            "cpu_s": times.user + times.system}


# -- server CPU from /proc ---------------------------------------------------------------------


def _stat_ticks(path: Path) -> int:
    """utime + stime (clock ticks) of a /proc stat file; 0 if the task has gone."""
    try:
        text = path.read_text()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and parentheses
    return int(fields[11]) + int(fields[12])


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic
    total_ticks: int  # the whole process, exited threads included
    threads: dict[int, int]  # tid -> ns on a CPU
    store_tids: frozenset[int] = frozenset()  # the SQLite worker threads (by their OS name)
    waits: dict[int, int] = field(default_factory=dict)  # tid -> ns runnable but not running


def sample_cpu(pid: int) -> CpuSample:
    """The server and its child processes (``LIVESNAP_ENGINE=process``: the capture process),
    thread by thread (thread ids are unique across processes)."""
    pids = [pid]
    with contextlib.suppress(psutil.Error):
        pids = [member.pid for member in sb.family([psutil.Process(pid)])]
    threads, store, waits, total = {}, set(), {}, 0
    for one in pids:
        proc = Path(f"/proc/{one}")
        total += _stat_ticks(proc / "stat")
        with contextlib.suppress(OSError):
            for task in (proc / "task").iterdir():
                tid = int(task.name)
                try:
                    # schedstat: ns on a CPU, ns waiting on a run queue, time slices. The
                    # clock ticks of stat are 10 ms: a quick run's few small readers use a
                    # couple of them in a window, sometimes none.
                    on_cpu, waiting = (task / "schedstat").read_text().split()[:2]
                    threads[tid], waits[tid] = int(on_cpu), int(waiting)
                except (OSError, ValueError):
                    threads[tid] = _stat_ticks(task / "stat") * 1_000_000_000 // CLK_TCK
                with contextlib.suppress(OSError):
                    if (task / "comm").read_text().strip() == SQLITE_THREAD_NAME:
                        store.add(int(task.name))
    return CpuSample(time.monotonic(), total, threads, frozenset(store), waits)


def cpu_split(pid: int, startup: set[int], a: CpuSample, b: CpuSample) -> dict[str, float]:
    """CPU-seconds between two samples: total, main thread, SQLite workers, other start-up
    threads, and the threads started later but the SQLite workers (the stream readers)."""

    def delta(tids: Callable[[int], bool]) -> float:
        return sum(b.threads[t] - a.threads.get(t, 0) for t in b.threads if tids(t)) / 1e9

    store = b.store_tids
    return {
        "total": (b.total_ticks - a.total_ticks) / CLK_TCK,
        "main": delta(lambda t: t == pid),
        "store_threads": delta(lambda t: t in store),
        "startup_threads": delta(lambda t: t != pid and t in startup and t not in store),
        "capture_threads": delta(lambda t: t not in startup and t != pid and t not in store),
        # how long the capture threads were ready to run but had no CPU (scheduling delay)
        "capture_threads_wait": sum(
            b.waits[t] - a.waits.get(t, 0) for t in b.waits
            if t not in startup and t != pid and t not in store) / 1e9,
        "threads_at_end": len(b.threads),
        "span_s": b.at - a.at,
    }


# -- one run -----------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured window."""

    name: str
    capture: bool
    load: str  # "none" | "closed" | "paced"
    t0: float = 0.0  # wall
    t1: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)
    capture_figures: dict[str, Any] = field(default_factory=dict)
    runqueue: dict[str, float] = field(default_factory=dict)  # --perf-sched: waits by cause


@dataclass
class Rig:
    """The running service and what the phases need from it."""

    server: LivesnapServer
    receiver: sb.CallbackReceiver
    startup_tids: set[int]
    job_ids: list[str]
    files_since: str
    submitted_at: float
    idle_later_threads: int = 0  # threads started since start-up that are not readers
    labels: dict[int, str] = field(default_factory=dict)  # pid -> role, for --perf-sched
    perf_sched_s: float = 0.0
    drains_s: list[float] = field(default_factory=list)  # record backlog after each stop

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid


def run_load(rig: Rig, args: argparse.Namespace, phase: Phase, seconds: float) -> None:
    """Start the load processes, measure the server over their window, collect their tallies."""
    rate = args.paced_rate / args.clients if phase.load == "paced" else 0.0
    start_at = time.time() + args.client_start_s
    procs = []
    for i in range(args.clients):
        spec = LoadSpec(port=rig.server.port, job_ids=rig.job_ids, files_since=rig.files_since,
                        start_at=start_at, end_at=start_at + seconds,
                        connections=args.connections, rate=rate, seed=args.seed + i,
                        nice=args.client_nice)
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--load-worker", json.dumps(spec.__dict__)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=args.client_nice > 0))  # a session is an autogroup
    try:
        time.sleep(max(0.0, start_at - time.time()))
        measure_window(rig, phase, seconds, {p.pid: "load clients" for p in procs})
        tallies = [_collect(p, seconds) for p in procs]
    finally:
        sb.stop_all(procs)
    phase.api = summarize_api(tallies, phase.t1 - phase.t0, phase.cpu)


def _collect(proc: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=seconds + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load process failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return json.loads(out)


def measure_window(rig: Rig, phase: Phase, seconds: float,
                   labels: dict[int, str] | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="livesnap-perf-") as tmp:
        perf = None
        if rig.perf_sched_s > 0 and phase.capture:
            perf = runqueue.record(Path(tmp) / "sched.data", min(rig.perf_sched_s, seconds))
        a, w0 = sample_cpu(rig.pid), time.time()
        time.sleep(seconds)
        b, w1 = sample_cpu(rig.pid), time.time()
        phase.t0, phase.t1 = w0, w1
        phase.cpu = cpu_split(rig.pid, rig.startup_tids, a, b)
        if perf is not None:
            phase.runqueue = perf_blame(rig, perf, Path(tmp) / "sched.data", labels or {})


def perf_blame(rig: Rig, perf: subprocess.Popen[bytes], data: Path,
               labels: dict[int, str]) -> dict[str, float]:
    """The capture threads' run-queue wait in the window, per second, by what ran instead."""
    _, err = perf.communicate(timeout=rig.perf_sched_s + 60)
    if perf.returncode != 0:
        raise RuntimeError(f"perf sched record failed: {err.decode().strip()[-500:]}")
    server = psutil.Process(rig.pid)
    children = {p.pid for p in sb.family([server]) if p.pid != rig.pid}
    # the capture's threads: the capture process's, or in one process the whole server's
    watched = children or {rig.pid}
    roles = {**rig.labels, **labels}
    if children:
        roles[rig.pid] = "API process"
    return runqueue.per_second(runqueue.blame(data, watched, roles))


def summarize_api(tallies: list[dict[str, Any]], span: float, cpu: dict[str, float]) -> dict:
    per_action = {a: [x for t in tallies for x in t["latencies_ms"][a]] for a in ACTIONS}
    every = [x for xs in per_action.values() for x in xs]
    status: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    for tally in tallies:
        status.update(tally["status"])
        codes.update(tally["codes"])
    server_cores = cpu["total"] / cpu["span_s"]
    return {
        "requests": len(every),
        "req_per_s": round(len(every) / span, 1),
        "server_cores": round(server_cores, 3),
        "req_per_s_per_server_core": round(len(every) / cpu["total"], 1) if cpu["total"] else None,
        "p50_ms": _round(sb.percentile(every, 50)),
        "p99_ms": _round(sb.percentile(every, 99)),
        "max_ms": _round(sb.percentile(every, 100)),
        "by_action": {a: {"requests": len(xs), "p50_ms": _round(sb.percentile(xs, 50)),
                          "p99_ms": _round(sb.percentile(xs, 99))}
                      for a, xs in per_action.items()},
        "status": dict(status),
        "server_errors_5xx": sum(n for s, n in status.items() if s.startswith("5")),
        "signature_failures": sum(n for c, n in codes.items() if c in SIGNATURE_CODES),
        "throttled": codes.get("Throttling.User", 0),
        "error_codes": dict(codes),
        "connection_errors": sum(t["connection_errors"] for t in tallies),
        "client_cores": round(sum(t["cpu_s"] for t in tallies) / span, 3),
    }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


# -- jobs ---------------------------------------------------------------------------------------


def submit_jobs(rig_server: LivesnapServer, urls: list[str], callback_url: str,
                workers: int = 8) -> dict[str, float]:
    """Submit one job per URL through the official SDK (in parallel); job id -> submit time."""
    from alibabacloud_ice20201109 import models as m

    output = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
        storage_type="oss", endpoint="oss-bench.example.com", bucket="bench")

    def submit(i: int) -> tuple[str, float]:
        client = ice_client(rig_server.endpoint)
        body = client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name=f"load-{i}", template_id="system", snapshot_output=output,
            callback_url=callback_url,
            stream_input=m.SubmitLiveSnapshotJobRequestStreamInput(type="rtmp", url=urls[i]),
        )).body
        return body.job_id, time.time()

    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(submit, range(len(urls))))


def command_jobs(server: LivesnapServer, job_ids: list[str], command: str,
                 workers: int = 8) -> None:
    """``start`` or ``stop`` every job (``start`` probes each stream, hence in parallel)."""
    from alibabacloud_ice20201109 import models as m

    def send(job_id: str) -> None:
        ice_client(server.endpoint).send_live_snapshot_job_command(
            m.SendLiveSnapshotJobCommandRequest(job_id=job_id, command=command))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(send, job_ids))


def wait_all_capturing(rig: Rig, since: float, timeout: float) -> None:
    """Until every job has delivered a capture callback made after ``since`` (wall time)."""
    deadline = time.monotonic() + timeout
    want = set(rig.job_ids)
    since_ms = since * 1000
    while True:
        have = {e["JobId"] for _, e in rig.receiver.captured() if e["CreateTimestamp"] >= since_ms}
        if want <= have:
            return
        if time.monotonic() > deadline or rig.server.proc is None \
                or rig.server.proc.poll() is not None:
            raise RuntimeError(f"only {len(want & have)}/{len(want)} jobs captured within "
                               f"{timeout:.0f} s; server log tail:\n{rig.server.log()[-3000:]}")
        time.sleep(0.2)


def stream_connections(rig: Rig) -> int:
    """The server's ``livesnap_stream_connections`` (its capture processes' included)."""
    with urllib.request.urlopen(f"http://{rig.server.endpoint}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return round(sum(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("livesnap_stream_connections ")))


def later_threads(rig: Rig) -> int:
    sample = sample_cpu(rig.pid)
    return len(set(sample.threads) - rig.startup_tids - {rig.pid} - sample.store_tids)


def wait_capture_stopped(rig: Rig, timeout: float = 30.0) -> None:
    """Until the threads started for the jobs have ended (the readers are gone).

    Worker threads started on demand (file writes, the readers' joins, callback DNS) come
    and go; they are at most a few, against one reader per job.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if later_threads(rig) <= rig.idle_later_threads + EXECUTOR_SLACK:
            return
        time.sleep(0.5)
    sample = sample_cpu(rig.pid)
    left = set(sample.threads) - rig.startup_tids - {rig.pid} - sample.store_tids
    names = Counter(_thread_name(tid) for tid in left)
    raise RuntimeError(f"the stopped jobs' reader threads did not end: {len(left)} "
                       f"threads, {rig.idle_later_threads} expected: {dict(names)}")


def _thread_name(tid: int) -> str:
    """The OS name of a thread of any process (``/proc/<tid>`` works for thread ids too)."""
    try:
        status = Path(f"/proc/{tid}/status").read_text()
    except OSError:
        return "?"
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    return f"{fields.get('Name', '?').strip()} in {fields.get('Tgid', '?').strip()}"


def drain_records(rig: Rig, log: Callable[[str], None], quiet_s: float = 5.0,
                  timeout: float = 600.0) -> float:
    """Seconds until no capture callback has come for ``quiet_s`` (the jobs are stopped)."""
    start = time.monotonic()
    count, changed = len(rig.receiver.captured()), start
    while time.monotonic() - changed < quiet_s and time.monotonic() - start < timeout:
        time.sleep(0.5)
        now = len(rig.receiver.captured())
        if now != count:
            count, changed = now, time.monotonic()
    waited = changed - start
    log(f"  records and callbacks of the stopped jobs drained {waited:.1f} s after the stop")
    return waited


# -- capture figures, from the records ------------------------------------------------------------


def capture_figures(rig: Rig, phases: list[Phase], n: int) -> None:
    """Per capture window: captures, missed ticks, capture lag and record lag, from the records."""
    now = time.time()
    files = {job: sb.list_files(rig.server, job, rig.submitted_at - 5, now + 5)
             for job in rig.job_ids}
    events = rig.receiver.captured()
    for phase in phases:
        if not phase.capture:
            continue
        t0_ms, t1_ms = int(phase.t0 * 1000), int(phase.t1 * 1000)
        stamps = {j: [f["CreateTimestamp"] for f in fs] for j, fs in files.items()}
        inside = [f for fs in files.values() for f in fs if t0_ms <= f["CreateTimestamp"] <= t1_ms]
        lags = [f["CaptureLag"] for f in inside if f.get("CaptureLag") is not None]
        records = [sb._epoch_ms(e["EventTime"]) - e["CreateTimestamp"] for _, e in events
                   if t0_ms <= e["CreateTimestamp"] <= t1_ms]
        span = phase.t1 - phase.t0
        cpu = phase.cpu
        phase.capture_figures = {
            "captures": len(inside),
            "expected_captures": round(n * span / sb.INTERVAL_S, 1),
            "missed_ticks": sum(sb.missed_ticks(s, t0_ms, t1_ms, int(sb.INTERVAL_S * 1000))
                                for s in stamps.values()),
            "cpu_s_per_stream_min": round(cpu["total"] / span * 60 / n, 4),
            "capture_threads_cpu_s_per_stream_min": round(
                cpu["capture_threads"] / span * 60 / n, 4),
            "capture_threads_wait_ms_per_stream_s": round(
                cpu.get("capture_threads_wait", 0.0) * 1000 / span / n, 3),
            "main_thread_cores": round(cpu["main"] / span, 3),
            "store_threads_cores": round(cpu["store_threads"] / span, 3),
            "capture_lag_p50_ms": _round(sb.percentile(lags, 50), 1),
            "capture_lag_p99_ms": _round(sb.percentile(lags, 99), 1),
            "record_lag_p50_ms": _round(sb.percentile(records, 50), 1),
            "record_lag_p99_ms": _round(sb.percentile(records, 99), 1),
            "record_lag_samples": len(records),
        }


# -- the run ------------------------------------------------------------------------------------


def plan(args: argparse.Namespace) -> list[Phase]:
    """The windows, in order (the ``load`` ones run with every job stopped)."""
    rounds: list[Phase] = []
    for r in range(args.rounds):
        rounds.append(Phase(f"capture#{r + 1}", capture=True, load="none"))
        rounds.append(Phase(f"capture+load#{r + 1}", capture=True, load="closed"))
        if args.paced_rate > 0:
            rounds.append(Phase(f"capture+paced#{r + 1}", capture=True, load="paced"))
    before = [] if args.quick else [Phase("load#1", capture=False, load="closed")]
    return [*before, *rounds, Phase(f"load#{len(before) + 1}", capture=False, load="closed")]


@contextlib.contextmanager
def service(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[LivesnapServer,
                                                                       sb.CallbackReceiver]]:
    env = service_env(args)
    data_dir = Path(tempfile.mkdtemp(prefix="ls-", dir=workdir))
    with sb.CallbackReceiver() as receiver, LivesnapServer(data_dir, env=env) as server:
        yield server, receiver


def service_env(args: argparse.Namespace) -> dict[str, str]:
    """The server's settings: the bench's own, then ``--env``."""
    return {
        "LIVESNAP_MAX_JOBS_PER_ACCOUNT": str(max(args.jobs, 100)),
        "LIVESNAP_MAX_JOBS_PER_NODE": str(max(args.jobs, 500)),
        # the quota stays on (its check is part of every request's cost), far above the load
        "LIVESNAP_RATE_LIMIT_RPS": "1000000",
        "LIVESNAP_RATE_LIMIT_BURST": "1000000",
        **dict(kv.split("=", 1) for kv in args.env),
    }


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    phases = plan(args)
    with tempfile.TemporaryDirectory(prefix="livesnap-apiload-") as tmp, \
            sb.live_streams(args.resolution, args.distinct, args.clip_seconds) as streams, \
            service(args, Path(tmp)) as (server, receiver):
        assert server.proc is not None
        time.sleep(3.0)  # the start-up threads (SQLite, executors, a capture process) run now
        startup = set(sample_cpu(server.proc.pid).threads)
        since = time.time() - 60
        log(f"{len(streams.urls)} {args.resolution} streams live; submitting {args.jobs} jobs")
        submitted = submit_jobs(server, sb.job_urls(streams, args.jobs), receiver.url)
        rig = Rig(server, receiver, startup, list(submitted), sb._iso(since), since,
                  perf_sched_s=args.perf_sched)
        rig.labels = {os.getpid(): "bench (callback receiver)",
                      **{p.pid: "nginx (origin)" for p in sb.family(streams.origin_procs())},
                      **{p.pid: "ffmpeg (publishers)" for p in streams.publisher_procs()}}
        wait_all_capturing(rig, since, timeout=max(40.0, args.jobs * 0.5))
        capturing = True
        for phase in phases:
            was_capturing = capturing
            capturing = switch_capture(rig, args, phase.capture, capturing, log)
            if was_capturing and not capturing:
                # the records of the windows may still be queued: let them land before
                # reading them, and before a ``load`` window, which must not pay for them
                rig.drains_s.append(round(drain_records(rig, log), 1))
                capture_figures(rig, [p for p in phases if p.t1 > 0], args.jobs)
            run_phase(rig, args, phase, log)
        machine = sb.machine()
        alive = server.proc.poll() is None
    summary = summarize(args, phases, machine, alive)
    summary["record_backlog_drain_s"] = rig.drains_s
    return summary


def switch_capture(rig: Rig, args: argparse.Namespace, want: bool, capturing: bool,
                   log: Callable[[str], None]) -> bool:
    if want == capturing:
        return capturing
    if want:
        log(f"starting {len(rig.job_ids)} jobs ...")
        since = time.time()
        command_jobs(rig.server, rig.job_ids, "start")
        wait_all_capturing(rig, since, timeout=max(40.0, args.jobs * 0.5))
        time.sleep(args.warmup)
    else:
        log(f"stopping {len(rig.job_ids)} jobs ...")
        # a reader per stream connection (jobs on one stream share one)
        readers = stream_connections(rig)
        rig.idle_later_threads = max(0, later_threads(rig) - readers)
        command_jobs(rig.server, rig.job_ids, "stop")
        wait_capture_stopped(rig)
        time.sleep(min(args.warmup, 3.0))
    return want


def run_phase(rig: Rig, args: argparse.Namespace, phase: Phase, log: Callable[[str], None]) -> None:
    log(f"measuring {phase.name} ({args.window:g} s) ...")
    if phase.load == "none":
        time.sleep(args.warmup if phase.name == "capture#1" else 1.0)
        measure_window(rig, phase, args.window)
    else:
        run_load(rig, args, phase, args.window)
    span = phase.cpu["span_s"]
    line = (f"  {phase.name:16s} server {phase.cpu['total'] / span:.2f} cores "
            f"(main thread {phase.cpu['main'] / span:.2f})")
    if phase.api:
        a = phase.api
        line += (f", {a['req_per_s']:.0f} req/s, {a['req_per_s_per_server_core']} req/s per "
                 f"server core, p50/p99 {a['p50_ms']}/{a['p99_ms']} ms, 5xx "
                 f"{a['server_errors_5xx']}, signature failures {a['signature_failures']}")
    log(line)


def _mean(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    return round(statistics.mean(found), 4) if found else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 3)


CAPTURE_KEYS = ("cpu_s_per_stream_min", "capture_threads_cpu_s_per_stream_min",
                "main_thread_cores", "store_threads_cores", "captures", "expected_captures",
                "missed_ticks", "capture_threads_wait_ms_per_stream_s",
                "capture_lag_p50_ms", "capture_lag_p99_ms", "record_lag_p50_ms",
                "record_lag_p99_ms")
API_KEYS = ("req_per_s", "req_per_s_per_server_core", "server_cores", "client_cores",
            "p50_ms", "p99_ms")
RATIO_KEYS = ("cpu_s_per_stream_min", "cpu_s_per_stream_min_net_of_api",
              "capture_threads_cpu_s_per_stream_min", "main_thread_cores",
              "store_threads_cores", "captures", "capture_threads_wait_ms_per_stream_s",
              "capture_lag_p50_ms", "capture_lag_p99_ms", "record_lag_p50_ms", "record_lag_p99_ms")
# capture figures that must not get worse by more than 10 % under API load (issue 9)
DEGRADATION_KEYS = ("capture_threads_cpu_s_per_stream_min", "cpu_s_per_stream_min_net_of_api",
                    "capture_lag_p99_ms", "record_lag_p99_ms")


def _means(phases: list[Phase], keys: tuple[str, ...], part: str) -> dict[str, float | None]:
    return {k: _mean([getattr(p, part).get(k) for p in phases]) for k in keys}


def _api_cpu_per_request(phases: list[Phase]) -> float | None:
    """Server CPU-s per request with no capture running (the ``load`` windows)."""
    found = [p for p in phases if not p.capture and p.api.get("requests")]
    if not found:
        return None
    return sum(p.cpu["total"] for p in found) / sum(p.api["requests"] for p in found)


def capture_under(phases: list[Phase], load: str, base: dict[str, float | None], n: int,
                  api_cpu: float | None, quiet_cores: float | None) -> dict[str, Any] | None:
    """Mean capture figures of the windows with ``load``, their ratios to the baseline, and
    the API's share of the server's CPU in those windows."""
    found = [p for p in phases if p.capture and p.load == load]
    if not found:
        return None
    figures: dict[str, Any] = _means(found, CAPTURE_KEYS, "capture_figures")
    if api_cpu is not None:
        net = [(p.cpu["total"] - api_cpu * p.api["requests"]) / (p.t1 - p.t0) * 60 / n
               for p in found]
        figures["cpu_s_per_stream_min_net_of_api"] = _mean(net)
    api = _means(found, API_KEYS, "api")
    if quiet_cores is not None:  # the server's CPU beyond what capture alone used
        extra = [p.cpu["total"] - quiet_cores * p.cpu["span_s"] for p in found]
        reqs = sum(p.api["requests"] for p in found)
        api["req_per_s_per_core_net_of_capture"] = (
            round(reqs / sum(extra), 1) if sum(extra) > 0 else None)
    figures["api"] = api
    figures["over_capture_baseline"] = {
        k: _ratio(figures.get(k), base.get(k)) for k in RATIO_KEYS}
    ratios = figures["over_capture_baseline"]
    figures["within_10_percent"] = {k: ratios.get(k) is not None and ratios[k] <= 1.10
                                    for k in DEGRADATION_KEYS if k in ratios}
    figures["within_10_percent"]["no_missed_ticks_added"] = (
        (figures["missed_ticks"] or 0) <= (base.get("missed_ticks") or 0))
    return figures


def summarize(args: argparse.Namespace, phases: list[Phase], machine: dict[str, Any],
              alive: bool) -> dict[str, Any]:
    """The one JSON object: the API figures, the capture figures, their ratios, every window."""
    n = args.jobs
    quiet = [p for p in phases if p.capture and p.load == "none"]
    base: dict[str, Any] = _means(quiet, CAPTURE_KEYS, "capture_figures")
    base["cpu_s_per_stream_min_net_of_api"] = base["cpu_s_per_stream_min"]
    quiet_cores = _mean([p.cpu["total"] / p.cpu["span_s"] for p in quiet])
    api_cpu = _api_cpu_per_request(phases)
    no_capture = _means([p for p in phases if not p.capture], API_KEYS, "api")
    under_load = capture_under(phases, "closed", base, n, api_cpu, quiet_cores)
    loaded = [p for p in phases if p.api]
    with_capture = under_load["api"] if under_load else {}
    return {
        "date": datetime.now(tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if args.quick else "full",
        "machine": machine,
        "jobs": n, "distinct_streams": args.distinct, "resolution": args.resolution,
        "interval_s": sb.INTERVAL_S, "window_s": args.window, "rounds": args.rounds,
        "clients": args.clients, "connections_per_client": args.connections,
        "client_nice": args.client_nice,
        "paced_rate": args.paced_rate,
        "engine": service_env(args).get("LIVESNAP_ENGINE", "local"),
        "api_no_capture": no_capture,
        "api_cpu_ms_per_request_no_capture": None if api_cpu is None else round(api_cpu * 1000, 3),
        "api_with_capture": with_capture,
        "api_with_capture_over_no_capture": {
            k: _ratio(with_capture.get(k), no_capture.get(k))
            for k in ("req_per_s", "req_per_s_per_server_core", "p50_ms", "p99_ms")},
        "capture_baseline": base,
        "capture_under_load": under_load,
        "capture_under_paced_load": capture_under(phases, "paced", base, n, api_cpu, quiet_cores),
        "runqueue_wait_s_per_s": runqueue_by_load(phases),
        "requests": sum(p.api["requests"] for p in loaded),
        "server_errors_5xx": sum(p.api["server_errors_5xx"] for p in loaded),
        "signature_failures": sum(p.api["signature_failures"] for p in loaded),
        "throttled": sum(p.api["throttled"] for p in loaded),
        "connection_errors": sum(p.api["connection_errors"] for p in loaded),
        "server_alive": alive,
        "phases": [{"name": p.name, "capture": p.capture, "load": p.load,
                    "t0": round(p.t0, 3), "t1": round(p.t1, 3),
                    "window_s": round(p.t1 - p.t0, 2),
                    "cpu": {k: round(v, 3) for k, v in p.cpu.items()},
                    "api": p.api, "capture_figures": p.capture_figures,
                    **({"runqueue_wait_s_per_s": p.runqueue} if p.runqueue else {})}
                   for p in phases],
    }


def runqueue_by_load(phases: list[Phase]) -> dict[str, dict[str, float]] | None:
    """``--perf-sched``: the capture threads' waits by cause, mean per kind of capture window."""
    out: dict[str, dict[str, float]] = {}
    for load in ("none", "closed", "paced"):
        found = [p.runqueue for p in phases if p.capture and p.load == load and p.runqueue]
        causes = {k for r in found for k in r}
        if found:
            means = {k: round(sum(r.get(k, 0.0) for r in found) / len(found), 3) for k in causes}
            out[load] = dict(sorted(means.items(), key=lambda kv: -kv[1]))
    return out or None


def print_report(s: dict[str, Any]) -> None:
    mach = s["machine"]
    print(f"\n{s['date']}  {mach['cpu']} x{mach['cores']}, load average at start "
          f"{mach['load_average_at_start']}")
    print(f"{s['jobs']} jobs on {s['distinct_streams']} {s['resolution']} streams, "
          f"{s['clients']} load processes x {s['connections_per_client']} connections, "
          f"{s['window_s']:g} s windows, {s['rounds']} round(s)\n")
    for p in s["phases"]:
        cpu, api, cap = p["cpu"], p["api"], p["capture_figures"]
        line = f"{p['name']:18s} server {cpu['total'] / cpu['span_s']:.2f} cores"
        if api:
            line += (f" | {api['req_per_s']:7.1f} req/s, {api['req_per_s_per_server_core']} "
                     f"/core, p50/p99 {api['p50_ms']}/{api['p99_ms']} ms")
        if cap:
            line += (f" | {cap['cpu_s_per_stream_min']:.3f} CPU-s/stream-min (threads "
                     f"{cap['capture_threads_cpu_s_per_stream_min']:.3f}), captures "
                     f"{cap['captures']}/{cap['expected_captures']}, missed "
                     f"{cap['missed_ticks']}, capture lag p99 {cap['capture_lag_p99_ms']} ms, "
                     f"record lag p99 {cap['record_lag_p99_ms']} ms")
        print(line)
    print(f"\nAPI with capture / without: {s['api_with_capture_over_no_capture']}")
    for key in ("capture_under_load", "capture_under_paced_load"):
        if s[key]:
            print(f"{key} / capture alone: {s[key]['over_capture_baseline']}")
            print(f"  within 10 %: {s[key]['within_10_percent']}")
    for load, causes in (s.get("runqueue_wait_s_per_s") or {}).items():
        print(f"capture threads' run-queue wait (s/s), windows with load {load}: {causes}")
    print(f"record backlog drained after each stop: {s.get('record_backlog_drain_s')} s")
    print(f"requests {s['requests']}, 5xx {s['server_errors_5xx']}, signature failures "
          f"{s['signature_failures']}, throttled {s['throttled']}, connection errors "
          f"{s['connection_errors']}, server alive {s['server_alive']}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true",
                        help="under a minute: 8 jobs, 1 round, short windows, no paced load")
    parser.add_argument("--jobs", type=int, help="capture jobs (default 100)")
    parser.add_argument("--distinct", type=int, help="distinct live streams (publishers)")
    parser.add_argument("--resolution", default="360p",
                        help="clip kind of tests/support/servers.py (default 360p)")
    parser.add_argument("--clip-seconds", type=int, default=10)
    parser.add_argument("--window", type=float, help="seconds per measured window")
    parser.add_argument("--warmup", type=float, help="seconds after the jobs start capturing")
    parser.add_argument("--rounds", type=int, help="capture / capture+load rounds")
    parser.add_argument("--clients", type=int, default=2, help="load processes")
    parser.add_argument("--connections", type=int, default=4,
                        help="keep-alive connections per load process")
    parser.add_argument("--paced-rate", type=float,
                        help="requests/s of the paced window (0: none; default 50, the "
                             "default per-key quota)")
    parser.add_argument("--client-start-s", type=float, default=1.5,
                        help="seconds the load processes get to start before the window")
    parser.add_argument("--client-nice", type=int, default=0, choices=range(20),
                        metavar="0-19", help="run the load processes this nice (their session "
                        "too), so they stand aside when the server wants the CPU, as remote "
                        "clients would")
    parser.add_argument("--perf-sched", type=float, default=0.0, metavar="SECONDS",
                        help="record the scheduler (perf sched, root) for this long at the start "
                        "of each capture window and report what the capture threads waited "
                        "behind (bench/runqueue.py)")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for livesnap serve (repeatable)")
    parser.add_argument("--load-worker", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    quick = args.quick
    args.jobs = args.jobs or (8 if quick else 100)
    args.distinct = args.distinct or (2 if quick else 4)
    args.window = args.window if args.window is not None else (6.0 if quick else 30.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 8.0)
    args.rounds = args.rounds or (1 if quick else 2)
    if args.paced_rate is None:
        args.paced_rate = 0.0 if quick else 50.0
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers: every process is stopped


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.load_worker:
        print(json.dumps(load_worker(LoadSpec(**json.loads(args.load_worker)))))
        return 0
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def log(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    summary = run(args, log)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print_report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
