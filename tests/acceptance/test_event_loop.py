"""``livesnap serve`` answers the official SDK on either event loop and says which it runs."""

from __future__ import annotations

import pytest
from alibabacloud_ice20201109 import models as m

from tests.support.service import LivesnapServer, ice_client

pytestmark = [pytest.mark.acceptance]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("setting", "runs_on"), [("auto", "uvloop"), ("asyncio", "asyncio")])
def test_serve_runs_on_the_loop_it_is_given(tmp_path, setting, runs_on):
    with LivesnapServer(tmp_path / "data", env={"LIVESNAP_EVENT_LOOP": setting}) as server:
        body = ice_client(server.endpoint).list_live_snapshot_jobs(
            m.ListLiveSnapshotJobsRequest(page_size=10)).body
        assert body.request_id
        assert body.total_count == 0
        log = server.log()
    assert f"(event loop: {runs_on})" in log
    assert "Traceback" not in log
