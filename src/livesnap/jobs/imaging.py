"""Output pictures: formats, sizes, the frame-quality gate's rules, the latest pointer (pure).

All of it is a livesnap extension to ICE (docs/api.md, "Extensions"): optional template
fields that the official SDK never sends, whose defaults give ICE's behaviour (JPEG at the
source size). The capture package measures frames and encodes them; the decisions are here.
"""

from __future__ import annotations

from dataclasses import dataclass

from livesnap.errors import InvalidParameter, MissingParameter
from livesnap.jobs.models import ImageFormat, ImageOptions, Verdict

EXTENSIONS: dict[ImageFormat, str] = {
    ImageFormat.JPG: ".jpg",
    ImageFormat.WEBP: ".webp",
    ImageFormat.PNG: ".png",
}
CONTENT_TYPES: dict[ImageFormat, str] = {
    ImageFormat.JPG: "image/jpeg",
    ImageFormat.WEBP: "image/webp",
    ImageFormat.PNG: "image/png",
}
MIN_SIDE = 32
MAX_SIDE = 7680  # 8K UHD width
POINTER_SUFFIX = ".latest.json"


def check_image_options(
    image: ImageOptions, *, overwrite_format: str | None, sequence_format: str | None
) -> None:
    """Raise ``InvalidParameter``/``MissingParameter`` unless ``image`` fits the key formats."""
    if image.quality is not None and not 1 <= image.quality <= 100:
        raise InvalidParameter("Quality must be between 1 and 100.")
    for name, side in (("Width", image.width), ("Height", image.height)):
        if side != 0 and not MIN_SIDE <= side <= MAX_SIDE:
            raise InvalidParameter(
                f"{name} must be 0 (the source size) or between {MIN_SIDE} and {MAX_SIDE} pixels."
            )
    for name, fmt in (("OverwriteFormat", overwrite_format), ("SequenceFormat", sequence_format)):
        if fmt:
            check_extension(name, fmt, image.format)
    if image.latest_pointer and not overwrite_format:
        raise MissingParameter(
            "LatestPointer needs an OverwriteFormat: the pointer is written beside the "
            "overwrite object."
        )


def check_extension(name: str, fmt: str, image_format: ImageFormat) -> None:
    """``InvalidParameter`` unless the key format ``fmt`` ends with the format's extension."""
    extension = EXTENSIONS[image_format]
    if not fmt.endswith(extension):
        raise InvalidParameter(
            f"{name} must end with '{extension}' when ImageFormat is {image_format.value}."
        )


def output_size(source: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The picture size for a ``source`` (width, height) and a template's (Width, Height).

    0 means "not set". Width is the long side and Height the short side of the box, so a
    portrait source (taller than wide) swaps them, as Tencent's snapshot templates do. One side
    set keeps the aspect ratio; both set fit the picture inside the box without distortion.
    Pictures are never enlarged, and sides are rounded down to even numbers (4:2:0 chroma
    has half the resolution).
    """
    src_w, src_h = source
    box_w, box_h = box
    if src_w <= 0 or src_h <= 0:
        raise ValueError(f"invalid source size {src_w}x{src_h}")
    if src_h > src_w:
        box_w, box_h = box_h, box_w
    scales = [1.0]
    if box_w:
        scales.append(box_w / src_w)
    if box_h:
        scales.append(box_h / src_h)
    scale = min(scales)
    if scale >= 1.0:
        return src_w, src_h
    return _even(src_w * scale), _even(src_h * scale)


def _even(side: float) -> int:
    """Down to an even number, so the picture stays inside the box."""
    return max(2, int(side / 2) * 2)


@dataclass(frozen=True, kw_only=True)
class FrameStats:
    """Luma statistics of one decoded picture, measured by the capture package.

    Levels are 0-255 as stored; ``dark_fraction`` counts samples at or below the black
    threshold of the picture's range; ``thumbnail`` is a small grid of block means (the
    perceptual fingerprint compared between captures).
    """

    mean: float
    stddev: float
    dark_fraction: float
    thumbnail: tuple[float, ...]


BLACK_FRACTION = 0.98  # like ffmpeg's blackdetect: 98 % of the picture is dark
UNIFORM_STDDEV = 3.0  # levels: a flat picture (noise of a "no signal" card included)
FROZEN_DELTA = 1.0  # levels: the largest block-mean change that still counts as the same


def black_threshold(*, limited_range: bool) -> int:
    """The level at or below which a luma sample is dark (10 % of the range above black)."""
    return 16 + 22 if limited_range else 26


def judge(stats: FrameStats, previous: tuple[float, ...] | None) -> Verdict:
    """The gate's verdict on one picture, given the previous capture's thumbnail."""
    if stats.dark_fraction >= BLACK_FRACTION:
        return Verdict.BLACK
    if stats.stddev < UNIFORM_STDDEV:
        return Verdict.UNIFORM
    if previous is not None and len(previous) == len(stats.thumbnail):
        delta = max(abs(a - b) for a, b in zip(previous, stats.thumbnail, strict=True))
        if delta < FROZEN_DELTA:
            return Verdict.FROZEN
    return Verdict.OK


def pointer_key(overwrite_key: str) -> str:
    """Where the latest pointer goes: beside the overwrite object, its extension replaced."""
    stem, dot, extension = overwrite_key.rpartition(".")
    base = stem if dot and "/" not in extension else overwrite_key
    return base + POINTER_SUFFIX
