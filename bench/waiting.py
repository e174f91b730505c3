"""What jobs waiting for their stream cost the server: CPU and memory of N waiting jobs.

``livesnap serve`` runs as a subprocess (SQLite, local disk, default settings). First the
idle server is measured over ``--window`` seconds; then ``--jobs`` jobs are submitted on dead
stream URLs (a port on 127.0.0.1 where nothing listens, so every probe is refused at once),
and after ``--warmup`` seconds (the probes' backoff reaches its 30 s cap after about 60 s)
the server is measured again over the same window. Reported: the server's CPU (user +
system, in cores) idle and with the waiting jobs, the difference per job and minute, the
resident memory before and after, and how many jobs were still waiting at the end.

    .venv/bin/python bench/waiting.py                 # 500 jobs, 60 s windows
    .venv/bin/python bench/waiting.py --jobs 50 --window 10 --warmup 10 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alibabacloud_ice20201109 import models as m
from tests.support.service import LivesnapServer, ice_client

OUTPUT = m.SubmitLiveSnapshotJobRequestSnapshotOutput(
    storage_type="local", endpoint="bench", bucket="waiting")


def cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def measure(process: psutil.Process, window_s: float) -> float:
    """The process's CPU over ``window_s``, in cores."""
    before, started = cpu_s(process), time.monotonic()
    time.sleep(window_s)
    return (cpu_s(process) - before) / (time.monotonic() - started)


def submit(endpoint: str, count: int) -> list[str]:
    def one(i: int) -> str:
        client = ice_client(endpoint)
        url = m.SubmitLiveSnapshotJobRequestStreamInput(
            type="rtmp", url=f"rtmp://127.0.0.1:9/live/waiting-{i}")
        return str(client.submit_live_snapshot_job(m.SubmitLiveSnapshotJobRequest(
            job_name=f"waiting-{i}", template_id="system", stream_input=url,
            snapshot_output=OUTPUT)).body.job_id)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


def waiting_count(endpoint: str) -> int:
    client = ice_client(endpoint)
    total, page = 0, 1
    while True:
        body = client.list_live_snapshot_jobs(m.ListLiveSnapshotJobsRequest(
            page_no=page, page_size=100)).body
        # the SDK's model drops livesnap's StreamStatus: a job not started is waiting here
        total += sum(1 for job in body.job_list if job.status == "init")
        if page * 100 >= body.total_count:
            return total
        page += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=75.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LivesnapServer(
            Path(tmp) / "data", env={"LIVESNAP_LOG_LEVEL": "WARNING",
                                     "LIVESNAP_RATE_LIMIT_RPS": "0"}) as server:
        assert server.proc is not None
        process = psutil.Process(server.proc.pid)
        time.sleep(5)  # start-up done
        rss_idle = process.memory_info().rss
        idle = measure(process, args.window)
        submit(server.endpoint, args.jobs)
        time.sleep(args.warmup)
        busy = measure(process, args.window)
        rss_waiting = process.memory_info().rss
        still = waiting_count(server.endpoint)
    result = {
        "jobs": args.jobs,
        "idle_cores": round(idle, 5),
        "waiting_cores": round(busy, 5),
        "cpu_ms_per_job_minute": round((busy - idle) * 60_000 / args.jobs, 3),
        "rss_idle_mib": round(rss_idle / 2**20, 1),
        "rss_waiting_mib": round(rss_waiting / 2**20, 1),
        "rss_per_job_kib": round((rss_waiting - rss_idle) / 1024 / args.jobs, 1),
        "still_waiting": still,
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24} {value}")


if __name__ == "__main__":
    main()
