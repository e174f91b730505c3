"""capture.overload.LoopWatch: when an overloaded capture process sheds keyframe decodes."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from livesnap.capture.overload import (
    LATE_CHECKS_TO_SHED,
    MAX_SHARE,
    ON_TIME_CHECKS_TO_EASE,
    SHARE_UP,
    LoopWatch,
)
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


def always() -> float:
    return 0.0  # the reader's draw: below any share, so a keyframe is skipped when shedding


def test_shedding_starts_only_after_several_late_checks_in_a_row() -> None:
    watch = LoopWatch(1.0, rand=always)
    for _ in range(LATE_CHECKS_TO_SHED - 1):
        watch.observe(1.5)
    watch.observe(0.0)  # on time: the run of late checks starts again
    for _ in range(LATE_CHECKS_TO_SHED - 1):
        watch.observe(1.5)
    assert watch.share == 0 and not watch.should_shed()
    watch.observe(1.0)
    assert watch.share == SHARE_UP and watch.should_shed()


def test_the_share_grows_while_late_up_to_its_cap_and_draws_decide() -> None:
    draw = [0.5]
    watch = LoopWatch(1.0, rand=lambda: draw[0])
    shares = []
    for _ in range(LATE_CHECKS_TO_SHED + 6):
        watch.observe(2.0)
        shares.append(watch.share)
    assert shares[LATE_CHECKS_TO_SHED - 1:] == [0.2, 0.4, 0.6, 0.8, MAX_SHARE, MAX_SHARE,
                                                 MAX_SHARE]
    assert watch.should_shed()  # 0.5 < 0.9
    draw[0] = MAX_SHARE  # a draw at or over the share: decoded (one in ten at the cap)
    assert not watch.should_shed()
    assert watch.shed_total == 1


def test_the_share_eases_off_once_the_loop_is_on_time_again(caplog) -> None:
    watch = LoopWatch(1.0, rand=always)
    caplog.set_level(logging.WARNING, "livesnap.capture.overload")
    for _ in range(LATE_CHECKS_TO_SHED + 1):
        watch.observe(2.0)
    assert watch.share == 0.4
    watch.observe(0.5)  # better, not on time: nothing changes
    watch.observe(0.1)  # the first on-time check
    assert watch.share == 0.4
    watch.observe(2.0)  # late again (after the run of late checks broke): no growth yet
    assert watch.share == 0.4
    shares = []
    for _ in range(ON_TIME_CHECKS_TO_EASE + 3):
        watch.observe(0.0)
        shares.append(watch.share)
    assert shares == [0.4, 0.3, 0.2, 0.1, 0.0]
    assert not watch.shedding and not watch.should_shed()
    actions = [r.action for r in caplog.records]  # type: ignore[attr-defined]
    assert actions == ["capture.shedding", "capture.shedding_ended"]


def test_skipped_decodes_are_counted_from_reader_threads_and_reported_on_the_loop() -> None:
    failures = Failures()
    watch = LoopWatch(1.0, failures, rand=always)
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
    for _ in range(200):  # on time again: it eases off within a few checks
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
