"""livesnap.capture.encode: JPEG straight from the YUV planes of a VideoFrame."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import simplejpeg

from livesnap.capture.encode import EncodedImage, encode_jpeg

# Even, odd and tiny sizes: odd sizes exercise the chroma rounding and the luma
# padding row that libjpeg-turbo reads for vertically subsampled formats.
SIZES = [(640, 360), (641, 359), (1, 1), (3, 5), (2, 2)]

# pixel format -> subsampling simplejpeg reports for the JPEG (sizes >= 3x3).
FORMATS = {
    "yuv420p": "420",
    "yuvj420p": "420",
    "yuva420p": "420",
    "yuv422p": "422",
    "yuv444p": "444",
    "yuv440p": "440",
    "yuv411p": "411",
    "gray": "Gray",
    # not planar 8-bit YUV: converted to yuv420p first
    "nv12": "420",
    "yuv420p10le": "420",
    "yuv444p10le": "420",
    "rgb24": "420",
    "bgra": "420",
}


def gradient_rgb(width: int, height: int) -> np.ndarray:
    """A smooth image, so JPEG error stays small and comparisons are tight."""
    yy, xx = np.mgrid[0:height, 0:width]
    red = xx * 255 // max(width - 1, 1)
    green = yy * 255 // max(height - 1, 1)
    blue = (xx + yy) * 255 // max(width + height - 2, 1)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def make_frame(width: int, height: int, pix_fmt: str) -> av.VideoFrame:
    rgb = av.VideoFrame.from_ndarray(gradient_rgb(width, height), format="rgb24")
    return rgb if pix_fmt == "rgb24" else rgb.reformat(format=pix_fmt)


def plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    rows = np.frombuffer(memoryview(plane), dtype=np.uint8).reshape(
        plane.height, abs(plane.line_size)
    )
    return rows[:, : plane.width]


def decode_planes(jpeg: bytes) -> tuple[str, list[np.ndarray]]:
    """Decode a JPEG with FFmpeg's mjpeg decoder, which returns its Y/Cb/Cr planes."""
    with av.open(io.BytesIO(jpeg)) as container:
        frame = next(container.decode(video=0))
        return frame.format.name, [plane_array(p).copy() for p in frame.planes]


@pytest.mark.parametrize(("width", "height"), SIZES)
@pytest.mark.parametrize("pix_fmt", sorted(FORMATS))
def test_encodes_to_jpeg_of_frame_size(pix_fmt: str, width: int, height: int) -> None:
    image = encode_jpeg(make_frame(width, height, pix_fmt))

    assert isinstance(image, EncodedImage)
    assert (image.width, image.height) == (width, height)
    assert simplejpeg.is_jpeg(image.data)
    jpeg_h, jpeg_w, _, subsampling = simplejpeg.decode_jpeg_header(image.data)
    assert (jpeg_w, jpeg_h) == (width, height)
    if min(width, height) >= 3:
        assert subsampling == FORMATS[pix_fmt]
    rgb = simplejpeg.decode_jpeg(image.data)
    assert rgb.shape[:2] == (height, width)


@pytest.mark.parametrize(("width", "height"), [(640, 360), (641, 359), (37, 21)])
@pytest.mark.parametrize("pix_fmt", ["yuvj420p", "yuv420p", "yuv422p", "yuv444p", "gray"])
def test_planes_survive_the_round_trip(pix_fmt: str, width: int, height: int) -> None:
    # A wrong row stride, a misaligned chroma plane or garbage in the padding
    # would show up as a large difference between the planes in and out.
    frame = make_frame(width, height, pix_fmt)

    decoded_fmt, planes_out = decode_planes(encode_jpeg(frame, quality=98).data)

    planes_in = [plane_array(p) for p in frame.planes]
    assert decoded_fmt in {"yuvj420p", "yuvj422p", "yuvj444p", "gray"}
    assert len(planes_out) == len(planes_in)
    for plane_in, plane_out in zip(planes_in, planes_out, strict=True):
        assert plane_out.shape == plane_in.shape
        diff = np.abs(plane_in.astype(np.int16) - plane_out.astype(np.int16))
        assert diff.mean() < 1.5
        assert diff.max() < 40


def test_bottom_up_frame_is_not_upside_down() -> None:
    # vflip hands out frames with negative line sizes (rows go up in memory).
    frame = make_frame(641, 359, "yuv420p")
    frame.pts, frame.time_base = 0, Fraction(1, 25)
    graph = av.filter.Graph()
    source = graph.add_buffer(width=641, height=359, format="yuv420p", time_base=Fraction(1, 25))
    vflip, sink = graph.add("vflip"), graph.add("buffersink")
    source.link_to(vflip)
    vflip.link_to(sink)
    graph.configure()
    graph.push(frame)
    flipped = graph.pull()
    assert isinstance(flipped, av.VideoFrame)
    assert flipped.planes[0].line_size < 0

    _, planes_out = decode_planes(encode_jpeg(flipped, quality=98).data)

    expected = plane_array(frame.planes[0])[::-1]
    diff = np.abs(expected.astype(np.int16) - planes_out[0].astype(np.int16))
    assert diff.mean() < 1.5


@pytest.mark.parametrize("quality", [0, 101, -1, 1000])
def test_rejects_quality_out_of_range(quality: int) -> None:
    with pytest.raises(ValueError, match="quality"):
        encode_jpeg(make_frame(16, 16, "yuv420p"), quality=quality)


def test_quality_bounds_are_inclusive_and_matter() -> None:
    frame = make_frame(320, 240, "yuv420p")

    low = encode_jpeg(frame, quality=1)
    high = encode_jpeg(frame, quality=100)

    assert simplejpeg.is_jpeg(low.data)
    assert simplejpeg.is_jpeg(high.data)
    assert len(low.data) < len(high.data)


def test_encoded_image_is_frozen() -> None:
    image = encode_jpeg(make_frame(8, 8, "yuv420p"))
    with pytest.raises(AttributeError):
        image.width = 1  # type: ignore[misc]
