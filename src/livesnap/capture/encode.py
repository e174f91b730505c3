"""Decoded video frame → JPEG bytes, straight from the YUV planes.

JPEG stores Y, Cb and Cr planes, which is what a video decoder hands out. So
8-bit planar YUV frames go to libjpeg-turbo (through simplejpeg) as numpy
*views* of the frame's planes: no RGB conversion and no copy (infra.md §2,
2.6 ms per 1080p frame). Any other pixel format (10-bit, nv12, RGB, ...) is
first converted to yuv420p with swscale, which costs a few ms more.

Limited-range ("TV", 16-235) frames such as plain ``yuv420p`` are encoded as
they are, so their JPEGs keep the decoder's levels; ``yuvj*`` frames are
full range already.

simplejpeg's contract for ``encode_jpeg_yuv_planes`` (checked against its
source and by tests/unit/test_encode.py):

* each plane is a 2-D uint8 array whose rows are contiguous (column stride 1);
  any row stride is accepted, so FFmpeg's ``line_size`` padding needs no copy;
* the chroma subsampling is deduced from the plane shapes, with chroma
  planes of ``ceil(width / h_factor)`` x ``ceil(height / v_factor)``;
* libjpeg-turbo reads the luma plane padded up to a multiple of the
  subsampling factors (for 4:2:0 at 641x359 it reads 642x360 samples). The
  extra column lives in the row padding, but an extra *row* may lie outside
  the frame's buffer, so in that case the luma plane is copied once into a
  larger buffer with its edge repeated.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np
import simplejpeg  # type: ignore[import-untyped]  # ships a .pyi but no py.typed

if TYPE_CHECKING:
    import av
    from numpy.typing import NDArray

__all__ = ["EncodedImage", "encode_jpeg"]

logger = logging.getLogger(__name__)

# Pixel formats whose first planes can be handed to libjpeg-turbo as they are:
# name -> (horizontal, vertical) chroma subsampling factor, or None for gray.
_DIRECT_FORMATS: Final[dict[str, tuple[int, int] | None]] = {
    "yuv420p": (2, 2),
    "yuvj420p": (2, 2),
    "yuva420p": (2, 2),
    "yuv422p": (2, 1),
    "yuvj422p": (2, 1),
    "yuva422p": (2, 1),
    "yuv444p": (1, 1),
    "yuvj444p": (1, 1),
    "yuva444p": (1, 1),
    "yuv440p": (1, 2),
    "yuvj440p": (1, 2),
    "yuv411p": (4, 1),
    "yuvj411p": (4, 1),
    "gray": None,
}
_FALLBACK_FORMAT: Final = "yuv420p"


@dataclass(frozen=True, kw_only=True)
class EncodedImage:
    """A JPEG and its pixel size."""

    data: bytes
    width: int
    height: int


def encode_jpeg(frame: av.VideoFrame, *, quality: int = 85) -> EncodedImage:
    """Encode ``frame`` as a baseline JPEG.

    Args:
        frame: a decoded video frame in any software pixel format.
        quality: libjpeg quality, 1 (smallest) to 100 (best).

    Raises:
        ValueError: if ``quality`` is out of range, or libjpeg-turbo rejects
            the planes.
        av.FFmpegError: if converting an unsupported pixel format fails.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    if frame.format.name not in _DIRECT_FORMATS:
        frame = frame.reformat(format=_FALLBACK_FORMAT)
    factors = _DIRECT_FORMATS[frame.format.name]
    y, u, v = _planes(frame, factors)
    data: bytes = simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=quality)
    return EncodedImage(data=data, width=frame.width, height=frame.height)


def _planes(
    frame: av.VideoFrame, factors: tuple[int, int] | None
) -> tuple[NDArray[np.uint8], NDArray[np.uint8] | None, NDArray[np.uint8] | None]:
    planes = frame.planes
    if factors is None:
        return _plane_view(planes[0]), None, None
    y = _padded_luma(_plane_view(planes[0]), planes[0].line_size, factors)
    return y, _plane_view(planes[1]), _plane_view(planes[2])


def _plane_view(plane: av.video.plane.VideoPlane) -> NDArray[np.uint8]:
    """A (height, width) uint8 view of one plane, row stride = line_size."""
    line_size = plane.line_size
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(plane.height, abs(line_size))
    if line_size < 0:
        # Bottom-up frame (e.g. after a vflip filter): PyAV exports the buffer
        # from its lowest address, i.e. from the last row. Rare, so copy.
        return np.ascontiguousarray(rows[::-1, : plane.width])
    return rows[:, : plane.width]


def _padded_luma(
    y: NDArray[np.uint8], line_size: int, factors: tuple[int, int]
) -> NDArray[np.uint8]:
    """Return ``y``, or an edge-padded copy if libjpeg-turbo would read past it."""
    height, width = y.shape
    h_factor, v_factor = factors
    padded_w = -(-width // h_factor) * h_factor
    padded_h = -(-height // v_factor) * v_factor
    if padded_h == height and padded_w <= abs(line_size):
        return y
    logger.debug(
        "luma plane copied for JPEG padding",
        extra={"action": "encode.pad_luma", "width": width, "height": height},
    )
    # simplejpeg takes the image size from the array's shape, so hand it a
    # (height, width) view into a larger buffer holding the padding samples.
    padded = np.pad(y, ((0, padded_h - height), (0, padded_w - width)), mode="edge")
    return padded[:height, :width]
