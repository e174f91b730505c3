"""The benchmark harness (bench/streams.py) works: every measurement runs and reports sane figures.

One 720p stream, one job or process per contender, windows of a few seconds. This checks the
harness, not the speed: no assertion here compares CPU figures with each other or with a target.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from tests.support.benches import load_bench
from tests.support.servers import REPO_ROOT

pytestmark = pytest.mark.integration

KEYS = (
    "livesnap_cpu_s_per_stream_min", "ffmpeg_nokey_cpu_s_per_stream_min",
    "ffmpeg_discard_cpu_s_per_stream_min", "demux_floor_cpu_s_per_stream_min",
    "livesnap_rss_mib_per_stream", "missed_ticks", "lag_p99_ms", "streams", "resolution",
    "ffmpeg_discard_over_livesnap", "livesnap_over_demux_floor", "origin_cores",
    "publishers_cores", "knee", "scaling", "measurements", "machine",
)  # fmt: skip


def finite_positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(180)
def test_harness_measures_every_contender(tmp_path: Path) -> None:
    for tool in ("nginx", "ffmpeg"):  # scripts/test.sh installs them: missing is a failure
        assert shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists(), f"{tool} is missing"
    bench = load_bench("streams")
    args = bench.parse_args(["--quick", "--resolution", "720p", "--distinct", "1",
                             "--streams", "1", "--baseline-streams", "1",
                             "--warmup", "1", "--window", "6"])  # fmt: skip

    with bench.live_streams("720p", 1, 10) as streams:  # the tests' cached 10 s clip
        baselines = bench.measure_baselines(
            streams, {"ffmpeg_nokey": 1, "ffmpeg_discard": 1, "demux_floor": 1},
            warmup=1, window=4, workdir=tmp_path,
        )
        livesnap = bench.measure_livesnap(
            streams, 1, warmup=1, window=args.window, workdir=tmp_path, idle_window=0.5
        )
    summary = json.loads(json.dumps(bench.summarize(args, baselines, [livesnap], [])))

    missing = [key for key in KEYS if key not in summary]
    assert not missing
    assert summary["streams"] == 1 and summary["resolution"] == "720p"
    for key in KEYS[:5]:
        assert finite_positive(summary[key]), (key, summary[key])
    for key in ("ffmpeg_discard_over_livesnap", "livesnap_over_demux_floor"):
        assert finite_positive(summary[key]), (key, summary[key])
    assert summary["missed_ticks"] >= 0
    assert summary["captures"] >= 1  # a 6 s window at a 5 s interval holds a capture
    assert summary["lag_p99_ms"] is not None and 0 <= summary["lag_p99_ms"] < 60_000
    assert math.isfinite(summary["origin_cores"]) and summary["origin_cores"] >= 0
    for measurement in summary["measurements"]:
        assert measurement["processes_alive"] >= 1, measurement
        assert finite_positive(measurement["rss_mib_per_stream"]), measurement
    # the chart: SVG, and a PNG of it drawn by the console tests' Chromium
    written = bench.plot(summary, tmp_path / "chart.png")
    assert written == [tmp_path / "chart.svg", tmp_path / "chart.png"]
    assert (tmp_path / "chart.svg").read_text().startswith("<svg")
    png = (tmp_path / "chart.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1440, 720)  # IHDR: 2x the chart's size


def test_render_cost_reports_every_variant_against_the_baseline(capsys) -> None:
    bench = load_bench("render_cost")
    assert bench.main(["--resolution", "320x180", "--seconds", "4", "--rounds", "1",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["keyframes"] == 2  # 4 s at GOP 2 s
    assert set(result["ms_per_capture"]) == set(bench.VARIANTS)
    assert result["ratio_to_baseline"]["jpg (baseline)"] == 1.0
    assert all(finite_positive(v) for v in result["ms_per_capture"].values())


@pytest.mark.timeout(150)
def test_snapshot_path_bench_quick_mode() -> None:
    """bench/snapshot_path.py --quick: the whole service in its process with stand-in readers;
    snapshots and callbacks flow only in the measured phase, and a CPU figure comes out."""
    import subprocess

    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "snapshot_path.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=140, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    idle, busy = out["phases"]
    assert (idle["name"], idle["snapshots"], idle["callbacks"]) == ("idle", 0, 0)
    # 20 jobs at 5 s over a 6 s window: about 24 captures, each called back
    assert busy["name"] == "snapshots" and busy["snapshots"] >= 10, out
    assert busy["callbacks"] >= busy["snapshots"] // 2, out
    assert finite_positive(out["ms_per_snapshot_gross"]) and out["callbacks"] is True


def test_pinning_puts_each_capture_process_on_a_core_of_its_own() -> None:
    streams = load_bench("streams")
    parent = subprocess.Popen(  # a stand-in for `livesnap serve` with two capture processes
        [sys.executable, "-c", "import subprocess, sys, time\n"
         "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])"
         " for _ in range(2)]\nprint('ready', flush=True)\ntime.sleep(60)"],
        stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdout.readline() == b"ready\n"
        pinned = streams.pin_capture_processes(psutil.Process(parent.pid))
        cores = sorted(os.sched_getaffinity(0))
        assert sorted(pinned.values()) == sorted(cores[i % len(cores)] for i in range(2))
        for pid, core in pinned.items():
            assert os.sched_getaffinity(int(pid)) == {core}
        assert os.sched_getaffinity(parent.pid) == set(cores)  # the API process stays free
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()
        assert parent.stdout is not None
        parent.stdout.close()
