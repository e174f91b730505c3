"""A small signed client for livesnap's ICE API, for the CLI and for scripts.

It signs each request with ACS3-HMAC-SHA256 (the default, as the current Alibaba SDKs do) or
with RPC HMAC-SHA1 (``scheme="rpc"``), sends the action parameters as a form body over
httpx, and returns the response JSON. The signing functions are pure and written from the
public algorithms; they share no code with the server's verifier, so the round-trip tests
check one implementation against the other.

Errors::

    ClientError
    ├── ApiError          the server answered with an ICE error (code, message, HTTP status)
    └── TransportError    no usable answer: refused, timed out, or not an ICE response
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import httpx

__all__ = [
    "API_VERSION",
    "ApiError",
    "ClientError",
    "Credentials",
    "IceClient",
    "PreparedRequest",
    "Scheme",
    "TransportError",
    "normalize_endpoint",
    "sign_acs3",
    "sign_rpc",
]

API_VERSION = "2020-11-09"
FORM_TYPE = "application/x-www-form-urlencoded"
Scheme = Literal["acs3", "rpc"]
Params = Mapping[str, str] | Sequence[tuple[str, str]]


class ClientError(Exception):
    """The request did not succeed."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(ClientError):
    """The server refused the request with an ICE error envelope."""

    def __init__(self, *, code: str, message: str, status: int, request_id: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.request_id = request_id

    @property
    def server_side(self) -> bool:
        """True for 5xx answers: the server failed, not the request."""
        return self.status >= 500

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransportError(ClientError):
    """No usable answer from the endpoint (network failure, timeout, not an ICE server)."""


@dataclass(frozen=True, kw_only=True)
class Credentials:
    access_key_id: str
    access_key_secret: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class PreparedRequest:
    """A signed request, ready to send: ``POST path?query`` with a form body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


# --------------------------------------------------------------------------- pure signing


def _pct(text: str) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes (``~`` stays, space is ``%20``)."""
    return quote(text, safe="-_.~")


def _pairs(params: Params) -> list[tuple[str, str]]:
    return list(params.items()) if isinstance(params, Mapping) else list(params)


def _encode(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{_pct(k)}={_pct(v)}" for k, v in pairs)


def _canonical(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{k}={v}" for k, v in sorted((_pct(k), _pct(v)) for k, v in pairs))


def _timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sign_rpc(
    action: str, params: Params, credentials: Credentials, *, now: datetime, nonce: str,
    path: str = "/",
) -> PreparedRequest:
    """RPC HMAC-SHA1: common parameters and ``Signature`` in the query, the rest in the body."""
    common = [
        ("Action", action),
        ("Version", API_VERSION),
        ("Format", "JSON"),
        ("AccessKeyId", credentials.access_key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce),
        ("Timestamp", _timestamp(now)),
    ]
    body = _pairs(params)
    string_to_sign = f"POST&%2F&{_pct(_canonical(common + body))}"
    key = (credentials.access_key_secret + "&").encode()
    digest = hmac.new(key, string_to_sign.encode(), hashlib.sha1).digest()
    signature = base64.b64encode(digest).decode("ascii")
    return PreparedRequest(
        method="POST",
        path=path,
        query=_encode([*common, ("Signature", signature)]),
        headers={"content-type": FORM_TYPE},
        body=_encode(body).encode("ascii"),
    )


def sign_acs3(
    action: str, params: Params, credentials: Credentials, *, host: str, now: datetime,
    nonce: str, path: str = "/",
) -> PreparedRequest:
    """ACS3-HMAC-SHA256: parameters in the body, every ``x-acs-*`` header signed."""
    body = _encode(_pairs(params)).encode("ascii")
    headers = {
        "content-type": FORM_TYPE,
        "host": host,
        "x-acs-action": action,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
        "x-acs-date": _timestamp(now),
        "x-acs-signature-nonce": nonce,
        "x-acs-version": API_VERSION,
    }
    signed = sorted(headers)
    canonical_request = "\n".join((
        "POST",
        _pct(path).replace("%2F", "/"),
        "",
        "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
        ";".join(signed),
        headers["x-acs-content-sha256"],
    ))
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical_request.encode()).hexdigest()
    signature = hmac.new(
        credentials.access_key_secret.encode(), string_to_sign.encode(), hashlib.sha256
    ).hexdigest()
    headers["authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={credentials.access_key_id},"
        f"SignedHeaders={';'.join(signed)},Signature={signature}"
    )
    return PreparedRequest(method="POST", path=path, query="", headers=headers, body=body)


# --------------------------------------------------------------------------- the client


def normalize_endpoint(endpoint: str) -> httpx.URL:
    """``host:port`` or a URL → an ``http(s)://`` URL; ``ValueError`` if it is not one."""
    text = endpoint.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise ValueError(f"invalid endpoint {endpoint!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"invalid endpoint {endpoint!r}: use http://host:port")
    return url


def _utcnow() -> datetime:
    return datetime.now(tz=UTC)


def _new_nonce() -> str:
    return uuid.uuid4().hex


class IceClient:
    """Calls ICE actions on one endpoint with one access key. Not thread-safe."""

    def __init__(
        self,
        *,
        endpoint: str,
        credentials: Credentials,
        scheme: Scheme = "acs3",
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        now: Callable[[], datetime] = _utcnow,
        nonce: Callable[[], str] = _new_nonce,
    ) -> None:
        self.endpoint = normalize_endpoint(endpoint)
        self._credentials = credentials
        self._scheme = scheme
        self._timeout_s = timeout_s
        self._now = now
        self._nonce = nonce
        self._http = httpx.Client(timeout=timeout_s, transport=transport)

    def __enter__(self) -> IceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def prepare(self, action: str, params: Params = ()) -> PreparedRequest:
        """The signed request for ``action`` (fresh timestamp and nonce)."""
        path = self.endpoint.path or "/"
        if self._scheme == "rpc":
            return sign_rpc(action, params, self._credentials, now=self._now(),
                            nonce=self._nonce(), path=path)
        host = self.endpoint.netloc.decode("ascii")
        return sign_acs3(action, params, self._credentials, host=host, now=self._now(),
                         nonce=self._nonce(), path=path)

    @property
    def access_key_id(self) -> str:
        return self._credentials.access_key_id

    def call(self, action: str, params: Params = ()) -> dict[str, Any]:
        """Run one action; the response JSON. Raises ``ApiError`` or ``TransportError``."""
        prepared = self.prepare(action, params)
        url = self.endpoint.copy_with(path=prepared.path, query=prepared.query.encode() or None)
        response = self._send(url, prepared)
        body = self._json(response)
        if response.status_code >= 400 or ("Code" in body and response.status_code != 200):
            raise _api_error(body, response.status_code)
        return body

    def _send(self, url: httpx.URL, prepared: PreparedRequest) -> httpx.Response:
        where = str(self.endpoint).rstrip("/")
        try:
            return self._http.request(
                prepared.method, url, headers=prepared.headers, content=prepared.body
            )
        except httpx.TimeoutException as exc:
            raise TransportError(f"{where} did not answer within {self._timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {where}: {_reason(exc)}") from exc

    def metrics_text(self) -> str:
        """The server's ``/metrics`` exposition (no signature: it is the operators' endpoint).
        Raises ``TransportError`` if it cannot be read."""
        url = self.endpoint.copy_with(path=self.endpoint.path.rstrip("/") + "/metrics")
        where = str(self.endpoint).rstrip("/")
        try:
            response = self._http.get(url)
        except httpx.TimeoutException as exc:
            raise TransportError(f"{where} did not answer within {self._timeout_s:g} s") from exc
        except httpx.HTTPError as exc:
            raise TransportError(f"cannot reach {where}: {_reason(exc)}") from exc
        if response.status_code != 200 or "livesnap_build_info" not in response.text:
            raise TransportError(f"{where}/metrics answered HTTP {response.status_code} "
                                 "without livesnap's metrics (is it a livesnap server?)")
        return response.text

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise TransportError(
                f"{str(self.endpoint).rstrip('/')} answered HTTP {response.status_code} "
                "without an ICE response (is it a livesnap server?)"
            )
        return body


def _api_error(body: Mapping[str, Any], status: int) -> ApiError:
    return ApiError(
        code=str(body.get("Code") or f"HTTP{status}"),
        message=str(body.get("Message") or ""),
        status=status,
        request_id=str(body.get("RequestId") or ""),
    )


def _reason(exc: httpx.HTTPError) -> str:
    """The innermost cause, which names the real problem (``[Errno 111] Connection refused``)."""
    cause: BaseException = exc
    for _ in range(10):  # bounded: a cycle in the chain must not hang the CLI
        inner = cause.__cause__ or cause.__context__
        if inner is None:
            break
        cause = inner
    return str(cause) or type(cause).__name__
