"""The official SDK polling at the intervals clients use (1, 5, 15 and 30 s) over kept-alive
connections gets no connection error: the server's idle timeout (75 s by default) is longer
than any of them, and a connection is never closed under a request being sent. With a 5 s
idle timeout, an SDK polling every 5 s got ``ConnectionResetError`` twice in ~60 calls."""

from __future__ import annotations

import threading
import time

import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.service import LivesnapServer, ice_client

pytestmark = [pytest.mark.acceptance]

INTERVALS_S = (1, 5, 15, 30)
SPAN_S = 31  # each poller's calls at 0, interval, 2 × interval, … up to here


@pytest.mark.timeout(120)
def test_the_sdk_polling_every_1_5_15_and_30_s_gets_no_connection_error(tmp_path):
    calls: dict[int, int] = dict.fromkeys(INTERVALS_S, 0)
    errors: list[str] = []
    with LivesnapServer(tmp_path / "data") as server:
        start = time.monotonic()

        def poll(interval: int) -> None:
            client = ice_client(server.endpoint)  # one client: its connection is reused
            n = 0
            while (due := start + n * interval) <= start + SPAN_S:
                time.sleep(max(0.0, due - time.monotonic()))
                try:
                    body = client.list_live_snapshot_jobs(
                        m.ListLiveSnapshotJobsRequest(page_size=10)).body
                    assert body.request_id
                    calls[interval] += 1
                except Exception as exc:  # every failure is the finding
                    errors.append(f"every {interval} s, call {n + 1}: {exc!r}")
                n += 1

        threads = [threading.Thread(target=poll, args=(i,)) for i in INTERVALS_S]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(SPAN_S + 60)
        assert "Traceback" not in server.log()
    assert errors == []
    assert calls == {1: 32, 5: 7, 15: 3, 30: 2}
