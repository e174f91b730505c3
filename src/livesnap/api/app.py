"""The ASGI app: one RPC endpoint at ``/`` that verifies, routes and answers like ICE.

Pipeline per request: read the body (bounded in size and time) → verify the signature →
take a token from the caller's access-key bucket → route on ``Action`` or ``x-acs-action`` →
check ``Version`` → parse parameters → call the handler → JSON, or XML when ``Format=XML``.
Every answer is an object with ``RequestId``; never a redirect, never a 500 for bad input.
Parameters, the common ones included, are read from the union of query string and form body.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from livesnap.api import protocol
from livesnap.api.handlers import ACTIONS, Context
from livesnap.api.params import Params
from livesnap.api.ratelimit import KeyRateLimiter
from livesnap.api.signature import Caller, NonceCache, SignatureError, SignedRequest, verify
from livesnap.clock import Clock
from livesnap.config import KeyRing
from livesnap.errors import LivesnapError
from livesnap.jobs.manager import JobManager

logger = logging.getLogger(__name__)

API_VERSION = "2020-11-09"
MAX_BODY = 1024 * 1024
JSON_TYPE = "application/json;charset=utf-8"
XML_TYPE = "text/xml;charset=utf-8"
FORMATS = ("json", "xml")  # the common parameter Format, case-insensitive; JSON when absent
THROTTLED = "Throttling.User"
# the SDKs use GET and POST; the others were accepted before and stay accepted
RPC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
# the connection is closed after these answers: the rest of the body is never read
_CLOSE = {"connection": "close"}


@dataclass(frozen=True, kw_only=True)
class BodyLimits:
    """How large a request body may be, and how long the client may take to send it."""

    max_bytes: int = MAX_BODY
    read_timeout_s: float = 30.0


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    manager: JobManager
    keys: KeyRing
    clock: Clock
    nonces: NonceCache
    host_id: str = "livesnap"
    body: BodyLimits = field(default_factory=BodyLimits)
    limiter: KeyRateLimiter | None = None  # None: no request-rate quota
    # told of every answered request: (action or "-", "OK" or the ICE error code, seconds)
    observe: Callable[[str, str, float], None] | None = None


class ApiError(Exception):
    """A wire-level rejection (before any use case runs)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


@dataclass(kw_only=True)
class _Seen:
    """What is known of a request so far, for its answer and its metrics."""

    action: str = "-"  # a known action once the request names one
    format: str = "json"


def _respond(
    status: int, body: dict[str, Any], seen: _Seen, headers: Mapping[str, str] | None = None
) -> Response:
    if seen.format == "xml":
        root = f"{seen.action}Response" if status == 200 else "Error"
        data, media_type = protocol.xml_document(root, body), XML_TYPE
    else:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        media_type = JSON_TYPE
    return Response(data, status_code=status, media_type=media_type, headers=headers)


def _too_large(limits: BodyLimits) -> ApiError:
    return ApiError(413, "InvalidParameter",
                    f"The request body is larger than {limits.max_bytes} bytes.", headers=_CLOSE)


async def _read_body(request: Request, limits: BodyLimits) -> bytes:
    """The whole body, refused (413) as soon as it is known to be too large.

    A declared ``Content-Length`` is checked before anything is read; a chunked body is
    counted while it arrives. The time to receive the body is bounded too (408), since
    the HTTP server only bounds the time to receive the request head.
    """
    declared = request.headers.get("content-length")
    if declared is not None and not declared.strip().isdigit():
        raise ApiError(400, "InvalidParameter", "The Content-Length header is not a number.",
                       headers=_CLOSE)
    if declared is not None and int(declared) > limits.max_bytes:
        raise _too_large(limits)
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise _too_large(limits)
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "RequestTimeout",
                       f"The request body was not received within {limits.read_timeout_s:g} s.",
                       headers=_CLOSE) from None
    return b"".join(chunks)


def _is_form(request: Request) -> bool:
    ctype = request.headers.get("content-type", "")
    return ctype.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"


def _decode_pairs(raw: str, where: str) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict", max_num_fields=2000)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "InvalidParameter", f"The request {where} is malformed.") from exc


def _signed_request(request: Request, body: bytes) -> SignedRequest:
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    raw_query = request.scope.get("query_string", b"").decode("utf-8", "surrogateescape")
    return SignedRequest(
        method=request.method,
        path=request.url.path,
        raw_query=raw_query,
        headers=headers,
        body=body,
        form=_is_form(request),
    )


def _params(req: SignedRequest) -> Params:
    pairs = _decode_pairs(req.raw_query, "query string")
    if req.form and req.body:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "InvalidParameter", "The request body is not UTF-8.") from exc
        pairs += _decode_pairs(text, "body")
    params = Params(pairs)
    wanted = (params.raw("Format") or "json").lower()
    if wanted not in FORMATS:
        raise ApiError(400, "InvalidParameter",
                       f'The parameter "Format" must be JSON or XML, not {wanted[:32]!r}.')
    return params


def _format_in(raw: str) -> str | None:
    """"xml" or "json" as the first ``Format`` in a query string or form body says, None
    without one; malformed parts are ignored here (they are refused with their own error
    later, in the format asked for if it was found)."""
    for name, value in parse_qsl(raw, keep_blank_values=True, max_num_fields=None):
        if name == "Format":
            return "xml" if value.lower() == "xml" else "json"
    return None


def _action(req: SignedRequest, params: Params) -> str:
    action = params.raw("Action") or req.headers.get("x-acs-action", "")
    version = params.raw("Version") or req.headers.get("x-acs-version", "")
    if not action:
        raise ApiError(400, "MissingParameter",
                       'The input parameter "Action" that is mandatory for processing this '
                       "request is not supplied.")
    if action not in ACTIONS:
        raise ApiError(404, "InvalidAction.NotFound",
                       "Specified api is not found, please check your url and method.")
    if version != API_VERSION:
        raise ApiError(400, "InvalidVersion",
                       f"Specified parameter Version is not valid; use {API_VERSION}.")
    return action


def _now(clock: Clock) -> datetime:
    return datetime.fromtimestamp(clock.time(), tz=UTC)


def _check_rate(deps: ApiDeps, caller: Caller) -> None:
    """``Throttling.User`` (429) when the caller's access key has no token left."""
    if deps.limiter is None:
        return
    wait_s = deps.limiter.acquire(caller.access_key_id, deps.clock.monotonic())
    if wait_s <= 0:
        return
    # the SDK reads x-acs-retry-after as a positive integer number of milliseconds
    retry_ms = max(1, math.ceil(wait_s * 1000))
    limit = deps.limiter.limit
    raise ApiError(
        429, THROTTLED,
        f"Request rate for access key {caller.access_key_id} is over its quota of "
        f"{limit.rate:g} requests per second (burst {limit.burst}); retry after {retry_ms} ms.",
        headers={"x-acs-retry-after": str(retry_ms)},
    )


async def _handle(
    deps: ApiDeps, request: Request, request_id: str, seen: _Seen
) -> dict[str, Any]:
    # known before the body is read, so that its errors (413, 408) answer in that format too
    in_query = _format_in(request.scope.get("query_string", b"").decode("latin-1"))
    seen.format = in_query or "json"
    body = await _read_body(request, deps.body)
    signed = _signed_request(request, body)
    if in_query is None and signed.form:
        seen.format = _format_in(body.decode("utf-8", "replace")) or "json"
    caller = verify(
        signed, secret_for=deps.keys.secret_for, now=_now(deps.clock), nonces=deps.nonces
    )
    _check_rate(deps, caller)
    params = _params(signed)
    action = _action(signed, params)
    seen.action = action
    account = deps.keys.account_for(caller.access_key_id) or ""
    ctx = Context(manager=deps.manager, account=account, now_ms=int(deps.clock.time() * 1000))
    job_id = (params.raw("JobId") or "")[:128]
    logger.debug("api call", extra={"action": action, "request_id": request_id,
                                    **({"job_id": job_id} if job_id else {})})
    return await ACTIONS[action](ctx, params)


def rpc_endpoint(deps: ApiDeps) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        started = time.perf_counter()
        seen = _Seen()
        response, code = await _answer(deps, request, seen)
        if deps.observe is not None:
            deps.observe(seen.action, code, time.perf_counter() - started)
        return response

    return endpoint


async def _answer(deps: ApiDeps, request: Request, seen: _Seen) -> tuple[Response, str]:
    """The response, and "OK" or the ICE error code it carries."""
    request_id = protocol.new_request_id()
    if request.method not in RPC_METHODS:
        code = "UnsupportedHTTPMethod"
        return _error(deps, request_id, seen, 405, code, f"The HTTP method {request.method} "
                      "is not supported; use GET or POST."), code
    try:
        result = await _handle(deps, request, request_id, seen)
    except SignatureError as exc:
        return _error(deps, request_id, seen, exc.status, exc.code, exc.message), exc.code
    except ApiError as exc:
        return _error(deps, request_id, seen, exc.status, exc.code, exc.message,
                      exc.headers), exc.code
    except LivesnapError as exc:
        status, code = protocol.error_for(exc)
        return _error(deps, request_id, seen, status, code, exc.message), code
    except Exception:
        logger.exception("internal error", extra={"action": "api", "request_id": request_id})
        status, code, message = protocol.INTERNAL_ERROR
        return _error(deps, request_id, seen, status, code, message), code
    return _respond(200, {"RequestId": request_id, **result}, seen), "OK"


def _error(
    deps: ApiDeps, request_id: str, seen: _Seen, status: int, code: str, message: str,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = protocol.error_body(request_id, deps.host_id, code, message)
    return _respond(status, body, seen, headers)


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


class _AnyMethod:
    """The RPC endpoint as a plain ASGI app, so that the route takes every HTTP method.

    Starlette answers a method a function route does not list with a plain-text 405; the
    endpoint answers it with an ICE error instead.
    """

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self._endpoint(Request(scope, receive))
        await response(scope, receive, send)


def api_routes(deps: ApiDeps) -> list[BaseRoute]:
    return [
        Route("/", _AnyMethod(rpc_endpoint(deps))),
        Route("/healthz", healthz, methods=["GET"]),
    ]


def create_app(deps: ApiDeps, *, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The ASGI app; the CLI owns the lifespan (store, engine) around it."""
    return Starlette(routes=[*api_routes(deps), *(extra_routes or [])])
