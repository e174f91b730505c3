"""bench/store_writes.py --quick: both ways of group-committing on SQLite write the same rows,
one transaction per capture, and the run reports each way's CPU and their ratio."""

from __future__ import annotations

import json

import pytest
from tests.support.benches import load_bench


def test_quick_run_compares_both_ways_on_the_same_writes(
        capsys: pytest.CaptureFixture[str]) -> None:
    module = load_bench("store_writes")
    assert module.main(["--quick", "--json", "--jobs", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_rows"] == dict.fromkeys(module.TABLES, True)
    # 100 warm-up and 3 x 100 measured captures, one group transaction each
    assert result["transactions"] == {"direct": 400, "sqlalchemy": 400}
    assert all(ms > 0 for ms in result["ms_per_capture"].values())
    ratio = result["ms_per_capture"]["direct"] / result["ms_per_capture"]["sqlalchemy"]
    assert result["direct_over_sqlalchemy"] == pytest.approx(ratio, abs=0.002)
