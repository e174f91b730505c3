"""Untrusted URLs: stream inputs and callback targets (design.md §4 "Untrusted URLs").

Pure checks. Resolving a host name is I/O, so callers pass the addresses in; the check runs
at Submit and again when connecting or delivering (a name may re-resolve elsewhere).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from livesnap.errors import InvalidParameter

STREAM_SCHEMES = frozenset({"rtmp", "rtmps", "rtsp", "rtsps", "http", "https"})
# schemes a user may expect and livesnap cannot read, with what to do instead
UNSUPPORTED_STREAM_SCHEMES = {
    "srt": "SRT cannot be captured: livesnap's FFmpeg has no SRT protocol. Relay the stream "
           "to RTMP or RTSP (for example with srt-live-transmit or ffmpeg) and submit that URL.",
}
CALLBACK_SCHEMES = frozenset({"http", "https"})
# the port each scheme's URL means when it names none (FFmpeg's: rtmps on 443, rtsps on 322)
DEFAULT_PORTS = {"rtmp": 1935, "rtmps": 443, "rtsp": 554, "rtsps": 322, "http": 80,
                 "https": 443}
MAX_URL_LEN = 255
MAX_HOST_LEN, MAX_LABEL_LEN = 253, 63  # DNS limits (RFC 1035)
DEFAULT_BLOCKED_NETWORKS = (
    "169.254.0.0/16",  # link-local, where cloud metadata services live (169.254.169.254)
    "fe80::/10",  # IPv6 link-local
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
    "100.100.100.200/32",  # Alibaba Cloud metadata
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_LOOPBACK = {4: ipaddress.ip_address("127.0.0.1"), 6: ipaddress.ip_address("::1")}


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings to networks; ``ValueError`` names the bad entry."""
    nets: list[Network] = []
    for spec in specs:
        text = spec.strip()
        if not text:
            continue
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network: {text!r}") from exc
    return tuple(nets)


def _split(
    name: str, url: str, schemes: frozenset[str], unsupported: Mapping[str, str] | None = None
) -> SplitResult:
    """The parts of ``url``; ``unsupported``: schemes refused with their own reason."""
    if len(url) > MAX_URL_LEN:
        raise InvalidParameter(f"{name} must be at most {MAX_URL_LEN} characters.")
    if any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        raise InvalidParameter(f"{name} must not contain spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidParameter(f"{name} is not a valid URL.") from exc
    if parts.scheme.lower() not in schemes:
        if unsupported and parts.scheme.lower() in unsupported:
            raise InvalidParameter(f"{name}: {unsupported[parts.scheme.lower()]}")
        allowed = ", ".join(sorted(schemes))
        raise InvalidParameter(f"{name} must use one of the schemes: {allowed}.")
    if not parts.hostname:
        raise InvalidParameter(f"{name} must name a host.")
    if port == 0:
        raise InvalidParameter(f"{name} has an invalid port.")
    _check_host_name(name, parts.hostname)
    return parts


def _check_host_name(name: str, host: str) -> None:
    """Host names in ASCII with labels of 1-63 characters (or an IP address).

    The blocked-network check resolves the name it is given and FFmpeg resolves the one in the
    URL: a non-ASCII name could resolve differently in each (IDNA or raw UTF-8), so it is
    refused, naming its ASCII form.
    """
    if not host.isascii():
        try:
            ascii_form = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidParameter(f"{name} has an invalid host name.") from None
        raise InvalidParameter(
            f"{name} must name its host in ASCII (for this host: {ascii_form}).")
    if is_ip_literal(host):
        return
    labels = host.removesuffix(".").split(".")
    if len(host) > MAX_HOST_LEN or not all(0 < len(label) <= MAX_LABEL_LEN for label in labels):
        raise InvalidParameter(f"{name} has an invalid host name.")


def redacted(url: str) -> str:
    """``url`` with its secrets masked, for showing: the password of ``user:password@`` and
    every query value become ``***`` (a camera's password, a ``?token=``); the rest stays."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        credentials, _, host = netloc.rpartition("@")
        user = credentials.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in credentials else f"{user}@{host}"
    query = "&".join(f"{pair.split('=', 1)[0]}=***" if "=" in pair else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    return parts._replace(netloc=netloc, query=query).geturl()


def check_stream_url(url: str) -> str:
    """The stream URL's host, or ``InvalidParameter``."""
    return _split("StreamInput.Url", url, STREAM_SCHEMES,
                  UNSUPPORTED_STREAM_SCHEMES).hostname or ""


def check_callback_url(url: str) -> str:
    """The callback URL's host, or ``InvalidParameter``."""
    return _split("CallbackUrl", url, CALLBACK_SCHEMES).hostname or ""


def is_ip_literal(host: str) -> bool:
    """True for ``10.0.0.1`` or ``fe80::1%eth0``: no resolution needed."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def blocked_address(addresses: Sequence[str], blocked: Sequence[Network]) -> str | None:
    """The first address that lies in a blocked network, else None."""
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            continue
        mapped = getattr(addr, "ipv4_mapped", None)
        candidates = [addr] if mapped is None else [addr, mapped]
        # a connection to 0.0.0.0 or :: reaches this host's loopback (Linux, BSD), so a
        # block on loopback must cover the unspecified address too
        candidates += [_LOOPBACK[c.version] for c in candidates if c.is_unspecified]
        if any(c in net for c in candidates for net in blocked if c.version == net.version):
            return text
    return None
