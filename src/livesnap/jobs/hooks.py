"""Publish hooks: an origin says a stream was published or ended (pure rules).

Origins call an HTTP endpoint when a publisher starts or stops, each in its own words:

- nginx-rtmp ``on_publish`` / ``on_publish_done``: a form with ``call=publish`` or
  ``call=publish_done``, ``app``, ``name`` and ``tcurl`` (``rtmp://host:port/app`` as the
  publisher wrote it);
- SRS ``http_hooks``: JSON with ``action=on_publish`` / ``on_unpublish``, ``app``, ``stream``
  and ``tcUrl``;
- anything else (MediaMTX's ``runOnReady`` through curl, a script): ``event=publish`` or
  ``event=unpublish`` and the stream's ``url``.

A hook names a stream as the origin sees it; jobs name it as they pull it, possibly through
another host name. ``base`` (``rtmp://origin.internal:1935``, set in the hook URL) replaces the
scheme, host and port the origin reports. Streams are compared by :func:`stream_key`: scheme,
host and port (default ports filled in), and path; credentials and query strings are left out,
so a job that pulls ``rtmp://host/live/cam?token=…`` matches a hook about ``/live/cam``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from livesnap.errors import InvalidParameter
from livesnap.jobs.urls import DEFAULT_PORTS

__all__ = ["HookCall", "StreamEvent", "parse_hook", "stream_key"]

class StreamEvent(StrEnum):
    PUBLISHED = "publish"
    UNPUBLISHED = "unpublish"


# every origin's name for the two events; other calls (nginx's update_publish, on_play …)
# are answered and ignored, so that an origin configured with more hooks keeps working
_EVENTS = {
    "publish": StreamEvent.PUBLISHED, "on_publish": StreamEvent.PUBLISHED,
    "unpublish": StreamEvent.UNPUBLISHED, "publish_done": StreamEvent.UNPUBLISHED,
    "on_unpublish": StreamEvent.UNPUBLISHED,
}


@dataclass(frozen=True, kw_only=True)
class HookCall:
    """What a hook says: ``event`` for the stream at ``url``; ``event`` None: ignored."""

    event: StreamEvent | None
    url: str
    name: str  # the origin's name for the call, for the log


def parse_hook(fields: Mapping[str, str]) -> HookCall:
    """The call in ``fields`` (query string, form and JSON body merged); ``InvalidParameter``
    saying what is missing."""
    name = fields.get("event") or fields.get("call") or fields.get("action") or ""
    if not name:
        raise InvalidParameter("The hook must say what happened: event=publish or "
                               "event=unpublish (or nginx-rtmp's call, SRS's action).")
    event = _EVENTS.get(name.lower())
    if event is None:
        return HookCall(event=None, url="", name=name)
    return HookCall(event=event, url=_stream_url(fields), name=name)


def _stream_url(fields: Mapping[str, str]) -> str:
    base = fields.get("base", "").rstrip("/")
    url = fields.get("url", "")
    if url:
        url = f"{base}{urlsplit(url).path}" if base else url
    else:
        origin = fields.get("tcurl") or fields.get("tcUrl") or ""
        app = fields.get("app", "").strip("/")
        stream = (fields.get("name") or fields.get("stream") or "").strip("/")
        if not stream or not (origin or base):
            raise InvalidParameter("The hook must name the stream: url, or the origin's app "
                                   "and stream name with its tcUrl (or base).")
        if origin:  # a tcUrl names the application itself; some origins leave it out
            parts = urlsplit(origin)
            app = parts.path.strip("/") or app
            base = base or f"{parts.scheme}://{parts.netloc}"
        url = "/".join(part for part in (base, app, stream) if part)
    if stream_key(url) is None:
        raise InvalidParameter(f"The hook's stream is not a URL livesnap can match: {url!r}.")
    return url


def stream_key(url: str) -> tuple[str, str, int, str] | None:
    """What identifies a stream for matching: (scheme, host, port, path), lower-case scheme
    and host, default port filled in, no trailing slash; None when ``url`` has no host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if not parts.hostname or scheme not in DEFAULT_PORTS:
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme], parts.path.rstrip("/")
