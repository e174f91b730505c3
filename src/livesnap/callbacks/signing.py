"""Callback signatures (pure): the headers livesnap sends, and the check receivers run.

The signature is ``sha256=`` followed by the lowercase hex HMAC-SHA256, keyed with the
account's callback key (its UTF-8 bytes), of the bytes::

    f"{timestamp}.".encode() + body

where ``timestamp`` is the ``X-Livesnap-Timestamp`` header (unix seconds, decimal) and
``body`` is the raw request body. Putting the timestamp under the signature lets a receiver
reject old requests (replays) by checking that the timestamp is recent.
"""

from __future__ import annotations

import hashlib
import hmac

EVENT_ID_HEADER = "X-Livesnap-Event-Id"
EVENT_TYPE_HEADER = "X-Livesnap-Event-Type"
TIMESTAMP_HEADER = "X-Livesnap-Timestamp"
SIGNATURE_HEADER = "X-Livesnap-Signature"
ATTEMPT_HEADER = "X-Livesnap-Attempt"
USER_AGENT = "livesnap-callbacks/1"
SCHEME = "sha256="
DEFAULT_TOLERANCE_S = 300


def signature(key: str, timestamp: int | str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256(key, f"{timestamp}." + body)>``."""
    mac = hmac.new(key.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return SCHEME + mac.hexdigest()


def headers(
    *, key: str, event_id: str, event_type: str, timestamp: int, body: bytes, attempt: int
) -> dict[str, str]:
    """Every header of one delivery attempt (``attempt`` counts from 1)."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: event_id,
        EVENT_TYPE_HEADER: event_type,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(key, timestamp, body),
        ATTEMPT_HEADER: str(attempt),
    }


def verify_signature(
    key: str,
    body: bytes,
    timestamp: str,
    signature_header: str,
    *,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """True if ``signature_header`` signs ``body`` at ``timestamp`` and the time is recent.

    ``timestamp`` and ``signature_header`` are the raw header values; ``now`` is the
    receiver's unix time. A request more than ``tolerance_s`` away from ``now`` is refused.
    """
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > tolerance_s:
        return False
    expected = signature(key, timestamp, body).encode("ascii")
    given = signature_header.strip().encode("utf-8", "replace")
    return hmac.compare_digest(expected, given)


__all__ = [
    "ATTEMPT_HEADER",
    "EVENT_ID_HEADER",
    "EVENT_TYPE_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "USER_AGENT",
    "headers",
    "signature",
    "verify_signature",
]
