"""From a decoded keyframe to the stored picture: quality gate, scaling, encoding.

One ``Renderer`` per session, used only by the session's reader thread (one at a time, also
across reconnects, so the gate remembers the previous capture). The decisions (output size,
the gate's thresholds) are pure rules in ``livesnap.jobs.imaging``; this module measures
frames and runs the codecs.

- Gate statistics come from the luma plane subsampled 8x in each direction (about 32 000
  samples of a 1080p frame): mean, standard deviation, the fraction of dark samples, and a
  16x16 grid of block means as the picture's fingerprint.
- Scaling runs swscale on the YUV planes (area averaging, the format kept), before encoding.
- JPEG goes through ``encode_jpeg`` (YUV planes straight into libjpeg-turbo); WebP through
  FFmpeg's libwebp encoder, also from YUV 4:2:0; PNG through FFmpeg's encoder from RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import av
import numpy as np

from livesnap.capture.encode import EncodedImage, encode_jpeg, is_limited_range, plane_view
from livesnap.jobs import imaging
from livesnap.jobs.models import ImageFormat, ImageOptions, Verdict

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Rendered", "Renderer", "frame_stats"]

_SUBSAMPLE = 8
_GRID = 16


@dataclass(frozen=True, kw_only=True)
class Rendered:
    """The result for one keyframe: a picture, or None when the gate rejected it."""

    image: EncodedImage | None
    verdict: Verdict


class Renderer:
    """Renders keyframes for one job's image options (not thread-safe: one reader at a time)."""

    def __init__(self, image: ImageOptions, *, default_quality: int = 85) -> None:
        self.options = image
        self.quality = image.quality if image.quality is not None else default_quality
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {self.quality}")
        self._previous: tuple[float, ...] | None = None

    def render(self, frame: av.VideoFrame, *, gate: bool = True) -> Rendered:
        """Judge ``frame`` (if the job's gate is on) and encode it unless it is rejected.

        With ``gate`` False (a capture the user asked for) the verdict is still recorded
        but the picture is kept whatever it is.
        """
        verdict = Verdict.UNCHECKED
        if self.options.quality_gate:
            stats = frame_stats(frame)
            verdict = imaging.judge(stats, self._previous)
            if verdict is not Verdict.OK and gate:
                return Rendered(image=None, verdict=verdict)
            self._previous = stats.thumbnail
        return Rendered(image=self._encode(self._scaled(frame)), verdict=verdict)

    def _scaled(self, frame: av.VideoFrame) -> av.VideoFrame:
        box = (self.options.width, self.options.height)
        if box == (0, 0):
            return frame
        width, height = imaging.output_size((frame.width, frame.height), box)
        if (width, height) == (frame.width, frame.height):
            return frame
        return frame.reformat(width=width, height=height, interpolation="AREA")

    def _encode(self, frame: av.VideoFrame) -> EncodedImage:
        fmt = self.options.format
        if fmt is ImageFormat.JPG:
            return encode_jpeg(frame, quality=self.quality)
        if fmt is ImageFormat.WEBP:
            # VP8 pictures are limited-range 4:2:0, which is what video decoders give.
            # compression_level 1 of libwebp's 0-6 (default 4): a third of the CPU of the
            # default for about 7 % more bytes (bench/render_cost.py, docs/performance.md).
            options = {"quality": str(self.quality), "compression_level": "1"}
            data = _ffmpeg_encode("libwebp", frame, "yuv420p", options, limited=True)
        else:  # PNG is lossless: Quality does not apply
            data = _ffmpeg_encode("png", frame, "rgb24", {}, limited=False)
        return EncodedImage(data=data, width=frame.width, height=frame.height,
                            content_type=imaging.CONTENT_TYPES[fmt])


def _ffmpeg_encode(
    codec: str, frame: av.VideoFrame, pix_fmt: str, options: dict[str, str], *, limited: bool
) -> bytes:
    if frame.format.name != pix_fmt:
        frame = frame.reformat(format=pix_fmt, dst_color_range="MPEG" if limited else "JPEG")
    encoder = av.CodecContext.create(codec, "w")
    if not isinstance(encoder, av.VideoCodecContext):
        raise ValueError(f"{codec} is not a video encoder")
    encoder.width, encoder.height, encoder.pix_fmt = frame.width, frame.height, pix_fmt
    encoder.time_base = Fraction(1, 1)
    encoder.options = options
    frame.pts = 0
    packets = encoder.encode(frame) + encoder.encode(None)
    data = b"".join(bytes(p) for p in packets)
    if not data:
        raise ValueError(f"the {codec} encoder gave no picture")
    return data


def frame_stats(frame: av.VideoFrame) -> imaging.FrameStats:
    """The gate's luma statistics of ``frame`` (any YUV or gray format)."""
    luma = plane_view(frame.planes[0])[::_SUBSAMPLE, ::_SUBSAMPLE]
    samples = luma.astype(np.float32)
    dark = imaging.black_threshold(limited_range=is_limited_range(frame))
    return imaging.FrameStats(
        mean=float(samples.mean()),
        stddev=float(samples.std()),
        dark_fraction=float(np.count_nonzero(luma <= dark)) / luma.size,
        thumbnail=_thumbnail(samples),
    )


def _thumbnail(samples: NDArray[np.float32]) -> tuple[float, ...]:
    """Block means on a 16x16 grid (fewer blocks when the picture is tiny)."""
    rows, cols = min(_GRID, samples.shape[0]), min(_GRID, samples.shape[1])
    height, width = samples.shape[0] // rows * rows, samples.shape[1] // cols * cols
    blocks = samples[:height, :width].reshape(rows, height // rows, cols, width // cols)
    return tuple(float(v) for v in blocks.mean(axis=(1, 3)).ravel())
