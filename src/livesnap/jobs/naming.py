"""Object-key formats: validation of ``OverwriteFormat``/``SequenceFormat`` and rendering.

Placeholders (design.md §4): ``{JobId}``; ``{UnixTimestamp}`` = capture time in epoch
milliseconds; ``{Sequence}`` = per-job counter from 1; ``{Date}`` = UTC ``YYYY-MM-DD``.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime

from livesnap.errors import InvalidParameter

MAX_FORMAT_LEN = 255
KEY_EXTENSIONS = (".jpg", ".webp", ".png")  # which one a template needs: jobs.imaging
OVERWRITE_PLACEHOLDERS = frozenset({"JobId"})
SEQUENCE_PLACEHOLDERS = frozenset({"JobId", "Date", "UnixTimestamp", "Sequence"})
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_ALLOWED_KEY_CHARS = re.compile(r"^[^\x00-\x1f\x7f\\]*$")


def _check_common(name: str, fmt: str, allowed: frozenset[str]) -> set[str]:
    if len(fmt) > MAX_FORMAT_LEN:
        raise InvalidParameter(f"{name} must be at most {MAX_FORMAT_LEN} characters.")
    if fmt.startswith("/"):
        raise InvalidParameter(f"{name} must not start with '/'.")
    if not fmt.endswith(KEY_EXTENSIONS):
        raise InvalidParameter(f"{name} must end with '.jpg' (or '.webp'/'.png' with ImageFormat).")
    if not _ALLOWED_KEY_CHARS.match(fmt):
        raise InvalidParameter(f"{name} contains control characters or a backslash.")
    if any(part in ("", ".", "..") for part in fmt.split("/")):
        raise InvalidParameter(f"{name} must not contain empty, '.' or '..' path segments.")
    used = set(_PLACEHOLDER.findall(fmt))
    unknown = used - allowed
    if unknown:
        names = ", ".join("{" + u + "}" for u in sorted(unknown))
        raise InvalidParameter(f"{name} does not allow the placeholder(s) {names}.")
    if "{" in _PLACEHOLDER.sub("", fmt) or "}" in _PLACEHOLDER.sub("", fmt):
        raise InvalidParameter(f"{name} has an unbalanced '{{' or '}}'.")
    return used


def check_overwrite_format(fmt: str) -> None:
    """Raise ``InvalidParameter`` unless ``fmt`` is a valid ``OverwriteFormat``."""
    _check_common("OverwriteFormat", fmt, OVERWRITE_PLACEHOLDERS)


def check_sequence_format(fmt: str) -> None:
    """Raise ``InvalidParameter`` unless ``fmt`` is a valid ``SequenceFormat``."""
    used = _check_common("SequenceFormat", fmt, SEQUENCE_PLACEHOLDERS)
    if not used & {"UnixTimestamp", "Sequence"}:
        raise InvalidParameter(
            "SequenceFormat must contain {UnixTimestamp} or {Sequence} so that each "
            "snapshot gets its own object."
        )


def render_key(fmt: str, *, job_id: str, create_ms: int, sequence: int | None) -> str:
    """The object key for one capture."""
    texts, names = _parts(fmt)
    values = {
        "JobId": job_id,
        "UnixTimestamp": str(create_ms),
        "Sequence": "" if sequence is None else str(sequence),
    }
    if "Date" in names:
        values["Date"] = datetime.fromtimestamp(create_ms / 1000, tz=UTC).strftime("%Y-%m-%d")
    out = [texts[0]]
    for name, text in zip(names, texts[1:], strict=True):
        out += (values[name], text)
    return "".join(out)


@functools.lru_cache(maxsize=1024)
def _parts(fmt: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``fmt`` split once: the texts around its placeholders, and the placeholders' names."""
    pieces = _PLACEHOLDER.split(fmt)  # text, name, text, name, ..., text
    return tuple(pieces[0::2]), tuple(pieces[1::2])
