"""A small client-side RPC HMAC-SHA1 signer for tests that build raw requests themselves.

Written from the public algorithm (spec §6.2); the acceptance tests use the official SDKs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from datetime import UTC, datetime
from urllib.parse import quote, urlencode


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
) -> str:
    """The signed query string for an RPC request (``body`` pairs are signed too)."""
    stamp = (now or datetime.now(tz=UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    common = [
        ("Action", action),
        ("Version", "2020-11-09"),
        ("Format", "JSON"),
        ("AccessKeyId", key_id),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureVersion", "1.0"),
        ("SignatureNonce", nonce or uuid.uuid4().hex),
        ("Timestamp", stamp),
    ]
    signed = common + pairs + (body or [])
    canon = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted((k, v) for k, v in signed))
    to_sign = f"{method}&%2F&{_pct(canon)}"
    digest = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return urlencode([*common, *pairs, ("Signature", base64.b64encode(digest).decode())])
