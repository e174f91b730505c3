"""Server-side verification of the two ICE request signature schemes.

This module is pure: no I/O, no asyncio, no web framework. The HTTP layer turns an incoming
request into a :class:`SignedRequest` and calls :func:`verify`, which either returns the
authenticated :class:`Caller` or raises :class:`SignatureError` carrying the ICE error
(``code``, ``message``, HTTP ``status``) for the response envelope.

Schemes (spec §6):

* **ACS3-HMAC-SHA256** - selected when the ``Authorization`` header starts with ``ACS3-``.
* **RPC-HMAC-SHA1** (``SignatureMethod=HMAC-SHA1``, ``SignatureVersion=1.0``) - selected
  otherwise when the query string or the form body has a ``Signature`` parameter.
* Anything else is rejected with ``IncompleteSignature``.

Order of checks (the first failing check decides the error):

1. **Parse** - ACS3: split ``Authorization``; only ``ACS3-HMAC-SHA256`` is supported;
   ``SignedHeaders`` must cover ``host``, ``x-acs-action``, ``x-acs-version``, ``x-acs-date``,
   ``x-acs-signature-nonce``, ``x-acs-content-sha256`` (and ``content-type`` when the request
   has one and a body: the SDK's async client sends an unsigned ``Content-Type`` with its
   empty GETs, and a type without a body says nothing) and every signed header must be
   present with ``x-acs-signature-nonce`` non-empty (all ``IncompleteSignature``).
   RPC: ``AccessKeyId``, ``Timestamp``, ``SignatureNonce``, ``SignatureMethod``,
   ``SignatureVersion`` must be present and non-empty, checked in that order
   (``MissingParameter``); then method and version values (``InvalidParameter``).
2. **Access key lookup** - ``InvalidAccessKeyId.NotFound`` (404).
3. **Timestamp format** - ``yyyy-MM-ddTHH:mm:ssZ`` (``InvalidTimeStamp.Format``).
4. **Signature** - ACS3 first compares the SHA-256 of the raw body with
   ``x-acs-content-sha256`` (``IncompleteSignature``), then the HMAC; RPC compares the HMAC
   (``SignatureDoesNotMatch``, message ends with the server's string to sign).
5. **Timestamp window** - ``|now - timestamp| <= window`` (``InvalidTimeStamp.Expired``).
6. **Nonce** - accepted once per access key (``SignatureNonceUsed``). Only requests with a
   valid signature and a fresh timestamp reach this step, so a forged or stale request
   never consumes a nonce.

Policy decisions not fixed by the spec:

* Canonicalisation is byte exact: percent-decoding keeps undecodable bytes (via
  ``surrogateescape``) and re-encoding restores them, so any client that percent-encodes
  the UTF-8 (or arbitrary) bytes it signed verifies.
* STS is not supported by this service: ``x-acs-security-token`` / ``SecurityToken`` are
  neither required nor validated (they are covered by the signature when sent). The caller
  is identified solely by the access key that signed the request.
* RPC parameters, common ones and ``Signature`` included, are read from the union of the
  query string and the form body, in any split between the two (older clients put every
  parameter in the body). The string to sign covers every pair as sent, query first, except
  ``Signature``; when a name occurs more than once the first occurrence is the one read (the
  HTTP layer refuses a name given twice with different values before this runs). A
  ``Signature`` value whose ``+`` arrived unescaped (decoded as a space) is compared with the
  space turned back into ``+``.
* A nonce is remembered until its request could no longer pass the timestamp check
  (request timestamp + window), and at least ``NonceCache.window_s`` after it was first seen.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from urllib.parse import quote, unquote

__all__ = [
    "ACS3_ALGORITHM",
    "ACS3_REQUIRED_SIGNED_HEADERS",
    "RPC_SIGNATURE_METHOD",
    "RPC_SIGNATURE_VERSION",
    "Authorization",
    "Caller",
    "NonceCache",
    "Scheme",
    "SignatureError",
    "SignedRequest",
    "acs3_canonical_request",
    "acs3_signature",
    "acs3_string_to_sign",
    "canonical_query_string",
    "parse_authorization",
    "parse_query",
    "parse_timestamp",
    "payload_hash",
    "percent_encode",
    "rpc_signature",
    "rpc_string_to_sign",
    "verify",
]

Scheme = Literal["ACS3-HMAC-SHA256", "HMAC-SHA1"]

ACS3_ALGORITHM: Final = "ACS3-HMAC-SHA256"
RPC_SIGNATURE_METHOD: Final = "HMAC-SHA1"
RPC_SIGNATURE_VERSION: Final = "1.0"

ACS3_REQUIRED_SIGNED_HEADERS: Final[tuple[str, ...]] = (
    "host",
    "x-acs-action",
    "x-acs-version",
    "x-acs-date",
    "x-acs-signature-nonce",
    "x-acs-content-sha256",
)

_RPC_REQUIRED_PARAMS: Final[tuple[str, ...]] = (
    "AccessKeyId",
    "Timestamp",
    "SignatureNonce",
    "SignatureMethod",
    "SignatureVersion",
)

_TIMESTAMP_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z"
)

_INCOMPLETE_PREFIX: Final = "The request signature does not conform to Aliyun standards. "
_MISMATCH_PREFIX: Final = (
    "Specified signature is not matched with our calculation. server string to sign is:"
)


# --------------------------------------------------------------------------- data types


@dataclass(frozen=True, kw_only=True)
class SignedRequest:
    """The parts of an HTTP request that take part in signature verification.

    ``raw_query`` is the query string as received, without the leading ``?``; the HTTP layer
    should decode the raw bytes with ``utf-8``/``surrogateescape`` (clients percent-encode
    everything, so ASCII is the normal case). ``headers`` maps lower-case names to values,
    repeated headers already joined with ``","``.
    """

    method: str
    path: str
    raw_query: str
    headers: Mapping[str, str]
    body: bytes
    form: bool


class SignatureError(Exception):
    """A verification failure, carrying the ICE error for the response envelope."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Caller:
    """The authenticated principal of a request."""

    access_key_id: str
    scheme: Scheme


@dataclass(frozen=True)
class Authorization:
    """The parsed ``Authorization`` header of an ACS3 request."""

    algorithm: str
    credential: str
    signed_headers: tuple[str, ...]
    signature: str


# --------------------------------------------------------------------------- errors


def _incomplete(reason: str) -> SignatureError:
    return SignatureError("IncompleteSignature", _INCOMPLETE_PREFIX + reason)


def _mismatch(string_to_sign: str) -> SignatureError:
    return SignatureError("SignatureDoesNotMatch", _MISMATCH_PREFIX + string_to_sign)


def _missing_parameter(name: str) -> SignatureError:
    return SignatureError(
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied.",
    )


def _invalid_parameter(name: str, value: str) -> SignatureError:
    return SignatureError(
        "InvalidParameter", f'The specified parameter "{name}" is not valid: {value!r}.'
    )


def _bad_timestamp_format() -> SignatureError:
    return SignatureError(
        "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
    )


def _expired() -> SignatureError:
    return SignatureError(
        "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired."
    )


def _nonce_used() -> SignatureError:
    return SignatureError("SignatureNonceUsed", "Specified signature nonce was used already.")


def _access_key_not_found() -> SignatureError:
    return SignatureError(
        "InvalidAccessKeyId.NotFound", "Specified access key is not found.", status=404
    )


# --------------------------------------------------------------------------- encoding


def percent_encode(value: str | bytes, *, safe: str = "") -> str:
    """RFC 3986 percent-encoding as used by both schemes.

    ``A-Z a-z 0-9 - _ . ~`` (plus ``safe``) are kept, every other byte becomes ``%XX`` in
    upper case (space is ``%20``). Text is encoded as UTF-8; lone surrogates produced by
    ``surrogateescape`` decoding turn back into their original bytes.
    """
    data = _utf8(value) if isinstance(value, str) else value
    return quote(data, safe=safe)


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of ``text``; escaped bytes are restored and no input ever raises."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _form_decode(component: str) -> str:
    """Decode one ``application/x-www-form-urlencoded`` component (``+`` is a space)."""
    return unquote(component.replace("+", " "), encoding="utf-8", errors="surrogateescape")


def parse_query(raw: str) -> list[tuple[str, str]]:
    """Split a raw query string or form body into decoded ``(name, value)`` pairs.

    Order and duplicates are kept, empty values are kept (``a=`` and ``a`` both give
    ``("a", "")``), empty segments (``a=1&&b=2``) are skipped.
    """
    pairs: list[tuple[str, str]] = []
    for segment in raw.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        pairs.append((_form_decode(name), _form_decode(value)))
    return pairs


def _parse_form(body: bytes) -> list[tuple[str, str]]:
    return parse_query(body.decode("utf-8", "surrogateescape"))


def _canonical_pairs(pairs: Iterable[tuple[str, str]]) -> str:
    """Percent-encode, sort and join pairs as ``name=value&...``."""
    encoded = sorted((percent_encode(k), percent_encode(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_query_string(raw_query: str) -> str:
    """ACS3 ``CanonicalQueryString`` of a raw query string (empty string for no query)."""
    return _canonical_pairs(parse_query(raw_query))


def payload_hash(body: bytes) -> str:
    """Lower-hex SHA-256 of the raw body (ACS3 ``HashedPayload``)."""
    return hashlib.sha256(body).hexdigest()


def _constant_time_equal(expected: str, given: str) -> bool:
    return hmac.compare_digest(_utf8(expected), _utf8(given))


# --------------------------------------------------------------------------- timestamps


def parse_timestamp(value: str) -> datetime:
    """Parse ``yyyy-MM-ddTHH:mm:ssZ`` into an aware UTC datetime.

    Raises:
        SignatureError: ``InvalidTimeStamp.Format`` for anything else.
    """
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        raise _bad_timestamp_format()
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise _bad_timestamp_format() from None


def _check_window(stamp: datetime, now: datetime, window: timedelta) -> None:
    if abs(now - stamp) > window:
        raise _expired()


# --------------------------------------------------------------------------- nonces


class NonceCache:
    """In-memory record of used ``(access key, nonce)`` pairs.

    Each entry is kept at least ``window_s`` seconds after it was added (longer when the
    caller passes a later ``expires_at``). Expired entries are evicted in expiry order on
    every call. When ``max_entries`` live entries exist, the one closest to expiry (the
    oldest on ties) is dropped to make room, which bounds memory; only requests with a
    valid signature add entries, so filling the cache requires a key holder. Thread-safe.
    """

    def __init__(self, *, window_s: float = 900.0, max_entries: int = 1_000_000) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_s = window_s
        self.max_entries = max_entries
        self._expiry: dict[tuple[str, str], float] = {}
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._sequence = itertools.count()  # FIFO among equal expiries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Number of remembered entries (expired ones may linger until the next call)."""
        return len(self._expiry)

    def seen(self, access_key_id: str, nonce: str, now: float) -> bool:
        """Return True if the nonce is currently remembered for this access key."""
        with self._lock:
            self._evict_expired(now)
            return (access_key_id, nonce) in self._expiry

    def check_and_add(
        self, access_key_id: str, nonce: str, now: float, *, expires_at: float | None = None
    ) -> bool:
        """Record a nonce; return False if it was already used (nothing is changed then).

        Args:
            access_key_id: nonces are scoped per access key.
            nonce: the request's nonce.
            now: current time, seconds since the epoch.
            expires_at: optional earliest forget time (epoch seconds); the entry is kept
                until ``max(now + window_s, expires_at)``.
        """
        key = (access_key_id, nonce)
        expiry = now + self.window_s
        if expires_at is not None:
            expiry = max(expiry, expires_at)
        with self._lock:
            self._evict_expired(now)
            if key in self._expiry:
                return False
            while len(self._expiry) >= self.max_entries:
                self._evict_first()
            self._expiry[key] = expiry
            heapq.heappush(self._heap, (expiry, next(self._sequence), key))
            return True

    def _evict_expired(self, now: float) -> None:
        """Drop entries whose expiry lies strictly before ``now``."""
        while self._heap and self._heap[0][0] < now:
            self._evict_first()

    def _evict_first(self) -> None:
        _, _, key = heapq.heappop(self._heap)
        del self._expiry[key]


def _check_nonce(
    nonces: NonceCache,
    access_key_id: str,
    nonce: str,
    *,
    stamp: datetime,
    now: datetime,
    window: timedelta,
) -> None:
    added = nonces.check_and_add(
        access_key_id, nonce, now.timestamp(), expires_at=(stamp + window).timestamp()
    )
    if not added:
        raise _nonce_used()


# --------------------------------------------------------------------------- ACS3


def parse_authorization(value: str) -> Authorization:
    """Parse ``ALGO Credential=AK,SignedHeaders=h1;h2,Signature=hex``.

    Lenient about spaces around ``,``/``;``/``=``; header names are lower-cased.

    Raises:
        SignatureError: ``IncompleteSignature`` when a part is missing, empty or repeated.
    """
    algorithm, _, rest = value.strip().partition(" ")
    parts: dict[str, str] = {}
    for item in rest.split(","):
        name, sep, part = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise _incomplete(f"Malformed Authorization part {item.strip()!r}.")
        if name in parts:
            raise _incomplete(f"Authorization part {name} is repeated.")
        parts[name] = part.strip()
    for name in ("Credential", "SignedHeaders", "Signature"):
        if not parts.get(name):
            raise _incomplete(f"Authorization part {name} is missing.")
    signed = tuple(h.strip().lower() for h in parts["SignedHeaders"].split(";"))
    if not all(signed):
        raise _incomplete("SignedHeaders contains an empty header name.")
    return Authorization(
        algorithm=algorithm,
        credential=parts["Credential"],
        signed_headers=signed,
        signature=parts["Signature"],
    )


def _canonical_uri(path: str) -> str:
    """Percent-decode the raw path (``+`` stays literal) and re-encode all but ``/``."""
    decoded = unquote(path or "/", encoding="utf-8", errors="surrogateescape")
    return percent_encode(decoded, safe="/")


def _canonical_headers(headers: Mapping[str, str], signed_headers: Sequence[str]) -> str:
    lines: list[str] = []
    for name in signed_headers:
        value = headers.get(name)
        if value is None:
            raise _incomplete(f"Signed header {name} is missing from the request.")
        lines.append(f"{name}:{value.strip()}\n")
    return "".join(lines)


def acs3_canonical_request(req: SignedRequest, signed_headers: Sequence[str]) -> str:
    """ACS3 ``CanonicalRequest`` over the given lower-case signed header names.

    The payload hash is computed from ``req.body`` (not taken from the header).

    Raises:
        SignatureError: ``IncompleteSignature`` if a signed header is absent.
    """
    return "\n".join(
        (
            req.method.upper(),
            _canonical_uri(req.path),
            canonical_query_string(req.raw_query),
            _canonical_headers(req.headers, signed_headers),
            ";".join(signed_headers),
            payload_hash(req.body),
        )
    )


def acs3_string_to_sign(canonical_request: str, algorithm: str = ACS3_ALGORITHM) -> str:
    """``ALGORITHM\\n`` + lower-hex SHA-256 of the canonical request."""
    digest = hashlib.sha256(_utf8(canonical_request)).hexdigest()
    return f"{algorithm}\n{digest}"


def acs3_signature(secret: str, string_to_sign: str) -> str:
    """Lower-hex HMAC-SHA256 keyed with the access key secret."""
    return hmac.new(
        secret.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha256
    ).hexdigest()


def _check_acs3_policy(auth: Authorization, req: SignedRequest) -> str:
    """Apply the parse-stage ACS3 rules; return the request nonce."""
    headers = req.headers
    if auth.algorithm != ACS3_ALGORITHM:
        raise _incomplete(f"Unsupported signature algorithm {auth.algorithm!r}.")
    required = list(ACS3_REQUIRED_SIGNED_HEADERS)
    if "content-type" in headers and req.body:
        required.append("content-type")
    for name in required:
        if name not in auth.signed_headers:
            raise _incomplete(f"Header {name} must be signed.")
    for name in auth.signed_headers:
        if name not in headers:
            raise _incomplete(f"Signed header {name} is missing from the request.")
    nonce = headers["x-acs-signature-nonce"].strip()
    if not nonce:
        raise _incomplete("Header x-acs-signature-nonce is empty.")
    return nonce


def _check_payload(req: SignedRequest) -> None:
    declared = req.headers["x-acs-content-sha256"].strip().lower()
    if not _constant_time_equal(payload_hash(req.body), declared):
        raise _incomplete("The x-acs-content-sha256 header does not match the request body.")


def _verify_acs3(
    req: SignedRequest,
    secret_for: Callable[[str], str | None],
    now: datetime,
    nonces: NonceCache,
    window: timedelta,
) -> Caller:
    auth = parse_authorization(req.headers["authorization"])
    nonce = _check_acs3_policy(auth, req)
    secret = _lookup_secret(secret_for, auth.credential)
    stamp = parse_timestamp(req.headers["x-acs-date"].strip())
    _check_payload(req)
    string_to_sign = acs3_string_to_sign(acs3_canonical_request(req, auth.signed_headers))
    if not _constant_time_equal(acs3_signature(secret, string_to_sign), auth.signature.lower()):
        raise _mismatch(string_to_sign)
    _check_window(stamp, now, window)
    _check_nonce(nonces, auth.credential, nonce, stamp=stamp, now=now, window=window)
    return Caller(auth.credential, ACS3_ALGORITHM)


# --------------------------------------------------------------------------- RPC


def rpc_string_to_sign(method: str, params: Iterable[tuple[str, str]]) -> str:
    """RPC ``StringToSign`` = ``METHOD&%2F&`` + percentEncode(CanonicalizedQueryString).

    ``params`` are the decoded signed pairs (query plus form body) without ``Signature``.
    """
    return f"{method.upper()}&%2F&{percent_encode(_canonical_pairs(params))}"


def rpc_signature(secret: str, string_to_sign: str) -> str:
    """Base64 HMAC-SHA1 keyed with ``secret + "&"``."""
    digest = hmac.new(
        (secret + "&").encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class _RpcCommon:
    access_key_id: str
    timestamp: str
    nonce: str


def _rpc_common(params: Sequence[tuple[str, str]]) -> _RpcCommon:
    """Extract and check the RPC common parameters (first occurrence wins)."""
    first: dict[str, str] = {}
    for name, value in params:
        first.setdefault(name, value)
    for name in _RPC_REQUIRED_PARAMS:
        if not first.get(name):
            raise _missing_parameter(name)
    if first["SignatureMethod"] != RPC_SIGNATURE_METHOD:
        raise _invalid_parameter("SignatureMethod", first["SignatureMethod"])
    if first["SignatureVersion"] != RPC_SIGNATURE_VERSION:
        raise _invalid_parameter("SignatureVersion", first["SignatureVersion"])
    return _RpcCommon(first["AccessKeyId"], first["Timestamp"], first["SignatureNonce"])


def _verify_rpc(
    req: SignedRequest,
    params: Sequence[tuple[str, str]],
    secret_for: Callable[[str], str | None],
    now: datetime,
    nonces: NonceCache,
    window: timedelta,
) -> Caller:
    common = _rpc_common(params)
    given = next(value for name, value in params if name == "Signature").replace(" ", "+")
    secret = _lookup_secret(secret_for, common.access_key_id)
    stamp = parse_timestamp(common.timestamp)
    string_to_sign = rpc_string_to_sign(req.method, [p for p in params if p[0] != "Signature"])
    if not _constant_time_equal(rpc_signature(secret, string_to_sign), given):
        raise _mismatch(string_to_sign)
    _check_window(stamp, now, window)
    _check_nonce(nonces, common.access_key_id, common.nonce, stamp=stamp, now=now, window=window)
    return Caller(common.access_key_id, RPC_SIGNATURE_METHOD)


# --------------------------------------------------------------------------- entry point


def _lookup_secret(secret_for: Callable[[str], str | None], access_key_id: str) -> str:
    secret = secret_for(access_key_id)
    if secret is None:
        raise _access_key_not_found()
    return secret


def verify(
    req: SignedRequest,
    *,
    secret_for: Callable[[str], str | None],
    now: datetime,
    nonces: NonceCache,
    window: timedelta = timedelta(minutes=15),
) -> Caller:
    """Authenticate a request signed with ACS3-HMAC-SHA256 or RPC-HMAC-SHA1.

    Args:
        req: the request as received.
        secret_for: returns the secret of an access key id, or None if unknown.
        now: current time, timezone-aware.
        nonces: replay cache; a nonce is recorded only for fully valid requests.
        window: allowed clock difference in either direction.

    Returns:
        The authenticated caller.

    Raises:
        SignatureError: the ICE error to send back (see the module docstring for the order).
        ValueError: ``now`` is naive.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    authorization = req.headers.get("authorization", "").strip()
    if authorization.startswith("ACS3-"):
        return _verify_acs3(req, secret_for, now, nonces, window)
    params = parse_query(req.raw_query) + (_parse_form(req.body) if req.form else [])
    if any(name == "Signature" for name, _ in params):
        return _verify_rpc(req, params, secret_for, now, nonces, window)
    raise _incomplete("No signature was found in the request.")
