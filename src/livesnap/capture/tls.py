"""TLS of stream sources: which authorities are trusted, and why a certificate was refused.

One CA bundle serves both TLS clients of the capture: FFmpeg's (``rtmps://`` and
``https://`` sources, through ``av.open`` options) and Python's (the HLS fetcher in
``capture.fetch``, the handshake that explains a certificate FFmpeg refused, and the one that
checks an ``rtsps://`` source's certificate before FFmpeg connects: FFmpeg's RTSP demuxer
opens its TLS connection without the verification options).
"""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import urlsplit

from livesnap.jobs.urls import DEFAULT_PORTS

__all__ = ["CHECKED_FIRST_SCHEMES", "VERIFIED_SCHEMES", "certificate_problem",
           "certificate_reason", "client_context", "ffmpeg_options", "system_ca_bundle"]

# Schemes whose TLS connection FFmpeg opens with the options given to av.open (rtmp and http
# hand them on to their tls:// connection; the RTSP demuxer opens its own without them).
VERIFIED_SCHEMES = frozenset({"rtmps", "https"})
# Schemes whose certificate livesnap checks with a handshake of its own before FFmpeg
# connects, because FFmpeg cannot be told to (its RTSP demuxer drops the options).
CHECKED_FIRST_SCHEMES = frozenset({"rtsps"})
# where distributions keep the system's CA bundle (Debian/Ubuntu, Fedora/RHEL, openSUSE, Alpine)
_SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem",
)


def system_ca_bundle() -> str:
    """The system's CA bundle, else certifi's (FFmpeg's GnuTLS in PyAV's wheel looks for a
    bundle where the wheel was built, which is not where this system keeps it)."""
    for path in _SYSTEM_CA_BUNDLES:
        if os.path.isfile(path):
            return path
    import certifi

    return str(certifi.where())


def ffmpeg_options(*, verify: bool, ca_file: str) -> dict[str, str]:
    """FFmpeg's TLS options: the certificate (and the host name) is verified against
    ``ca_file`` ("" = the system's bundle) unless ``verify`` is off."""
    if not verify:
        return {"tls_verify": "0"}
    return {"tls_verify": "1", "ca_file": ca_file or system_ca_bundle()}


def client_context(*, verify: bool, ca_file: str) -> ssl.SSLContext:
    """Python's TLS client context with the same trust as :func:`ffmpeg_options`."""
    context = ssl.create_default_context(cafile=ca_file or system_ca_bundle())
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_reason(exc: ssl.SSLCertVerificationError) -> str:
    """``LastError``'s words for a refused certificate."""
    return f"TLS certificate not accepted: {exc.verify_message}"


def certificate_problem(url: str, *, verify: bool, ca_file: str, timeout_s: float) -> str | None:
    """Why the certificate of an ``rtmps://``/``https://``/``rtsps://`` source is not
    accepted, or None.

    FFmpeg reports a refused certificate as a bare I/O error; after a failed open this
    handshake (Python's TLS, the same CA bundle and host name) says what was wrong. For
    ``rtsps://`` it runs before the open and is the only check.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in VERIFIED_SCHEMES | CHECKED_FIRST_SCHEMES or not verify \
            or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
        context = client_context(verify=True, ca_file=ca_file)
        with (socket.create_connection((parts.hostname, port), timeout_s) as raw,
              context.wrap_socket(raw, server_hostname=parts.hostname)):
            return None
    except ssl.SSLCertVerificationError as exc:
        return certificate_reason(exc)
    except (OSError, ValueError):
        return None  # not a certificate problem: FFmpeg's own reason stands
