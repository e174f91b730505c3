"""Small client-side signers (RPC HMAC-SHA1 and ACS3-HMAC-SHA256) for tests that build raw
requests themselves.

Written from the public algorithms (spec §6.1, §6.2); the acceptance tests use the official
SDKs wherever a request can be expressed through them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from urllib.parse import quote, unquote_to_bytes, urlencode


def _pct(text: str) -> str:
    return quote(text, safe="-_.~")


def rpc_query(
    action: str,
    params: dict[str, str] | list[tuple[str, str]],
    *,
    key_id: str = "testid",
    secret: str = "testsecret",
    method: str = "GET",
    body: list[tuple[str, str]] | None = None,
    now: datetime | None = None,
    nonce: str | None = None,
    fmt: str = "JSON",
) -> str:
    """The signed query string for an RPC request (``body`` pairs are signed too)."""
    stamp = (now or datetime.now(tz=UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    common = [
        ("Action", action),
        ("Version", "2020-11-09"),
        ("Format", fmt),
        ("AccessKeyId", key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce or uuid.uuid4().hex),
        ("Timestamp", stamp),
    ]
    signed = common + pairs + (body or [])
    # sorted after encoding (spec §6.2); the SDKs sort raw names, which gives the same order
    # for the ASCII names they send, but not for duplicated or non-ASCII names
    canon = "&".join(f"{k}={v}" for k, v in sorted((_pct(k), _pct(v)) for k, v in signed))
    to_sign = f"{method}&%2F&{_pct(canon)}"
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return urlencode([*common, *pairs, ("Signature", base64.b64encode(digest).decode())])


def _pct_bytes(data: bytes) -> str:
    return quote(data, safe="-_.~")


def _decode_component(component: str) -> bytes:
    return unquote_to_bytes(component.replace("+", " "))


def acs3_canonical_query(raw_query: str) -> str:
    """ACS3 ``CanonicalQueryString`` of a raw query as sent (spec §6.1 step 4).

    Works on bytes, so a query with invalid UTF-8 or stray ``%`` is canonicalised too.
    """
    pairs = []
    for segment in raw_query.split("&"):
        if segment:
            name, _, value = segment.partition("=")
            pairs.append((_pct_bytes(_decode_component(name)), _pct_bytes(_decode_component(value))))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def acs3_headers(
    action: str,
    *,
    method: str,
    host: str,
    raw_query: str = "",
    body: bytes = b"",
    content_type: str | None = None,
    key_id: str = "testid",
    secret: str = "testsecret",
    now: datetime | None = None,
    nonce: str | None = None,
    version: str = "2020-11-09",
) -> dict[str, str]:
    """The headers of an ACS3-HMAC-SHA256 request (spec §6.1), ``Authorization`` included."""
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": (now or datetime.now(tz=UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": nonce or uuid.uuid4().hex,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    if content_type is not None:
        headers["content-type"] = content_type
    names = sorted(headers)
    canonical = "\n".join([
        method.upper(), "/", acs3_canonical_query(raw_query),
        "".join(f"{n}:{headers[n].strip()}\n" for n in names),
        ";".join(names), headers["x-acs-content-sha256"],
    ])
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={key_id},SignedHeaders={';'.join(names)},"
        f"Signature={signature}"
    )
    return headers
