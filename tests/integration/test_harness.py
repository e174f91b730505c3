"""The real-server harness itself works: nginx-rtmp, ffmpeg publishers, clips, PostgreSQL."""

from __future__ import annotations

import itertools
import json
import subprocess
from fractions import Fraction
from pathlib import Path

import asyncpg
import av
import pytest
from tests.integration.test_bench_quick import finite_positive
from tests.support.benches import load_bench
from tests.support.fixtures import ClipFactory, PublisherFactory
from tests.support.servers import (
    CLIP_SIZES,
    PostgresServer,
    Publisher,
    RtmpOrigin,
    child_pids,
    http_get,
    make_clip,
    pid_alive,
    wait_stream_gone,
    wait_stream_live,
)

pytestmark = pytest.mark.integration

LIVE_OPTIONS = {"analyzeduration": "0", "probesize": "32768", "rw_timeout": "5000000"}


def _ffprobe_stream(clip: Path) -> dict[str, object]:
    out = subprocess.run(
        ["/usr/bin/ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "stream=codec_name,width,height,has_b_frames,pix_fmt", "-of", "json", str(clip)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    stream: dict[str, object] = json.loads(out)["streams"][0]
    return stream


def _keyframe_times(clip: Path) -> tuple[list[Fraction], bool]:
    """Keyframe times in seconds, and whether any packet has pts != dts (B-frame reordering)."""
    times: list[Fraction] = []
    reordered = False
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        for packet in container.demux(stream):
            if packet.pts is None or packet.dts is None:
                continue
            reordered = reordered or packet.pts != packet.dts
            if packet.is_keyframe:
                times.append(packet.pts * stream.time_base)
    return times, reordered


def test_origin_answers_healthz(rtmp_origin: RtmpOrigin) -> None:
    assert http_get(f"{rtmp_origin.http_base}/healthz") == b"ok\n"
    assert rtmp_origin.rtmp_base == f"rtmp://127.0.0.1:{rtmp_origin.rtmp_port}/live"
    assert rtmp_origin.url("k") == rtmp_origin.rtmp_base + "/k"
    assert "<rtmp>" in rtmp_origin.stat_xml()
    assert rtmp_origin.pid is not None and pid_alive(rtmp_origin.pid)


def test_publisher_makes_stream_appear_in_stat(
    rtmp_origin: RtmpOrigin, publisher_factory: PublisherFactory
) -> None:
    assert rtmp_origin.stream_status("harness-stat") is None
    publisher = publisher_factory(key="harness-stat", wait=False)
    status = wait_stream_live(rtmp_origin, "harness-stat", timeout=10)
    assert publisher.alive
    assert status.publishing and status.active
    assert (status.width, status.height) == (1280, 720)

    publisher.kill()
    assert not publisher.alive
    wait_stream_gone(rtmp_origin, "harness-stat", timeout=10)

    publisher.restart()
    assert publisher.alive
    assert wait_stream_live(rtmp_origin, "harness-stat", timeout=10).publishing


def test_pyav_reads_h264_from_origin(publisher_factory: PublisherFactory) -> None:
    publisher = publisher_factory()
    with av.open(publisher.url, options=LIVE_OPTIONS) as container:
        stream = container.streams.video[0]
        packet = next(p for p in container.demux(stream) if p.size > 0)
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.width == 1280
        assert stream.codec_context.height == 720
        assert packet.stream.index == stream.index
        frame = next(f for p in container.demux(stream) for f in p.decode())
        assert (frame.width, frame.height) == (1280, 720)


def test_clip_has_b_frames_and_two_second_gop(clip_720p: Path) -> None:
    info = _ffprobe_stream(clip_720p)
    assert info["codec_name"] == "h264"
    assert (info["width"], info["height"], info["pix_fmt"]) == (1280, 720, "yuv420p")
    assert isinstance(info["has_b_frames"], int) and info["has_b_frames"] > 0

    keyframes, reordered = _keyframe_times(clip_720p)
    assert reordered, "expected B-frame reordering (pts != dts)"
    # FLV timestamps start at the B-frame delay (2 frames), so compare spacing, not absolute times
    assert len(keyframes) == 5
    assert keyframes[0] < Fraction(1, 5)
    assert [b - a for a, b in itertools.pairwise(keyframes)] == [2, 2, 2, 2]


@pytest.mark.parametrize("kind", ["360p", "portrait"])
def test_clip_kinds_have_their_size(make_test_clip: ClipFactory, kind: str) -> None:
    info = _ffprobe_stream(make_test_clip(kind, seconds=2))
    assert (info["width"], info["height"]) == CLIP_SIZES[kind]


def test_black_then_picture_clip(make_test_clip: ClipFactory) -> None:
    clip = make_test_clip("black_then_picture", seconds=6)
    luma: dict[int, float] = {}  # mean luma of the middle frame of each second
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % 25 == 12:
                luma[index // 25] = float(frame.to_ndarray(format="gray").mean())
    assert luma[0] < 20 and luma[3] < 20, luma
    assert luma[4] > 50 and luma[5] > 50, luma


def test_make_clip_caches_atomically(tmp_path: Path) -> None:
    first = make_clip("360p", seconds=1, cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    assert make_clip("360p", seconds=1, cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    with pytest.raises(ValueError, match="unknown clip kind"):
        make_clip("8k", cache_dir=tmp_path)


async def test_postgres_accepts_connection(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    name = postgres_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(postgres_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        assert await conn.fetchval("select current_database()") == name
        await conn.execute("create table t (x int)")
        await conn.execute("insert into t values (41), (1)")
        assert await conn.fetchval("select sum(x) from t") == 42
    finally:
        await conn.close()


def test_servers_stop_and_leave_nothing_behind(clip_720p: Path) -> None:
    with RtmpOrigin() as origin, Publisher(clip_720p, origin.url("bye")) as publisher:
        wait_stream_live(origin, "bye")
        assert origin.pid is not None and origin.directory is not None
        nginx_pids = [origin.pid, *child_pids(origin.pid)]
        nginx_dir = origin.directory
        # a player still connected must not keep nginx alive
        player = av.open(publisher.url, options=LIVE_OPTIONS)
        try:
            origin.stop()
        finally:
            player.close()
        assert not any(pid_alive(pid) for pid in nginx_pids)
        assert not nginx_dir.exists()
    assert not publisher.alive

    with PostgresServer() as pg:
        assert pg.pid is not None and pg.directory is not None
        pg_pid, pg_dir = pg.pid, pg.directory
        assert pid_alive(pg_pid)
    assert not pid_alive(pg_pid)
    assert not pg_dir.exists()


@pytest.mark.timeout(150)
def test_bench_interval_sweep_quick_mode(capsys) -> None:
    """bench/streams.py --intervals: one row per (interval, contender, mode), CPU figures, ratios,
    and the origin's new-connection count (checked against a player opened here)."""
    bench = load_bench("streams")
    argv = ["--intervals", "5", "--modes", "persistent,per-tick", "--quick", "--json",
            "--resolution", "720p", "--distinct", "1", "--streams", "1",
            "--clip-seconds", "10", "--warmup", "0", "--window", "6.5"]  # fmt: skip
    # a 6.5 s window: more than the longest gap between two captures at 5 s with a 2 s GOP
    assert bench.main(argv) == 0
    summary = json.loads(capsys.readouterr().out)

    assert summary["kind"] == "interval_sweep" and summary["mode"] == "quick"
    assert summary["intervals_s"] == [5] and summary["streams"] == 1
    rows = {(r["interval_s"], r["contender"], r["mode"]): r for r in summary["rows"]}
    assert set(rows) == {(5, "livesnap", "persistent"), (5, "livesnap", "per-tick"),
                         (5, "ffmpeg_best", None)}
    # the per-tick job connected again inside the window, the others stayed connected
    assert rows[(5, "livesnap", "per-tick")]["origin_connections"] >= 1
    for (interval, contender, mode), row in rows.items():
        assert finite_positive(row["cpu_s_per_stream_min"]), row
        assert row["window_s"] >= max(6.5, interval) and row["processes_alive"] >= 1, row
        assert row["origin_cpu_s_per_min"] >= 0 and row["origin_connections"] is not None, row
        if contender == "livesnap":
            assert row["connect_mode_requested"] == mode
            assert row["connect_mode_echoed"] == mode, row  # the template got the field
            assert row["captures"] >= 1 and row["missed_ticks"] >= 0, row
            assert row["captures_per_job_per_tick"] > 0, row
            assert row["tick_delay_samples"] == row["captures"], row
            assert 0 <= row["tick_delay_p50_ms"] <= row["tick_delay_p99_ms"], row
            assert row["capture_lag_p99_ms"] is not None and row["capture_lag_p99_ms"] >= 0, row
        if contender == "ffmpeg_best" or mode == "persistent":
            # connected before the window opened: no new connection inside it
            assert row["origin_connections"] == 0, row
            assert row["origin_connections_per_job_per_tick"] == 0, row
    assert {(q["interval_s"], q["mode"]) for q in summary["ratios"]} == {
        (5, "persistent"), (5, "per-tick")}
    for q in summary["ratios"]:
        assert finite_positive(q["ffmpeg_best_over_livesnap"]), q
        assert finite_positive(q["livesnap_over_persistent"]), q
    bench.print_sweep_table(summary)
    table = capsys.readouterr().out
    assert table.count("ffmpeg_best") >= 1 and "per-tick" in table

    # The connection count itself: a player opened inside a probe is one connection, one play.
    with bench.live_streams("720p", 1, 10) as streams:
        with bench.OriginProbe(streams) as probe:
            with av.open(streams.urls[0], options=LIVE_OPTIONS) as player:
                next(player.demux(player.streams.video[0]))
        figures = probe.figures(1.0)
    assert (figures["connections"], figures["plays"]) == (1, 1), figures
