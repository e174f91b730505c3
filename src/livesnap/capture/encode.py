"""Decoded video frame → JPEG bytes, straight from the YUV planes.

JPEG stores Y, Cb and Cr planes, which is what a video decoder hands out. So
8-bit planar YUV frames go to libjpeg-turbo (through simplejpeg) as numpy
*views* of the frame's planes: no RGB conversion and no copy (infra.md §2,
2.6 ms per 1080p frame). Any other pixel format (10-bit, nv12, RGB, ...) is
first converted to yuv420p with swscale, which costs a few ms more.

JPEG (JFIF) pictures are full range: black is 0 and white 255. Video is almost
always limited range ("TV": luma 16-235, chroma 16-240), and a frame whose
range is unspecified is limited by FFmpeg's convention, so such frames are
expanded to full range before encoding, as ``ffmpeg -i URL out.jpg`` does;
encoded as they are they would look washed out (grey blacks, dim whites).
``yuvj*`` frames and frames marked full range are encoded as they are. The
expansion is integer arithmetic with numpy on the planes, within one level of the exact
``(v - 16) * 255 / 219`` and ``(v - 128) * 255 / 224 + 128``; grey stays 128. It runs
over bands of rows small enough for the CPU's cache, so the four passes of each band read
memory once instead of four times: 1.4-1.5 ms for a 1080p frame fresh from its decoder
against 2.2-2.3 ms for whole-plane passes (``bench/render_cost.py --expansion``); swscale's
range conversion takes 3.5 ms and a numpy table lookup 8.5 ms.

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

__all__ = ["EncodedImage", "encode_jpeg", "is_limited_range", "plane_view"]

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
_FULL_RANGE_FORMATS: Final = frozenset(("yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "yuvj411p"))
_COLOR_RANGE_UNSPECIFIED: Final = 0  # AVCOL_RANGE_UNSPECIFIED (1 is MPEG, limited)
_COLOR_RANGE_JPEG: Final = 2  # AVCOL_RANGE_JPEG (full)

# Limited -> full range in uint16 fixed point: out = (clip(v, lo, hi) * mul - sub) >> 8, where
# sub = lo * mul - add. v * mul may wrap around 2**16, but the result, (v - lo) * mul + add, lies
# within 0..65535, so modular uint16 arithmetic gets it right with one pass fewer. (mul, add)
# were found by exhaustive search against the exact formulas: luma within 0.52 of
# (v - 16) * 255 / 219, chroma within 0.84 of (v - 128) * 255 / 224 + 128, and 128 -> 128.
_LUMA_EXPANSION: Final = (16, 235, 298, 16 * 298 - 136)
_CHROMA_EXPANSION: Final = (16, 240, 291, 16 * 291 - 249)


@dataclass(frozen=True, kw_only=True)
class EncodedImage:
    """An encoded picture (a JPEG unless ``content_type`` says otherwise) and its pixel size."""

    data: bytes
    width: int
    height: int
    content_type: str = "image/jpeg"


def encode_jpeg(
    frame: av.VideoFrame, *, quality: int = 85, full_range: bool = True
) -> EncodedImage:
    """Encode ``frame`` as a baseline JPEG. ``frame`` itself is left unchanged.

    Args:
        frame: a decoded video frame in any software pixel format.
        quality: libjpeg quality, 1 (smallest) to 100 (best).
        full_range: expand limited-range frames to the full range JPEG viewers
            assume (see the module doc). False keeps the decoder's levels.

    Raises:
        ValueError: if ``quality`` is out of range, or libjpeg-turbo rejects
            the planes.
        av.FFmpegError: if converting an unsupported pixel format fails.
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    if frame.format.name not in _DIRECT_FORMATS:
        # One swscale pass converts the format and, if wanted, the range too.
        frame = frame.reformat(
            format=_FALLBACK_FORMAT,
            dst_color_range="JPEG" if full_range else None,
        )
    factors = _DIRECT_FORMATS[frame.format.name]
    y, u, v = _planes(frame, factors, expand=full_range and is_limited_range(frame))
    data: bytes = simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=quality)
    return EncodedImage(data=data, width=frame.width, height=frame.height)


def is_limited_range(frame: av.VideoFrame) -> bool:
    """Whether ``frame`` holds limited-range levels, by FFmpeg's conventions.

    ``yuvj*`` formats are full range. Otherwise the frame's ``color_range`` says,
    and when it is unspecified, YUV is limited and ``gray`` full range (what
    swscale assumes, so what ``ffmpeg`` does).
    """
    if frame.format.name in _FULL_RANGE_FORMATS:
        return False
    color_range = int(frame.color_range)
    if color_range == _COLOR_RANGE_UNSPECIFIED:
        return frame.format.name != "gray"
    return color_range != _COLOR_RANGE_JPEG


def _planes(
    frame: av.VideoFrame, factors: tuple[int, int] | None, *, expand: bool
) -> tuple[NDArray[np.uint8], NDArray[np.uint8] | None, NDArray[np.uint8] | None]:
    planes = frame.planes
    y = plane_view(planes[0])
    if expand:
        y = _expand(y, _LUMA_EXPANSION)
    if factors is None:
        return y, None, None
    y = _padded_luma(y, y.strides[0], factors)
    u, v = plane_view(planes[1]), plane_view(planes[2])
    if expand:
        u, v = _expand(u, _CHROMA_EXPANSION), _expand(v, _CHROMA_EXPANSION)
    return y, u, v


# Rows expanded at a time: 64 rows of 1080p are 120 KiB of uint8 and 240 KiB of uint16,
# which stay in a core's L2 cache through the four passes (measured best of 8 to 128).
_BAND_ROWS: Final = 64


def _expand(plane: NDArray[np.uint8], params: tuple[int, int, int, int]) -> NDArray[np.uint8]:
    """A new, contiguous full-range copy of one limited-range plane (four numpy passes per
    band of ``_BAND_ROWS`` rows)."""
    low, high, mul, sub = params
    height, width = plane.shape
    out = np.empty((height, width), dtype=np.uint8)
    scratch = np.empty((min(height, _BAND_ROWS), width), dtype=np.uint16)
    for top in range(0, height, _BAND_ROWS):
        band = out[top:top + _BAND_ROWS]
        wide = scratch[: band.shape[0]]
        np.clip(plane[top:top + _BAND_ROWS], low, high, out=band)
        np.multiply(band, mul, dtype=np.uint16, out=wide)  # may wrap: see above
        wide -= sub
        np.right_shift(wide, 8, out=band, casting="unsafe")
    return out


def plane_view(plane: av.video.plane.VideoPlane) -> NDArray[np.uint8]:
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
