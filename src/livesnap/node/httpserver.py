"""uvicorn's HTTP/1.1 protocol (h11) with the guards livesnap needs against slow or broken clients.

Part of the edge, with ``service.py``, which hands :func:`guarded_h11` to ``uvicorn.Config``
and checks a TLS certificate and key with :func:`tls_problem` before uvicorn loads them.

* **Request-head deadline.** uvicorn arms its keep-alive timer only after a response, and
  every byte received cancels it, so a client that opens a connection and sends its request
  line and headers one byte at a time (slow-loris) holds the connection forever. Here every
  request head has a deadline, counted from the connection's start or, on a kept-alive
  connection, from the first byte of the next head; bytes that arrive do not extend it. When
  it passes before the head is complete, the connection is closed. (The body has its own
  deadline in ``api/app.py``.) An idle kept-alive connection is uvicorn's: closed after
  ``timeout_keep_alive``, which is long, so that clients polling every few seconds never
  send a request just as the server closes their connection.
* **ICE-shaped protocol errors.** uvicorn answers a malformed request, or a request head
  larger than ``h11_max_incomplete_event_size``, with a plain-text 400; this protocol answers
  with the ICE error envelope instead, so a client only ever sees ICE-shaped errors.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from livesnap.api.app import JSON_TYPE
from livesnap.api.protocol import error_body, new_request_id

logger = logging.getLogger(__name__)

# Largest request line + headers h11 buffers (its default is 16 KiB). A GET with 200
# TemplateIds.N of 64 characters each, signed, stays well below this.
MAX_HEAD_BYTES = 64 * 1024
BAD_HEAD_MESSAGE = (
    "The HTTP request is malformed, or its request line and headers are larger than "
    f"{MAX_HEAD_BYTES // 1024} KiB."
)


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with a request-head deadline and ICE-shaped 400 answers.

    Configure through :func:`guarded_h11`, which fixes the class attributes below.
    """

    header_timeout_s: ClassVar[float] = 10.0
    host_id: ClassVar[str] = "livesnap"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or broken)
            self._cancel_head_deadline()
        elif self._head_deadline is None and not self.transport.is_closing():
            # the first bytes of the next head on a kept-alive connection: its deadline starts
            self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        request_id = new_request_id()
        body = json.dumps(
            error_body(request_id, self.host_id, "InvalidParameter", BAD_HEAD_MESSAGE),
            ensure_ascii=False, separators=(",", ":"),
        ).encode()
        headers = [
            (b"content-type", JSON_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        logger.debug("bad request head", extra={"action": "http_bad_head", "reason": msg,
                                                "request_id": request_id})
        self.transport.close()

    def _arm_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_too_slow(self) -> None:
        self._head_deadline = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        logger.debug("request head not received in time; closing the connection",
                     extra={"action": "http_head_timeout", "timeout_s": self.header_timeout_s})
        self.transport.close()


def guarded_h11(*, header_timeout_s: float, host_id: str) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with these settings, for ``Config(http=…)``."""
    if not header_timeout_s > 0:
        raise ValueError("header_timeout_s must be positive")
    return type(
        "LivesnapH11Protocol", (GuardedH11Protocol,),
        {"header_timeout_s": header_timeout_s, "host_id": host_id},
    )


class _EncryptedKey(Exception):
    """The TLS key asks for a password (OpenSSL would otherwise prompt on the terminal)."""


def _no_password() -> bytes:
    raise _EncryptedKey


def tls_problem(cert: Path | None, key: Path | None) -> str | None:
    """Why a certificate and key cannot serve TLS, in one line naming the file; None when
    they load (or when TLS is off)."""
    if cert is None or key is None:
        return None
    for what, path in (("certificate", cert), ("key", key)):
        try:
            path.read_bytes()
        except OSError as exc:
            return f"cannot read the TLS {what} {path}: {exc.strerror or exc}"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except _EncryptedKey:
        return f"the TLS key {key} is encrypted: give an unencrypted key"
    except ssl.SSLError as exc:
        return _load_failure(cert, key, exc)
    return None


def _load_failure(cert: Path, key: Path, exc: ssl.SSLError) -> str:
    """OpenSSL's reason, or (its bare "PEM lib") which of the two files does not parse."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"the TLS key {key} is not the key of the certificate {cert}"
    if exc.reason:
        return f"the TLS certificate {cert} and key {key} do not load: {exc.reason}"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except ssl.SSLError:
        return f"the TLS certificate {cert} holds no PEM certificate"
    return f"the TLS key {key} is not a PEM private key"
