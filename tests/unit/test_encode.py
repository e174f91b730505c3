"""livesnap.capture.encode: JPEG straight from the YUV planes of a VideoFrame."""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
import simplejpeg

from livesnap.capture import encode as encode_module
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


def full_range_planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """What the JPEG's planes should hold: limited-range levels expanded exactly (the oracle)."""
    planes = [plane_array(p).astype(np.float64) for p in frame.planes]
    if frame.format.name.startswith("yuvj") or frame.format.name == "gray":
        return planes  # full range already (gray: unspecified range means full in FFmpeg)
    luma = np.clip((planes[0] - 16) * 255 / 219, 0, 255)
    chroma = [np.clip((p - 128) * 255 / 224 + 128, 0, 255) for p in planes[1:3]]
    return [luma, *chroma, *planes[3:]]


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

    planes_in = full_range_planes(frame)  # limited-range input comes out full range
    assert decoded_fmt in {"yuvj420p", "yuvj422p", "yuvj444p", "gray"}
    assert len(planes_out) == len(planes_in)
    for plane_in, plane_out in zip(planes_in, planes_out, strict=True):
        assert plane_out.shape == plane_in.shape
        diff = np.abs(plane_in - plane_out)
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

    expected = full_range_planes(frame)[0][::-1]
    diff = np.abs(expected - planes_out[0])
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


# -- range: limited-range video becomes full-range JPEG ------------------------------------


def flat_frame(pix_fmt: str, luma: int, chroma: int = 128, color_range: int = 0) -> av.VideoFrame:
    """A 64x32 frame of one colour, written straight into its planes (no swscale)."""
    frame = av.VideoFrame(64, 32, pix_fmt)
    for index, plane in enumerate(frame.planes):  # whole buffers: nv12 interleaves Cb and Cr
        np.frombuffer(memoryview(plane), dtype=np.uint8)[:] = luma if index == 0 else chroma
    frame.color_range = color_range
    return frame


@pytest.mark.parametrize("color_range", [0, 1])  # unspecified (limited by convention), MPEG
@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv422p", "yuv444p", "nv12"])
def test_limited_range_black_and_white_come_out_full_range(pix_fmt: str, color_range: int) -> None:
    black = simplejpeg.decode_jpeg(encode_jpeg(flat_frame(pix_fmt, 16, 128, color_range)).data)
    white = simplejpeg.decode_jpeg(encode_jpeg(flat_frame(pix_fmt, 235, 128, color_range)).data)
    grey = simplejpeg.decode_jpeg(encode_jpeg(flat_frame(pix_fmt, 126, 128, color_range)).data)

    assert int(black.max()) <= 1
    assert int(white.min()) >= 254
    assert np.abs(grey.astype(int) - 128).max() <= 1  # mid grey stays grey, no colour cast


def test_limited_range_chroma_is_expanded_too() -> None:
    # Saturated limited-range blue (Y 41, Cb 240, Cr 110) must reach full-range blue.
    frame = av.VideoFrame(64, 32, "yuv444p")
    for plane, value in zip(frame.planes, (41, 240, 110), strict=True):
        plane_array(plane)[:] = value

    _, planes = decode_planes(encode_jpeg(frame, quality=100).data)

    assert abs(int(planes[1].mean()) - 255) <= 1  # Cb 240 -> 255
    assert abs(planes[2].mean() - ((110 - 128) * 255 / 224 + 128)) <= 1


@pytest.mark.parametrize("rows", [1, 63, 64, 65, 131])
def test_expansion_is_the_same_in_every_band_of_rows(rows: int) -> None:
    # Every level in every row, in a strided view as FFmpeg's planes are: each band of rows
    # must map each level as the exact formula does (within one level), wherever it starts.
    levels = np.tile(np.arange(256, dtype=np.uint8), (rows, 1))
    padded = np.zeros((rows, 256 + 32), dtype=np.uint8)
    padded[:, :256] = levels
    view = padded[:, :256]
    for params, exact in (
        (encode_module._LUMA_EXPANSION, np.clip((np.arange(256) - 16) * 255 / 219, 0, 255)),
        (encode_module._CHROMA_EXPANSION,
         np.clip((np.arange(256) - 128) * 255 / 224 + 128, 0, 255)),
    ):
        out = encode_module._expand(view, params)
        assert out.shape == (rows, 256) and out.flags.c_contiguous
        assert (out == out[0]).all()  # every row (so every band) alike
        assert np.abs(out[0].astype(float) - exact).max() <= 1
    assert (view == levels).all()  # the frame's own plane is left as it was


@pytest.mark.parametrize("pix_fmt", ["yuvj420p", "gray"])
def test_full_range_formats_keep_their_levels(pix_fmt: str) -> None:
    data = encode_jpeg(flat_frame(pix_fmt, 16)).data
    assert abs(int(simplejpeg.decode_jpeg(data).mean()) - 16) <= 1


def test_frame_marked_full_range_keeps_its_levels() -> None:
    data = encode_jpeg(flat_frame("yuv420p", 16, color_range=2)).data
    assert abs(int(simplejpeg.decode_jpeg(data).mean()) - 16) <= 1


def test_full_range_false_keeps_the_decoder_levels() -> None:
    data = encode_jpeg(flat_frame("yuv420p", 16), full_range=False).data
    assert abs(int(simplejpeg.decode_jpeg(data).mean()) - 16) <= 1


def test_expansion_matches_the_exact_formula_for_every_level() -> None:
    # Every 8-bit level in the luma plane and both chroma planes of one 256x2 frame.
    frame = av.VideoFrame(256, 2, "yuv444p")
    for plane in frame.planes:
        plane_array(plane)[:] = np.arange(256, dtype=np.uint8)

    _, planes = decode_planes(encode_jpeg(frame, quality=100).data)

    expected = full_range_planes(frame)
    for got, want in zip(planes, expected, strict=True):
        assert np.abs(got - want).max() <= 2  # <= 1 from the arithmetic, <= 1 from JPEG q100


def test_encoding_does_not_change_the_frame() -> None:
    frame = make_frame(64, 32, "yuv420p")
    before = [plane_array(p).copy() for p in frame.planes]

    encode_jpeg(frame)

    for plane, old in zip(frame.planes, before, strict=True):
        assert np.array_equal(plane_array(plane), old)
