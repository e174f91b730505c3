"""Who keeps a process's threads waiting for a CPU: ``perf sched`` attributed.

``/proc/<tid>/schedstat`` says how long a thread was ready to run but had no CPU; it does not
say what ran instead. This records the scheduler's events for a few seconds (``perf sched
record -a``, needs root or ``perf_event_paranoid`` ≤ 0) and, for every interval in which a
thread of the watched processes was runnable (woken, or preempted while running), charges
that interval to whatever ran on the CPU it was queued on: a thread of the watched processes
themselves, or another process (named by a label, or by its command name).

Used by ``bench/api_load.py --perf-sched SECONDS``; on its own:

    .venv/bin/python bench/runqueue.py --pid 1234 --seconds 8 [--label 999=API]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

SELF = "(itself)"
_TASK = re.compile(r"\s*(.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s(.*)$")
_SWITCH = re.compile(
    r"prev_comm=(.*) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> "
    r"next_comm=(.*) next_pid=(\d+) next_prio=\d+"
)
_WAKING = re.compile(r"comm=(.*) pid=(\d+) prio=\d+ target_cpu=(\d+)")
_HISTORY = 64  # the runs kept per CPU, far more than one wait spans


def record(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """Start recording every CPU's scheduler events for ``seconds`` into ``path``."""
    return subprocess.Popen(
        ["perf", "sched", "record", "-a", "-o", str(path), "--", "sleep", f"{seconds:g}"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


Event = tuple[str, int, int, int, float, str, str]


def events(path: Path) -> Iterable[Event]:
    """(comm, pid, tid, cpu, time, event, details) of every recorded event."""
    out = subprocess.run(
        ["perf", "script", "-i", str(path), "-F", "comm,pid,tid,cpu,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        m = _TASK.match(line)
        if m:
            yield (m[1], int(m[2]), int(m[3]), int(m[4]), float(m[5]), m[6], m[7])


def blame(path: Path, watched: set[int], labels: dict[int, str]) -> dict[str, float]:
    """Seconds the threads of the ``watched`` processes spent runnable but not running, per
    what ran on their CPU meanwhile; ``"total"`` is the sum, ``"span_s"`` the recording."""
    return attribute(list(events(path)), watched, labels)


def attribute(rows: list[Event], watched: set[int], labels: dict[int, str]) -> dict[str, float]:
    """``blame`` of events already read."""
    if not rows:
        return {"total": 0.0, "span_s": 0.0}
    process = {tid: pid for _, pid, tid, *_ in rows}  # a thread's process, from the samples
    tracker = _Tracker({tid for tid, pid in process.items() if pid in watched})
    for _, _, _, cpu, t, event, details in rows:
        if event == "sched_waking":
            m = _WAKING.match(details)
            if m:
                tracker.waking(int(m[2]), t)
        elif event == "sched_switch":
            m = _SWITCH.match(details)
            if m:
                tracker.switch(cpu, t, int(m[2]), m[3], int(m[5]), m[4])
    charged: Counter[str] = Counter()
    for (tid, comm), seconds in tracker.charged.items():
        charged[_who(tid, comm, process, watched, labels)] += seconds
    result = {k: round(v, 3) for k, v in charged.most_common()}
    result["total"] = round(sum(charged.values()), 3)
    result["span_s"] = round(rows[-1][4] - rows[0][4], 3)
    return result


class _Tracker:
    """Follows each CPU's running thread and the watched threads' runnable intervals."""

    def __init__(self, watched_tids: set[int]) -> None:
        self.watched = watched_tids
        self.running: dict[int, tuple[float, int, str]] = {}  # cpu -> (since, tid, comm)
        self.runs: dict[int, list[tuple[float, float, int, str]]] = defaultdict(list)
        self.queued: dict[int, float] = {}  # watched tid -> runnable since
        self.charged: Counter[tuple[int, str]] = Counter()  # (tid, comm) that ran -> seconds

    def waking(self, tid: int, t: float) -> None:
        if tid in self.watched:
            self.queued.setdefault(tid, t)

    def switch(self, cpu: int, t: float, prev: int, state: str, nxt: int, comm: str) -> None:
        if cpu in self.running:
            since, tid, name = self.running[cpu]
            history = self.runs[cpu]
            history.append((since, t, tid, name))
            del history[:-_HISTORY]
        self.running[cpu] = (t, nxt, comm)
        if state.startswith("R") and prev in self.watched:
            self.queued[prev] = t  # preempted: runnable from now on
        began = self.queued.pop(nxt, None)
        if began is None:
            return
        for start, end, tid, name in reversed(self.runs[cpu]):
            if end <= began:
                break
            overlap = min(end, t) - max(start, began)
            if overlap > 0:
                self.charged[(tid, name)] += overlap


def _who(
    tid: int, comm: str, process: dict[int, int], watched: set[int], labels: dict[int, str]
) -> str:
    pid = process.get(tid, tid)
    if pid in watched:
        return SELF
    if pid in labels:
        return labels[pid]
    if tid == 0 or comm.startswith("swapper"):
        return "(an idle CPU waking up)"
    return re.sub(r"[/:\-]?\d+$", "", comm) or comm


def per_second(result: dict[str, float]) -> dict[str, float]:
    """The same figures as seconds of waiting per second recorded."""
    span = result.get("span_s") or 0.0
    return {k: round(v / span, 3) for k, v in result.items() if k != "span_s" and span > 0}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pid",
        type=int,
        action="append",
        required=True,
        help="a process whose threads' waits are charged (repeatable)",
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--label", action="append", default=[], metavar="PID=NAME")
    args = parser.parse_args(argv)
    labels = {int(k): v for k, v in (x.split("=", 1) for x in args.label)}
    with tempfile.TemporaryDirectory(prefix="livesnap-perf-") as tmp:
        data = Path(tmp) / "sched.data"
        proc = record(data, args.seconds)
        _, err = proc.communicate()
        if proc.returncode != 0:
            print(f"perf sched record failed: {err.decode().strip()[-500:]}", file=sys.stderr)
            return 1
        print(json.dumps(per_second(blame(data, set(args.pid), labels)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
