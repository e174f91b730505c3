"""capture.overload.LoopWatch: when an overloaded capture process sheds keyframe decodes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from livesnap.capture.overload import LATE_CHECKS_TO_SHED, ON_TIME_CHECKS_TO_STOP, LoopWatch
from livesnap.clock import SystemClock
from livesnap.config import Settings
from livesnap.node.wiring import capture_supervisor


class Failures:
    def __init__(self) -> None:
        self.stages: list[str] = []

    def snapshot_stored(self, lag_s: float) -> None: ...
    def reconnect(self) -> None: ...
    def frame_rejected(self, verdict: str) -> None: ...

    def capture_failed(self, stage: str) -> None:
        self.stages.append(stage)


def test_shedding_starts_only_after_several_late_checks_in_a_row() -> None:
    watch = LoopWatch(1.0)
    for _ in range(LATE_CHECKS_TO_SHED - 1):
        watch.observe(1.5)
    watch.observe(0.0)  # on time: the run of late checks starts again
    for _ in range(LATE_CHECKS_TO_SHED - 1):
        watch.observe(1.5)
    assert not watch.shedding and not watch.should_shed()
    watch.observe(1.0)
    assert watch.shedding and watch.should_shed()


def test_shedding_stops_once_the_loop_is_on_time_again(caplog) -> None:
    watch = LoopWatch(1.0)
    caplog.set_level(logging.WARNING, "livesnap.capture.overload")
    for _ in range(LATE_CHECKS_TO_SHED):
        watch.observe(2.0)
    assert watch.shedding
    watch.observe(0.5)  # better, not on time: neither starts nor stops anything
    watch.observe(0.1)
    assert watch.shedding
    watch.observe(2.0)  # late again: the on-time run starts over
    for _ in range(ON_TIME_CHECKS_TO_STOP - 1):
        watch.observe(0.1)
    assert watch.shedding
    watch.observe(0.0)
    assert not watch.shedding and not watch.should_shed()
    actions = [r.action for r in caplog.records]  # type: ignore[attr-defined]
    assert actions == ["capture.shedding", "capture.shedding_ended"]


def test_skipped_decodes_are_counted_from_reader_threads_and_reported_on_the_loop() -> None:
    failures = Failures()
    watch = LoopWatch(1.0, failures)
    for _ in range(LATE_CHECKS_TO_SHED):
        watch.observe(3.0)

    def reader() -> None:
        for _ in range(250):
            assert watch.should_shed()

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert watch.shed_total == 1000
    assert failures.stages == []  # reported by the loop's next check, not by the readers
    watch.observe(3.0)
    assert failures.stages == ["overload"] * 1000
    watch.observe(3.0)
    assert len(failures.stages) == 1000  # each once


def test_a_late_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError, match="late_s"):
        LoopWatch(0)


def hold_the_loop(seconds: float) -> None:
    """Block the running event loop, as a starved one is (what the watch must notice)."""
    time.sleep(seconds)


async def test_a_blocked_event_loop_starts_shedding_and_an_idle_one_ends_it() -> None:
    watch = LoopWatch(0.2)
    task = asyncio.create_task(watch.run(check_s=0.05))
    await asyncio.sleep(0.1)
    assert not watch.shedding
    for _ in range(LATE_CHECKS_TO_SHED + 1):
        hold_the_loop(0.3)  # the watch's next wake-up comes this late
        await asyncio.sleep(0.01)  # the watch wakes (late) and sleeps again; hold it again
    assert watch.shedding
    for _ in range(200):  # on time again: it ends within a few checks
        if not watch.shedding:
            break
        await asyncio.sleep(0.05)
    assert not watch.shedding
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_stop_ends_the_checks_and_the_shedding() -> None:
    watch = LoopWatch(1.0)
    for _ in range(LATE_CHECKS_TO_SHED):
        watch.observe(2.0)
    watch.start()
    await asyncio.sleep(0)
    await watch.stop()
    assert not watch.shedding
    assert watch._task is None


@pytest.mark.parametrize(("late_s", "sheds"), [(1.0, True), (0.0, False)])
def test_the_setting_gives_the_capture_process_a_watch_its_readers_ask(
    late_s: float, sheds: bool
) -> None:
    settings = Settings(shed_late_s=late_s)
    supervisor = capture_supervisor(settings, reports=None, router=None,  # type: ignore[arg-type]
                                    clock=SystemClock(), metrics=None)
    source = supervisor._options.source
    if sheds:
        assert supervisor.watch is not None and supervisor.watch.late_s == late_s
        assert source.shed == supervisor.watch.should_shed
    else:
        assert supervisor.watch is None and source.shed is None


def test_the_default_is_one_second() -> None:
    assert Settings().capture.shed_late_s == 1.0
