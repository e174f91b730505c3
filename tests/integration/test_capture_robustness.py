"""The stream reader against streams that misbehave *inside* a valid RTMP session, through a
real nginx-rtmp origin: corrupted keyframes and a forward jump of the timestamps; and a stream
in another codec than H.264. None of them may kill the reader thread (an exception escaping it
would fail the test: pytest turns it into a warning, and warnings are errors); clean keyframes
keep being captured as valid JPEGs.

Builds on the origin, clip and reader fixtures of ``test_capture_source``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import simplejpeg
from tests.integration.test_capture_source import (  # noqa: F401  (fixtures)
    GOP_S,
    HEIGHT,
    WIDTH,
    Run,
    _playable,
    origin,
    run_reader,
    stop_process,
    tools,
    wait_until,
)
from tests.support.servers import RtmpOrigin

from livesnap.capture.source import Captured, CaptureFailed, Connected, Disconnected

pytestmark = pytest.mark.integration


def publish_with(url: str, *args: str) -> subprocess.Popen[bytes]:
    """ffmpeg publishing to ``url`` with ``args`` (input and codec options); playable."""
    proc = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", *args, "-f", "flv", url],
        stdin=subprocess.DEVNULL,
    )
    if not wait_until(lambda: _playable(url), 15, step=0.2):
        stop_process(proc)
        pytest.fail(f"publisher never became playable at {url}")
    return proc


def filtered(path: Path, bsf: str) -> list[str]:
    """The long clip once, through a bitstream filter (FFmpeg 5.1 cannot loop into one)."""
    return ["-re", "-i", str(path), "-c", "copy", "-bsf:v", bsf]


@pytest.fixture(scope="module")
def long_clip(tools: None, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """24 s of the same H.264 as ``clip`` (B-frames, 2 s GOP), to play without looping."""
    path = tmp_path_factory.mktemp("long") / "long.flv"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         f"testsrc2=size={WIDTH}x{HEIGHT}:rate=25", "-t", "24", "-c:v", "libx264", "-g", "50",
         "-pix_fmt", "yuv420p", str(path)],
        check=True, timeout=120,
    )
    return path


def valid_jpegs(run: Run) -> list[tuple[int, int]]:
    sizes = []
    for event in run.recorder.of(Captured):
        data = event.frame.image.data
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        assert simplejpeg.decode_jpeg(data).shape == (height, width, 3)
        sizes.append((width, height))
    return sizes


def test_corrupted_keyframes_do_not_stop_the_reader(
    origin: RtmpOrigin, long_clip: Path, run_reader: Callable[..., Run]  # noqa: F811
) -> None:
    # every other keyframe (packet 0, 100, 200, … of a 50-frame GOP) gets 1 byte in 20 overwritten
    noise = "noise=amount=if(eq(mod(n\\,100)\\,0)\\,20\\,0)"
    url = origin.url("corrupt")
    publisher = publish_with(url, *filtered(long_clip, noise))
    try:
        run = run_reader(url, answer=True)
        assert run.recorder.wait_for(Connected, timeout=GOP_S + 5)
        # six keyframes: half of them damaged, the others captured
        assert run.recorder.wait_for(Captured, count=3, timeout=6 * GOP_S + 5), [
            type(e).__name__ for _, e in run.recorder.events]
        assert not run.recorder.of(Disconnected)
    finally:
        stop_process(publisher)
    assert all(size == (WIDTH, HEIGHT) for size in valid_jpegs(run))


def test_a_forward_timestamp_jump_keeps_the_captures_coming(
    origin: RtmpOrigin, long_clip: Path, run_reader: Callable[..., Run]  # noqa: F811
) -> None:
    # after 3 s of stream the timestamps jump ten minutes ahead (an encoder clock step)
    jump = "setts=ts=TS+if(gte(N\\,75)\\,600000\\,0)"
    url = origin.url("jump")
    publisher = publish_with(url, *filtered(long_clip, jump))
    try:
        run = run_reader(url, answer=True)
        assert run.recorder.wait_for(Connected, timeout=GOP_S + 5)
        assert run.recorder.wait_for(Captured, count=5, timeout=5 * GOP_S + 8), [
            type(e).__name__ for _, e in run.recorder.events]
        assert not run.recorder.of(Disconnected)
        assert not run.recorder.of(CaptureFailed)
    finally:
        stop_process(publisher)
    assert all(size == (WIDTH, HEIGHT) for size in valid_jpegs(run))


def test_a_new_session_reads_the_new_codec(
    origin: RtmpOrigin, run_reader: Callable[..., Run]  # noqa: F811
) -> None:
    # a camera that sends Sorenson H.263 (FLV1) instead of H.264 is captured too
    url = origin.url("flv1")
    publisher = publish_with(url, "-re", "-f", "lavfi", "-i",
                             f"testsrc2=size={WIDTH}x{HEIGHT}:rate=25", "-c:v", "flv1",
                             "-g", "50")
    try:
        run = run_reader(url, answer=True)
        assert run.recorder.wait_for(Captured, count=2, timeout=2 * GOP_S + 8), [
            type(e).__name__ for _, e in run.recorder.events]
    finally:
        stop_process(publisher)
    connected = run.recorder.of(Connected)
    assert connected and connected[0].codec == "flv"  # FFmpeg's name of FLV1
    assert valid_jpegs(run)[0] == (WIDTH, HEIGHT)
