"""ICE request parameters: query ∪ form body, typed accessors with ICE's error messages.

What the SDKs send (spec §2): scalars as decimal strings, booleans as ``True``/``False``
(Python SDKs) or ``true``/``false``, three JSON-valued parameters, ``Name.N`` lists, times
as ISO 8601 UTC. The SDKs validate nothing, so every check happens here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from livesnap.errors import InvalidParameter, MissingParameter

_ISO = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?Z$")
_INT = re.compile(r"^[+-]?\d{1,18}$")
MAX_VALUE_LEN = 64 * 1024


class Params:
    """Read-only view of the request's parameters.

    A name may occur more than once (in the query, the body or both) only with the same
    value each time; a name given twice with different values is refused, since which one
    was meant cannot be known.
    """

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, str] = {}
        for name, value in pairs:
            if self._values.setdefault(name, value) != value:
                raise InvalidParameter(
                    f'The parameter "{name[:64]}" is given more than once with different values.')

    def __contains__(self, name: str) -> bool:
        return name in self._values

    def raw(self, name: str) -> str | None:
        return self._values.get(name)

    def text(self, name: str, *, required: bool = False, max_len: int = 255) -> str | None:
        value: str | None = self._values.get(name)
        if value is None or value == "":
            if required:
                raise MissingParameter(f'The input parameter "{name}" that is mandatory for '
                                       "processing this request is not supplied.")
            return None
        if len(value) > max_len:
            raise InvalidParameter(f"The parameter {name} must be at most {max_len} characters.")
        if "\x00" in value:
            raise InvalidParameter(f"The parameter {name} must not contain NUL characters.")
        return value

    def required(self, name: str, *, max_len: int = 255) -> str:
        value = self.text(name, required=True, max_len=max_len)
        if value is None:  # pragma: no cover - str() raised already
            raise MissingParameter(name)
        return value

    def integer(
        self, name: str, *, default: int | None = None, low: int | None = None,
        high: int | None = None, required: bool = False,
    ) -> int | None:
        text = self.text(name, required=required, max_len=32)
        if text is None:
            return default
        if not _INT.match(text.strip()):
            raise InvalidParameter(f"The parameter {name} must be an integer.")
        value = int(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidParameter(f"The parameter {name} must be between {low} and {high}.")
        return value

    def boolean(self, name: str, *, default: bool) -> bool:
        text = self.text(name, max_len=8)
        if text is None:
            return default
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise InvalidParameter(f"The parameter {name} must be true or false.")
        return lowered == "true"

    def choice(self, name: str, options: tuple[str, ...], *, default: str | None) -> str | None:
        text = self.text(name, max_len=64)
        if text is None:
            return default
        if text not in options:
            raise InvalidParameter(f"The parameter {name} must be one of: {', '.join(options)}.")
        return text

    def time_ms(self, name: str, *, required: bool = False) -> int | None:
        text = self.text(name, required=required, max_len=40)
        return None if text is None else parse_iso_ms(name, text)

    def json(self, name: str, *, required: bool = False) -> Any:
        text = self.text(name, required=required, max_len=MAX_VALUE_LEN)
        if text is None:
            return None
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InvalidParameter(f"The parameter {name} is not valid JSON.") from exc

    def json_object(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.json(name, required=required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise InvalidParameter(f"The parameter {name} must be a JSON object.")
        return value

    def flat_list(self, name: str, *, max_items: int) -> list[str]:
        """``Name.1``, ``Name.2``, … in index order (gaps allowed)."""
        prefix = name + "."
        indexed: list[tuple[int, str]] = []
        for key, value in self._values.items():
            if key.startswith(prefix) and key[len(prefix):].isdigit():
                indexed.append((int(key[len(prefix):]), value))
        if len(indexed) > max_items:
            raise InvalidParameter(f"The parameter {name} accepts at most {max_items} items.")
        return [value for _, value in sorted(indexed) if value]


def parse_iso_ms(name: str, text: str) -> int:
    """``yyyy-MM-ddTHH:mm:ssZ`` (fractions allowed) to epoch milliseconds."""
    match = _ISO.match(text.strip())
    if not match:
        raise InvalidParameter(
            f"The parameter {name} must be an ISO 8601 UTC time like 2024-01-01T00:00:00Z."
        )
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
        when = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise InvalidParameter(f"The parameter {name} is not a valid date and time.") from exc
    fraction = match.group(7)
    millis = int(float(fraction) * 1000) if fraction else 0
    return int(when.timestamp()) * 1000 + millis


def iso_from_ms(ms: int, *, millis: bool = False) -> str:
    """Epoch milliseconds to ICE's ISO 8601 UTC form (optionally with milliseconds)."""
    when = datetime.fromtimestamp(ms / 1000, tz=UTC)
    if millis:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
