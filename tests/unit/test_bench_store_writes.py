"""bench/store_writes.py --quick: both ways of group-committing on SQLite write the same rows,
one transaction per capture, and the run reports each way's CPU and their ratio."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_compares_both_ways_on_the_same_writes(
        capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("bench_store_writes",
                                                  REPO_ROOT / "bench" / "store_writes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--quick", "--json", "--jobs", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["same_rows"] == dict.fromkeys(module.TABLES, True)
    # 100 warm-up and 3 x 100 measured captures, one group transaction each
    assert result["transactions"] == {"direct": 400, "sqlalchemy": 400}
    assert all(ms > 0 for ms in result["ms_per_capture"].values())
    ratio = result["ms_per_capture"]["direct"] / result["ms_per_capture"]["sqlalchemy"]
    assert result["direct_over_sqlalchemy"] == pytest.approx(ratio, abs=0.002)
