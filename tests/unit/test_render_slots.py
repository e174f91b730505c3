"""Render slots: at most one keyframe decode per usable core (at least two) at once."""

from __future__ import annotations

import os
import threading
import time

from livesnap.capture.source import RenderSlots


def test_no_more_readers_render_at_once_than_there_are_slots():
    slots = RenderSlots()
    lock, go = threading.Lock(), threading.Event()
    inside: list[int] = []
    most = [0]

    def render(n: int) -> None:
        with slots:
            with lock:
                inside.append(n)
                most[0] = max(most[0], len(inside))
            go.wait()
            with lock:
                inside.remove(n)

    expected = max(2, len(os.sched_getaffinity(0)))
    threads = [threading.Thread(target=render, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(inside) < min(expected, 12) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a thread that should wait to get in anyway
    assert slots.count == expected
    assert most[0] == min(expected, 12)  # the slots were all used, and no more
    go.set()
    for thread in threads:
        thread.join(5)
    assert inside == [] and not any(t.is_alive() for t in threads)
