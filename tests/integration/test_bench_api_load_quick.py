"""The API load benchmark (bench/api_load.py) works: every window runs and reports its figures.

Its quick mode against a real ``livesnap serve``, a real nginx-rtmp origin and real publishers.
This checks the harness and the service's answers under load (no 5xx, every signature
accepted), not the speed: no assertion compares a throughput, latency or CPU figure with a
target or with another figure.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from tests.integration.test_bench_quick import load_bench

pytestmark = pytest.mark.integration

TOP_KEYS = (
    "machine", "jobs", "api_no_capture", "api_with_capture", "api_with_capture_over_no_capture",
    "api_cpu_ms_per_request_no_capture", "capture_baseline", "capture_under_load", "requests",
    "server_errors_5xx", "signature_failures", "throttled", "connection_errors", "phases",
)  # fmt: skip
API_KEYS = ("req_per_s", "req_per_s_per_server_core", "server_cores", "p50_ms", "p99_ms")
CAPTURE_KEYS = ("cpu_s_per_stream_min", "capture_threads_cpu_s_per_stream_min", "captures",
                "missed_ticks", "capture_lag_p99_ms", "record_lag_p99_ms")


def finite_positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("engine", ["local", "process"])
def test_quick_mode_measures_the_api_with_and_without_capture(capsys, engine: str) -> None:
    for tool in ("nginx", "ffmpeg"):  # scripts/test.sh installs them: missing is a failure
        assert shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists(), f"{tool} is missing"
    bench = load_bench("api_load")

    assert bench.main(["--quick", "--json", "--env", f"LIVESNAP_ENGINE={engine}"]) == 0
    summary = json.loads(capsys.readouterr().out)

    assert [k for k in TOP_KEYS if k not in summary] == []
    assert summary["mode"] == "quick" and summary["server_alive"] is True
    assert summary["engine"] == engine
    # what the service answered under load: every request a 200
    assert summary["requests"] > 0
    assert summary["server_errors_5xx"] == 0
    assert summary["signature_failures"] == 0
    assert summary["throttled"] == 0 and summary["connection_errors"] == 0
    names = [p["name"] for p in summary["phases"]]
    assert names == ["capture#1", "capture+load#1", "load#1"]
    for phase in summary["phases"]:
        assert finite_positive(phase["cpu"]["total"]), phase["cpu"]
        if phase["load"] != "none":
            api = phase["api"]
            assert api["status"] == {"200": api["requests"]}, api["error_codes"]
            # each action was sent, with both signature schemes in turn
            assert all(a["requests"] > 0 for a in api["by_action"].values()), api["by_action"]
        if phase["capture"]:
            assert phase["capture_figures"]["captures"] >= 1, phase["capture_figures"]
    for part in ("api_no_capture", "api_with_capture"):
        for key in API_KEYS:
            assert finite_positive(summary[part][key]), (part, key, summary[part][key])
    for key in CAPTURE_KEYS:
        value = summary["capture_baseline"][key]
        assert value is not None and value >= 0, (key, value)
    under = summary["capture_under_load"]
    assert finite_positive(under["over_capture_baseline"]["capture_threads_cpu_s_per_stream_min"])
    assert set(under["within_10_percent"]) >= {"capture_threads_cpu_s_per_stream_min",
                                               "no_missed_ticks_added"}
    assert finite_positive(summary["api_cpu_ms_per_request_no_capture"])
    # the stream readers are counted wherever they run (with ``process``, in the child)
    capture_cpu = [p["cpu"]["capture_threads"] for p in summary["phases"] if p["capture"]]
    assert all(finite_positive(c) for c in capture_cpu), capture_cpu
    assert len(summary["record_backlog_drain_s"]) == 1  # one stop: before the ``load`` window


def test_load_requests_are_signed_both_ways_and_cycle_through_the_actions() -> None:
    bench = load_bench("api_load")
    spec = bench.LoadSpec(port=8080, job_ids=["j1", "j2"], files_since="2026-01-01T00:00:00Z",
                          start_at=0.0, end_at=1.0, connections=1, rate=0.0, seed=1)
    rng = bench.random.Random(1)
    built = [bench.build_request(spec, n, rng) for n in range(6)]

    assert [action for action, _, _ in built] == list(bench.ACTIONS) * 2
    rpc, acs3 = built[:3], built[3:]
    assert all("Signature=" in path and "authorization" not in h for _, path, h in rpc)
    assert all(h["authorization"].startswith("ACS3-HMAC-SHA256 ") for _, _, h in acs3)
    nonces = {h["x-acs-signature-nonce"] for _, _, h in acs3}
    assert len(nonces) == 3  # a fresh nonce every request, or the server refuses replays
