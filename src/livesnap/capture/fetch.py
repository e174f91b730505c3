"""HTTP for HLS: every URL the HLS demuxer opens passes the blocked-network check.

An HLS playlist names other URLs (variant playlists, segments, keys), on any host. FFmpeg
would fetch them itself, unchecked. So an HLS source is opened with :class:`CheckedFetcher`
as PyAV's ``io_open``: FFmpeg asks it for every URL (the playlist too), and it resolves the
host once, refuses an address in a blocked network, and connects to the address it checked
(the name still goes in ``Host`` and, for HTTPS, in SNI and the certificate check), so a
name cannot resolve one way for the check and another for the connection. Redirects are not
followed, as for every other HTTP source. The body is handed to FFmpeg as a file object;
reads block in the reader thread with the socket's timeout (``rw_timeout``).
"""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from livesnap.capture.address import BlockedAddressError, checked_address
from livesnap.capture.tls import client_context
from livesnap.jobs import urls
from livesnap.jobs.urls import DEFAULT_PORTS

__all__ = ["BlockedAddressError", "CheckedFetcher", "is_hls_url"]

_USER_AGENT = "livesnap"
_MAX_ERROR_BODY = 512


def is_hls_url(url: str) -> bool:
    """An ``http(s)://`` URL of an HLS playlist (its path ends in ``.m3u8`` or ``.m3u``)."""
    parts = urlsplit(url)
    return parts.scheme.lower() in ("http", "https") and parts.path.lower().endswith(
        (".m3u8", ".m3u"))


class CheckedFetcher:
    """PyAV ``io_open``: fetches each URL after checking where it leads (module doc)."""

    def __init__(
        self,
        *,
        blocked: Sequence[urls.Network],
        timeout_s: float,
        tls_verify: bool = True,
        ca_file: str = "",
    ) -> None:
        self._blocked = tuple(blocked)
        self._timeout_s = timeout_s
        self._tls = client_context(verify=tls_verify, ca_file=ca_file)
        # Why a URL was refused. FFmpeg's HLS demuxer treats a refused segment as a missing
        # one and goes on reloading the playlist, so after one refusal every request is
        # refused: the open or the read then fails, and the reader reports this reason.
        self.refused = ""

    def __call__(self, url: str, flags: int, options: dict[str, Any]) -> _Body:
        if self.refused:
            raise BlockedAddressError(self.refused)
        try:
            return self._fetch(url)
        except BlockedAddressError as exc:
            self.refused = str(exc)
            raise

    def _fetch(self, url: str) -> _Body:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise BlockedAddressError(f"HLS may only fetch http(s) URLs, not {scheme}://")
        host = parts.hostname
        port = parts.port or DEFAULT_PORTS[scheme]
        address = checked_address(host, port, self._blocked, what="HLS URL")
        connection = self._connection(scheme, address, host, port)
        try:
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            connection.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            default_port = port == DEFAULT_PORTS[scheme]
            connection.putheader("Host", host if default_port else f"{host}:{port}")
            connection.putheader("User-Agent", _USER_AGENT)
            connection.endheaders()
            response = connection.getresponse()
        except (OSError, http.client.HTTPException):
            connection.close()
            raise
        if response.status != 200:
            response.read(_MAX_ERROR_BODY)
            connection.close()
            kind = "redirect (not followed)" if 300 <= response.status < 400 else "error"
            raise OSError(f"HTTP {kind} {response.status} {response.reason} for {host}")
        return _Body(response, connection)

    def _connection(
        self, scheme: str, address: str, host: str, port: int
    ) -> http.client.HTTPConnection:
        if scheme == "https":
            return _PinnedHTTPS(address, port, host, self._tls, self._timeout_s)
        return http.client.HTTPConnection(address, port, timeout=self._timeout_s)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address already checked, with the host name for SNI and the certificate."""

    def __init__(
        self, address: str, port: int, host: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        super().__init__(address, port, timeout=timeout, context=context)
        self._server_name = host
        self._tls_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._tls_context.wrap_socket(raw, server_hostname=self._server_name)


class _Body:
    """A response body as the file object FFmpeg reads (``read`` only: not seekable)."""

    def __init__(self, response: http.client.HTTPResponse,
                 connection: http.client.HTTPConnection) -> None:
        self._response = response
        self._connection = connection

    def read(self, size: int = -1) -> bytes:
        return self._response.read(size if size >= 0 else None)

    def close(self) -> None:
        self._response.close()
        self._connection.close()
