"""The ASGI app: one RPC endpoint at ``/`` that verifies, routes and answers like ICE.

Pipeline per request: read the body (bounded) → verify the signature → route on ``Action``
or ``x-acs-action`` → check ``Version`` → parse parameters → call the handler → JSON.
Every answer is a JSON object with ``RequestId``; never a redirect, never a 500 for bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from livesnap.api import protocol
from livesnap.api.handlers import ACTIONS, Context
from livesnap.api.params import Params
from livesnap.api.signature import NonceCache, SignatureError, SignedRequest, verify
from livesnap.clock import Clock
from livesnap.config import KeyRing
from livesnap.errors import LivesnapError
from livesnap.jobs.manager import JobManager

logger = logging.getLogger(__name__)

API_VERSION = "2020-11-09"
MAX_BODY = 1024 * 1024
JSON_TYPE = "application/json;charset=utf-8"


@dataclass(frozen=True, kw_only=True)
class ApiDeps:
    manager: JobManager
    keys: KeyRing
    clock: Clock
    nonces: NonceCache
    host_id: str = "livesnap"


class ApiError(Exception):
    """A wire-level rejection (before any use case runs)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _respond(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(data, status_code=status, media_type=JSON_TYPE)


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise ApiError(413, "InvalidParameter", "The request body is larger than 1 MiB.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, "InvalidParameter", "The request body is larger than 1 MiB.")
        chunks.append(chunk)
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
    return Params(pairs)


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


async def _handle(deps: ApiDeps, request: Request, request_id: str) -> dict[str, Any]:
    body = await _read_body(request)
    signed = _signed_request(request, body)
    caller = verify(
        signed, secret_for=deps.keys.secret_for, now=_now(deps.clock), nonces=deps.nonces
    )
    params = _params(signed)
    action = _action(signed, params)
    account = deps.keys.account_for(caller.access_key_id) or ""
    ctx = Context(manager=deps.manager, account=account, now_ms=int(deps.clock.time() * 1000))
    job_id = (params.raw("JobId") or "")[:128]
    logger.debug("api call", extra={"action": action, "request_id": request_id,
                                    **({"job_id": job_id} if job_id else {})})
    return await ACTIONS[action](ctx, params)


def rpc_endpoint(deps: ApiDeps) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        request_id = protocol.new_request_id()
        try:
            result = await _handle(deps, request, request_id)
        except SignatureError as exc:
            return _error(deps, request_id, exc.status, exc.code, exc.message)
        except ApiError as exc:
            return _error(deps, request_id, exc.status, exc.code, exc.message)
        except LivesnapError as exc:
            status, code = protocol.error_for(exc)
            return _error(deps, request_id, status, code, exc.message)
        except Exception:
            logger.exception("internal error", extra={"action": "api", "request_id": request_id})
            status, code, message = protocol.INTERNAL_ERROR
            return _error(deps, request_id, status, code, message)
        return _respond(200, {"RequestId": request_id, **result})

    return endpoint


def _error(deps: ApiDeps, request_id: str, status: int, code: str, message: str) -> Response:
    return _respond(status, protocol.error_body(request_id, deps.host_id, code, message))


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


def api_routes(deps: ApiDeps) -> list[BaseRoute]:
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    return [
        Route("/", rpc_endpoint(deps), methods=methods),
        Route("/healthz", healthz, methods=["GET"]),
    ]


def create_app(deps: ApiDeps, *, extra_routes: list[BaseRoute] | None = None) -> Starlette:
    """The ASGI app; the CLI owns the lifespan (store, engine) around it."""
    return Starlette(routes=[*api_routes(deps), *(extra_routes or [])])
