"""bench/runqueue.py: a watched thread's run-queue wait is charged to what ran on its CPU.

The events are written as ``perf script -F comm,pid,tid,cpu,time,event,trace`` prints them,
so the parser is checked too; recording real ones needs perf and root (the bench does that).
"""

from __future__ import annotations

from types import ModuleType

import pytest
from tests.support.benches import load_bench

CAPTURE, API = 100, 200  # process ids


@pytest.fixture(scope="module")
def runqueue() -> ModuleType:
    return load_bench("runqueue")


def waking(cpu: int, t: float, comm: str, tid: int, by: tuple[str, int, int]) -> str:
    return (f"{by[0]:>16} {by[1]}/{by[2]} [{cpu:03d}] {t:.6f}: sched:sched_waking: "
            f"comm={comm} pid={tid} prio=120 target_cpu={cpu:03d}")


def switch(cpu: int, t: float, prev: tuple[str, int, int], state: str,
           nxt: tuple[str, int]) -> str:
    return (f"{prev[0]:>16} {prev[1]}/{prev[2]} [{cpu:03d}] {t:.6f}: sched:sched_switch: "
            f"prev_comm={prev[0]} prev_pid={prev[2]} prev_prio=120 prev_state={state} ==> "
            f"next_comm={nxt[0]} next_pid={nxt[1]} next_prio=120")


def parse(module: ModuleType, lines: list[str]) -> list[tuple]:
    rows = []
    for line in lines:
        m = module._TASK.match(line)
        assert m, line
        rows.append((m[1], int(m[2]), int(m[3]), int(m[4]), float(m[5]), m[6], m[7]))
    return rows


def test_a_woken_thread_waits_behind_what_runs_on_its_cpu(runqueue: ModuleType) -> None:
    reader = ("reader", CAPTURE, 101)
    api = ("python", API, 200)
    sqlite = ("ls-sqlite", API, 201)
    nginx = ("nginx", 300, 300)
    lines = [
        switch(0, 1.000, ("swapper/0", 0, 0), "R", ("python", 200)),  # the API runs on CPU 0
        waking(0, 1.001, "reader", 101, nginx),  # a packet: the reader is runnable from 1.001
        switch(0, 1.004, api, "R", ("ls-sqlite", 201)),  # ... but the API's threads run
        switch(0, 1.006, sqlite, "S", ("reader", 101)),  # reader on CPU after 5 ms
        switch(0, 1.008, reader, "R", ("nginx", 300)),  # preempted: runnable again
        switch(0, 1.009, nginx, "S", ("reader", 101)),  # 1 ms behind nginx
        switch(0, 1.010, reader, "S", ("swapper/0", 0)),
        # CPU 1: a second watched thread behind a thread of its own process
        switch(1, 1.000, ("swapper/1", 0, 0), "R", ("reader", 102)),
        waking(1, 1.002, "reader", 103, nginx),
        switch(1, 1.005, ("reader", CAPTURE, 102), "S", ("reader", 103)),
        # a thread of another process waiting is not charged at all
        waking(1, 1.006, "python", 202, nginx),
        switch(1, 1.007, ("reader", CAPTURE, 103), "S", ("python", 202)),
        switch(1, 1.010, ("python", API, 202), "S", ("swapper/1", 0)),
    ]
    result = runqueue.attribute(parse(runqueue, lines), {CAPTURE}, {API: "API process"})
    assert result["API process"] == pytest.approx(0.005)  # 3 ms main thread + 2 ms SQLite
    assert result["nginx"] == pytest.approx(0.001)
    assert result[runqueue.SELF] == pytest.approx(0.003)
    assert result["total"] == pytest.approx(0.009)
    assert result["span_s"] == pytest.approx(0.010)
    per_second = runqueue.per_second(result)
    assert per_second["total"] == pytest.approx(0.9)
    assert "span_s" not in per_second


def test_a_thread_woken_onto_an_idle_cpu_is_charged_to_the_wake_up(
        runqueue: ModuleType) -> None:
    lines = [
        switch(0, 2.000, ("reader", CAPTURE, 101), "S", ("swapper/0", 0)),
        waking(0, 2.100, "reader", 101, ("nginx", 300, 300)),
        switch(0, 2.102, ("swapper/0", 0, 0), "R", ("reader", 101)),
    ]
    result = runqueue.attribute(parse(runqueue, lines), {CAPTURE}, {})
    assert result == {"(an idle CPU waking up)": pytest.approx(0.002),
                      "total": pytest.approx(0.002), "span_s": pytest.approx(0.102)}
