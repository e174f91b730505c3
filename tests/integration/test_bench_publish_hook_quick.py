"""bench/publish_hook.py runs and reports both cases (one stream per origin, a short wait).
This checks the harness, not the speed: no figure is compared with another or a target."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.integration


def test_publish_hook_bench_reports_both_cases():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "publish_hook.py"), "--pairs", "1",
         "--min-wait", "3", "--max-wait", "3", "--limit", "60", "--json"],
        capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 1
    for kind in ("hook", "no_hook"):
        row = summary[kind]
        assert row["missing"] == 0, summary  # both jobs got their first snapshot
        assert len(row["each_s"]) == 1 and 0 < row["each_s"][0] == row["median_s"]
