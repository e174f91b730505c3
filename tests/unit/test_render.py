"""The renderer on synthetic frames: gate verdicts, scaling, and every output format decoded."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import simplejpeg

from livesnap.capture.render import Renderer, frame_stats
from livesnap.jobs.models import ImageFormat, ImageOptions, Verdict


def yuv_frame(luma: np.ndarray, *, chroma: int = 128) -> av.VideoFrame:
    """A limited-range yuv420p frame with the given luma plane (as a decoder gives)."""
    height, width = luma.shape
    frame = av.VideoFrame(width, height, "yuv420p")
    planes = [luma.astype(np.uint8), np.full((height // 2, width // 2), chroma, np.uint8),
              np.full((height // 2, width // 2), chroma, np.uint8)]
    for plane, values in zip(frame.planes, planes, strict=True):
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        rows[:, : plane.width] = values
    return frame


def picture(width=640, height=360, seed=1) -> av.VideoFrame:
    """Smooth gradients plus texture: clearly neither black, flat nor like another seed."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    phase = rng.uniform(0, 6.28)
    luma = 40 + 170 * (0.5 + 0.5 * np.sin(8 * x + 5 * y + phase)) + rng.normal(0, 4, (height, width))
    return yuv_frame(np.clip(luma, 16, 235))


def black(width=640, height=360) -> av.VideoFrame:
    rng = np.random.default_rng(7)
    return yuv_frame(np.clip(16 + rng.normal(0, 2, (height, width)), 16, 40))


def decode(data: bytes) -> av.VideoFrame:
    with av.open(io.BytesIO(data)) as container:
        return next(container.decode(video=0))


def test_stats_tell_black_from_picture():
    dark, bright = frame_stats(black()), frame_stats(picture())
    assert dark.dark_fraction > 0.98 and dark.mean < 25
    assert bright.dark_fraction < 0.2 and bright.stddev > 20
    assert len(bright.thumbnail) == 256


def test_gate_rejects_black_uniform_and_frozen_and_keeps_pictures():
    renderer = Renderer(ImageOptions(quality_gate=True))
    assert renderer.render(black()) .verdict is Verdict.BLACK
    assert renderer.render(black()).image is None
    grey = yuv_frame(np.full((360, 640), 128))
    assert renderer.render(grey).verdict is Verdict.UNIFORM
    first = renderer.render(picture(seed=1))
    assert first.verdict is Verdict.OK and first.image is not None
    again = renderer.render(picture(seed=1))  # the same picture once more: frozen
    assert (again.verdict, again.image) == (Verdict.FROZEN, None)
    assert renderer.render(picture(seed=2)).verdict is Verdict.OK


def test_a_requested_capture_keeps_a_rejected_frame_with_its_verdict():
    rendered = Renderer(ImageOptions(quality_gate=True)).render(black(), gate=False)
    assert rendered.verdict is Verdict.BLACK
    assert rendered.image is not None and rendered.image.width == 640


def test_gate_off_keeps_everything_unchecked():
    assert ImageOptions().quality_gate is False  # ICE keeps every tick's picture
    renderer = Renderer(ImageOptions())
    for frame in (black(), black(), picture()):
        rendered = renderer.render(frame)
        assert rendered.verdict is Verdict.UNCHECKED and rendered.image is not None


@pytest.mark.parametrize(
    ("fmt", "box", "size", "codec", "content_type"),
    [
        (ImageFormat.JPG, (0, 0), (640, 360), "mjpeg", "image/jpeg"),
        (ImageFormat.JPG, (320, 0), (320, 180), "mjpeg", "image/jpeg"),
        (ImageFormat.WEBP, (0, 0), (640, 360), "webp", "image/webp"),
        (ImageFormat.WEBP, (400, 400), (400, 224), "webp", "image/webp"),
        (ImageFormat.PNG, (0, 90), (160, 90), "png", "image/png"),
    ],
)
def test_formats_and_sizes_decode_to_what_was_asked(fmt, box, size, codec, content_type):
    renderer = Renderer(ImageOptions(format=fmt, width=box[0], height=box[1], quality=80))
    image = renderer.render(picture()).image
    assert image is not None
    assert (image.width, image.height) == size and image.content_type == content_type
    frame = decode(image.data)
    assert (frame.width, frame.height) == size
    with av.open(io.BytesIO(image.data)) as container:
        assert container.streams.video[0].codec_context.name == codec


def test_jpeg_quality_comes_from_the_template_or_the_default():
    small = Renderer(ImageOptions(quality=20), default_quality=95).render(picture()).image
    large = Renderer(ImageOptions(), default_quality=95).render(picture()).image
    assert small is not None and large is not None
    assert len(small.data) < len(large.data)
    assert simplejpeg.decode_jpeg_header(small.data)[:2] == (360, 640)


def test_webp_keeps_the_picture():
    frame = picture()
    image = Renderer(ImageOptions(format=ImageFormat.WEBP, quality=90)).render(frame).image
    assert image is not None
    back = decode(image.data).reformat(format="yuv420p").to_ndarray()[:360]
    original = frame.to_ndarray()[:360]
    assert np.abs(back.astype(int) - original.astype(int)).mean() < 6


def test_an_invalid_quality_is_refused():
    with pytest.raises(ValueError, match="quality"):
        Renderer(ImageOptions(), default_quality=0)
