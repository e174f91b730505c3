"""``LIVESNAP_ENGINE=process``: capture, records and callbacks in a child process of serve.

Real parts: nginx-rtmp with a looping H.264 publisher, ``livesnap serve`` as a subprocess
driven by the official SDK, a real HTTP callback receiver. The checks: the child does the
capturing (its own pid writes the snapshots, the serving process keeps only the API), every
event reaches the receiver once the child delivers it, ``/metrics`` shows the child's
figures, a killed child is started again and resumes its jobs, and the child never outlives
a killed parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.acceptance.test_capture_e2e import FAST, assert_jpeg, get_job, storage_path
from tests.acceptance.test_faults import (
    check_delivered,
    check_one_event_per_record,
    command,
    newest,
    records,
    submit,
)
from tests.integration.test_callbacks_real import Receiver
from tests.support.service import LivesnapServer, core_client, core_request, ice_client
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

ENV = {
    **FAST,
    "LIVESNAP_ENGINE": "process",
    "LIVESNAP_CALLBACK_KEYS": "acct-a:process-callback-key",
    "LIVESNAP_CALLBACK_BACKOFF_MAX_S": "2",
    "LIVESNAP_SHARD_RECONCILE_S": "1",
}


def capture_children(server: LivesnapServer) -> list[psutil.Process]:
    """The serving process's capture processes (its other child is multiprocessing's
    resource tracker)."""
    assert server.proc is not None
    return [p for p in psutil.Process(server.proc.pid).children()
            if "resource_tracker" not in " ".join(p.cmdline())]


def capture_child(server: LivesnapServer) -> psutil.Process:
    children = capture_children(server)
    assert len(children) == 1, children
    return children[0]


def thread_nice(pid: int) -> dict[int, int]:
    """Thread id → nice value, for every thread of ``pid``."""
    nice = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            stat = (task / "stat").read_text()
            nice[int(task.name)] = int(stat[stat.rindex(")") + 2:].split()[16])
    return nice


def metric(server: LivesnapServer, name: str) -> float:
    text = httpx.get(f"http://{server.endpoint}/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")
              or (name.endswith("}") and line.startswith(name))]
    assert values, f"{name} not in /metrics"
    return sum(values)


def test_the_capture_process_captures_records_and_delivers(tmp_path, publisher_factory):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=ENV) as server:
        client = ice_client(server.endpoint)
        child = wait_until(lambda: capture_child(server), 20, "a capture process")
        job = submit(client, publisher.url, receiver.url)
        wait_until(lambda: get_job(client, job).status == "started", 30, "job started")
        wait_until(lambda: len(records(server.data_dir, job)) >= 2, 30, "two snapshots")
        # the child reads the stream: it holds the RTMP connection, the server does not
        rtmp = publisher.url.split("/")[2].split(":")
        port = int(rtmp[1]) if len(rtmp) > 1 else 1935

        def holds_stream(proc: psutil.Process) -> bool:
            return any(c.raddr and c.raddr.port == port for c in proc.net_connections("tcp"))

        assert holds_stream(child)
        assert not holds_stream(psutil.Process(server.proc.pid))
        # the API runs nicer than the capture, thread by thread (LIVESNAP_API_NICE, 5)
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert set(thread_nice(child.pid).values()) == {base}
        api = thread_nice(server.proc.pid)
        assert sorted(set(api.values())) == [base, base + 5]
        assert [n for n in api.values() if n == base] == [base]  # only the child's spawner
        # a capture-now goes to the child and answers with the object it stored
        shot = json.loads(core_client(server.endpoint).do_action_with_exception(core_request(
            "SendLiveSnapshotJobCommand", "POST", body={"JobId": job, "Command": "capture"})))
        assert_jpeg(storage_path(server, shot["Snapshot"]["OssObject"]))
        # /metrics merges the child's figures into the server's
        wait_until(lambda: metric(server, "livesnap_snapshots_total") >= 2, 20, "metrics")
        assert metric(server, "livesnap_capture_sessions") == 1
        command(client, job, "stop")
        wait_until(lambda: get_job(client, job).status == "paused", 20, "job stopped")
        counts = check_delivered(receiver, server.data_dir)  # the stop event too, woken by notify
        assert counts["events"] >= 3
        check_one_event_per_record(server.data_dir, job)
        assert server.terminate(30) < 20
        assert not child.is_running()  # it exited with its parent
    assert "Traceback" not in server.log()


def test_a_killed_capture_process_is_started_again_and_resumes(tmp_path, publisher_factory):
    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=ENV) as server:
        client = ice_client(server.endpoint)
        job = submit(client, publisher.url, receiver.url)
        wait_until(lambda: len(records(server.data_dir, job)) >= 1, 30, "a snapshot")
        child = capture_child(server)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        killed_ms = int(time.time() * 1000)
        # a new child, which picks the started job up from the database by itself
        wait_until(lambda: [p.pid for p in capture_children(server)] not in ([], [child.pid]),
                   20, "a new capture process")
        assert len(capture_children(server)) == 1
        # started from the spawner thread: at the capture's priority, not the API's
        assert capture_child(server).nice() == os.getpriority(os.PRIO_PROCESS, 0)
        wait_until(lambda: newest(server.data_dir, job) > killed_ms, 40, "capture again")
        assert get_job(client, job).status == "started"  # the API kept answering
        assert "capture process exited; starting it again" in server.log()
        stamps = [ms for ms, _ in records(server.data_dir, job)]
        assert len(set(stamps)) == len(stamps)
        check_delivered(receiver, server.data_dir)


def test_the_capture_process_ends_when_serve_is_killed(tmp_path, publisher_factory):
    publisher = publisher_factory()
    server = LivesnapServer(tmp_path / "data", env=ENV)
    with server:
        client = ice_client(server.endpoint)
        job = submit(client, publisher.url, "")
        wait_until(lambda: len(records(server.data_dir, job)) >= 1, 30, "a snapshot")
        child = capture_child(server)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGKILL)  # the parent only, not its process group
        server.proc.wait(10)
        # the pipe closed: the child stops its streams and exits on its own
        wait_until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
                   30, "the orphaned capture process exits")
        restarted_ms = int(time.time() * 1000)
        server.start()
        wait_until(lambda: newest(server.data_dir, job) > restarted_ms, 40, "capture again")
        stamps = [ms for ms, _ in records(server.data_dir, job)]
        assert len(set(stamps)) == len(stamps)


# several capture processes ------------------------------------------------------------------
SEVERAL = {k: v for k, v in ENV.items() if k != "LIVESNAP_ENGINE"} | {
    "LIVESNAP_CAPTURE_PROCESSES": "2"}  # without LIVESNAP_ENGINE: implies the process engine
NAMES = ["local-0", "local-1"]


def test_two_capture_processes_share_the_jobs_and_serve_delivers_their_callbacks(
    tmp_path, publisher_factory
):
    from livesnap.shards.assign import owner

    publisher = publisher_factory()
    with Receiver() as receiver, LivesnapServer(tmp_path / "data", env=SEVERAL) as server:
        client = ice_client(server.endpoint)
        wait_until(lambda: len(capture_children(server)) == 2, 20, "two capture processes")
        jobs: list[str] = []
        while len(jobs) < 4 or len({owner(j, NAMES) for j in jobs}) < 2:  # both own some
            jobs.append(submit(client, publisher.url, receiver.url))
        for job in jobs:
            wait_until(lambda j=job: len(records(server.data_dir, j)) >= 2, 30,
                       f"two snapshots of {job}")
        port = int(publisher.url.split("/")[2].split(":")[1])

        def streams_held(proc: psutil.Process) -> int:
            return sum(1 for c in proc.net_connections("tcp") if c.raddr and c.raddr.port == port)

        # each process reads the stream once for its own jobs on it; the API reads nothing
        assert sorted(streams_held(p) for p in capture_children(server)) == [1, 1]
        assert streams_held(psutil.Process(server.proc.pid)) == 0
        assert metric(server, "livesnap_capture_sessions") == len(jobs)
        wait_until(lambda: metric(server, "livesnap_snapshots_total") >= 2 * len(jobs), 20,
                   "every process's snapshots in /metrics")
        for name in NAMES:  # and each process's own figures
            mine = sum(1 for j in jobs if owner(j, NAMES) == name)
            assert metric(server, f'livesnap_capture_process_sessions{{process="{name}"}}') == mine
            assert metric(server,
                          f'livesnap_capture_process_connections{{process="{name}"}}') == 1
        assert metric(server, "livesnap_stream_connections") == 2
        assert metric(server, "livesnap_capture_process_restarts_total") == 0

        # a killed process is started again and its jobs resume; the other one's go on
        victim, survivor = capture_children(server)
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        killed_ms = int(time.time() * 1000)
        wait_until(lambda: len(capture_children(server)) == 2
                   and victim.pid not in [p.pid for p in capture_children(server)],
                   20, "the killed process started again")
        assert survivor.is_running()
        assert metric(server, "livesnap_capture_process_restarts_total") == 1
        for job in jobs:
            wait_until(lambda j=job: newest(server.data_dir, j) > killed_ms, 40,
                       f"{job} captures again")
        for job in jobs:
            command(client, job, "stop")
        for job in jobs:
            wait_until(lambda j=job: get_job(client, j).status == "paused", 20, "stopped")
        counts = check_delivered(receiver, server.data_dir)
        assert counts["events"] >= 3 * len(jobs)
        for job in jobs:
            check_one_event_per_record(server.data_dir, job)
        assert server.terminate(30) < 20
        assert not survivor.is_running()
    assert "Traceback" not in server.log()
