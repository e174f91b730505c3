"""Pure picture rules: output sizes, option validation, the gate's verdicts, pointer keys."""

from __future__ import annotations

import pytest

from livesnap.errors import InvalidParameter, MissingParameter
from livesnap.jobs import imaging
from livesnap.jobs.imaging import FrameStats, check_image_options, judge, output_size
from livesnap.jobs.models import ImageChanges, ImageFormat, ImageOptions, Verdict


@pytest.mark.parametrize(
    ("source", "box", "expected"),
    [
        ((1280, 720), (0, 0), (1280, 720)),  # source size
        ((1280, 720), (640, 0), (640, 360)),  # width only: aspect kept
        ((1280, 720), (0, 180), (320, 180)),  # height only
        ((1280, 720), (640, 640), (640, 360)),  # both: fits inside, no distortion
        ((1280, 720), (1000, 360), (640, 360)),  # the tighter side decides
        ((1280, 720), (3840, 2160), (1280, 720)),  # never enlarged
        ((720, 1280), (640, 360), (360, 640)),  # portrait swaps Width and Height
        ((720, 1280), (640, 0), (360, 640)),  # Width is the long side of a portrait too
        ((1920, 1080), (1000, 0), (1000, 562)),  # even sides (562.5 -> 562)
        ((1366, 768), (683, 0), (682, 384)),  # 683 rounds down to even 682: inside the box
    ],
)
def test_output_size(source, box, expected):
    assert output_size(source, box) == expected


def test_output_sizes_are_even_and_inside_the_box():
    for width in range(32, 1300, 37):
        w, h = output_size((1920, 1080), (width, 0))
        assert w % 2 == 0 and h % 2 == 0
        assert width - 1 <= w <= width and abs(h - w * 9 / 16) <= 2


def test_output_size_rejects_an_empty_source():
    with pytest.raises(ValueError, match="invalid source size"):
        output_size((0, 720), (640, 0))


def check(image: ImageOptions, overwrite="o/{JobId}.jpg", sequence=None):
    check_image_options(image, overwrite_format=overwrite, sequence_format=sequence)


def test_defaults_are_valid_for_ice_formats():
    check(ImageOptions(), "snapshot/{JobId}.jpg", "snapshot/{JobId}/{UnixTimestamp}.jpg")


@pytest.mark.parametrize(
    ("image", "overwrite", "sequence", "message"),
    [
        (ImageOptions(quality=0), "o.jpg", None, "Quality must be between 1 and 100"),
        (ImageOptions(quality=101), "o.jpg", None, "Quality must be between 1 and 100"),
        (ImageOptions(width=31), "o.jpg", None, "Width must be 0 (the source size) or between 32"),
        (ImageOptions(height=7681), "o.jpg", None, "Height must be 0"),
        (ImageOptions(format=ImageFormat.WEBP), "o.jpg", None,
         "OverwriteFormat must end with '.webp' when ImageFormat is webp"),
        (ImageOptions(format=ImageFormat.PNG), None, "s/{UnixTimestamp}.jpg",
         "SequenceFormat must end with '.png' when ImageFormat is png"),
        (ImageOptions(), "o.png", None, "OverwriteFormat must end with '.jpg' when ImageFormat"),
    ],
)
def test_invalid_image_options(image, overwrite, sequence, message):
    with pytest.raises(InvalidParameter) as info:
        check(image, overwrite, sequence)
    assert message in info.value.message


def test_latest_pointer_needs_an_overwrite_object():
    with pytest.raises(MissingParameter) as info:
        check(ImageOptions(latest_pointer=True), None, "s/{UnixTimestamp}.jpg")
    assert "LatestPointer needs an OverwriteFormat" in info.value.message
    check(ImageOptions(latest_pointer=True), "o/{JobId}.jpg")


def test_changes_keep_what_they_do_not_name():
    base = ImageOptions(format=ImageFormat.WEBP, quality=70, width=640, latest_pointer=True)
    assert ImageChanges().apply(base) == base
    changed = ImageChanges(width=0, quality_gate=False).apply(base)
    assert changed == base.evolve(width=0, quality_gate=False)


def stats(mean=120.0, stddev=40.0, dark=0.0, thumb=(10.0, 200.0, 90.0, 30.0)):
    return FrameStats(mean=mean, stddev=stddev, dark_fraction=dark, thumbnail=thumb)


def test_judge():
    assert judge(stats(), None) is Verdict.OK
    assert judge(stats(mean=17, stddev=1, dark=1.0), None) is Verdict.BLACK
    assert judge(stats(mean=30, stddev=20, dark=0.985), None) is Verdict.BLACK
    assert judge(stats(dark=0.9), None) is Verdict.OK  # a dark scene is not black
    assert judge(stats(mean=128, stddev=1.5), None) is Verdict.UNIFORM
    previous = (10.0, 200.0, 90.0, 30.0)
    assert judge(stats(thumb=(10.4, 199.5, 90.2, 30.9)), previous) is Verdict.FROZEN
    assert judge(stats(thumb=(10.4, 199.5, 92.0, 30.9)), previous) is Verdict.OK
    assert judge(stats(thumb=(1.0, 2.0)), previous) is Verdict.OK  # other grid: not compared


def test_black_threshold_follows_the_range():
    assert imaging.black_threshold(limited_range=True) > imaging.black_threshold(
        limited_range=False)


@pytest.mark.parametrize(
    ("overwrite", "pointer"),
    [
        ("snapshot/abc.jpg", "snapshot/abc.latest.json"),
        ("a.b/c", "a.b/c.latest.json"),  # a dot in a directory is not an extension
        ("live/cam.webp", "live/cam.latest.json"),
    ],
)
def test_pointer_key(overwrite, pointer):
    assert imaging.pointer_key(overwrite) == pointer
