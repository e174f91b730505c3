"""``/hooks/streams``: the endpoint origins call when a stream is published or ends.

Not an ICE operation: origins (nginx-rtmp's ``on_publish``, SRS's ``http_hooks``, MediaMTX
through curl) cannot sign requests, so the hook carries a shared token instead
(``LIVESNAP_HOOK_TOKEN``), in the query string (``?token=…``, which is where an origin's hook URL
can carry it), the body, or an ``Authorization: Bearer`` header. ``jobs/hooks.py`` reads the
call; the manager acts on it in the background and the answer comes at once, because
nginx-rtmp lets the publisher in only once it has it (any 2xx) and SRS wants ``code`` 0.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.errors import InvalidParameter, StoreError
from livesnap.jobs import urls
from livesnap.jobs.hooks import parse_hook
from livesnap.jobs.manager import JobManager

__all__ = ["HOOK_PATH", "hook_routes"]

logger = logging.getLogger(__name__)

HOOK_PATH = "/hooks/streams"
MAX_HOOK_BODY = 64 * 1024


def hook_routes(manager: JobManager, token: str | None) -> list[BaseRoute]:
    """The hook route; with no ``token`` configured it answers that hooks are off."""

    async def endpoint(request: Request) -> Response:
        if not token:
            return _error(404, "HooksDisabled",
                          "Publish hooks are off: set LIVESNAP_HOOK_TOKEN on the server.")
        try:
            fields = await _fields(request)
        except InvalidParameter as exc:
            return _error(400, "InvalidParameter", exc.message)
        if not hmac.compare_digest(_given_token(request, fields).encode(), token.encode()):
            return _error(403, "Forbidden", "The hook token is missing or wrong.")
        try:
            call = parse_hook(fields)
            jobs = await manager.stream_event(call)
        except InvalidParameter as exc:
            return _error(400, "InvalidParameter", exc.message)
        except StoreError as exc:
            return _error(503, "ServiceUnavailable", exc.message)
        logger.info("publish hook", extra={
            "action": "publish_hook", "call": call.name, "stream": urls.redacted(call.url),
            "jobs": jobs})
        event = call.event.value if call.event is not None else "ignored"
        return JSONResponse({"code": 0, "Event": event, "Jobs": jobs})

    return [Route(HOOK_PATH, endpoint, methods=["GET", "POST"])]


async def _fields(request: Request) -> dict[str, str]:
    """Query parameters, then the form or JSON body over them (strings only)."""
    fields = dict(request.query_params)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_HOOK_BODY:
            raise InvalidParameter(f"The hook's body must be at most {MAX_HOOK_BODY} bytes.")
    if not body:
        return fields
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind == "application/json":
        try:
            document: Any = json.loads(body)
        except ValueError:
            raise InvalidParameter("The hook's body is not valid JSON.") from None
        if not isinstance(document, dict):
            raise InvalidParameter("The hook's JSON body must be an object.")
        fields.update({str(k): str(v) for k, v in document.items()
                       if isinstance(v, str | int | float)})
    else:  # nginx-rtmp posts a form (without always saying so)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            raise InvalidParameter("The hook's form body is not UTF-8.") from None
        fields.update(dict(pairs))
    return fields


def _given_token(request: Request, fields: dict[str, str]) -> str:
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return fields.get("token", "")


def _error(status: int, code: str, message: str) -> Response:
    # ``code`` (non-zero) is what SRS reads; Code and Message are livesnap's usual error shape
    return JSONResponse({"code": status, "Code": code, "Message": message}, status_code=status)
