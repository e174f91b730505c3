"""One name resolution per connection: FFmpeg connects to the address that was checked.

The blocked-network check (``LIVESNAP_BLOCKED_NETWORKS``) resolves the stream's host name; if
FFmpeg then resolved the name again, a name server that answers differently the second time
(DNS rebinding) would lead it to a blocked address. So for the schemes FFmpeg connects to
over plain TCP (``rtmp``, ``rtsp``, and ``http`` other than HLS), the reader resolves the name
once, checks every address, and hands FFmpeg a URL with an address in place of the name (the
next one if it cannot be reached, as FFmpeg itself would try them); what the name said to the
server goes along as FFmpeg options: the RTMP ``tcUrl`` and the HTTP ``Host`` header. An RTSP
request names the address.

TLS schemes (``rtmps``, ``rtsps``, ``https``) keep the name: the certificate is checked against
it, so a name rebound to another address finds no server that can prove to be it. HLS goes
through ``capture.fetch``, which pins every request the same way.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlsplit, urlunsplit

from livesnap.jobs import urls

PINNED_SCHEMES = frozenset({"rtmp", "rtsp", "http"})

Resolver = Callable[[str, int], list[str]]
"""Host name and port → its addresses, in the order to try them (``OSError`` if none)."""


class BlockedAddressError(OSError):
    """The host resolves into a blocked network."""


def system_addresses(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host`` (``OSError`` if it cannot resolve it)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    return [str(info[4][0]) for info in infos]


def checked_addresses(
    host: str, port: int, blocked: Sequence[urls.Network], *, what: str,
    resolve: Resolver = system_addresses,
) -> list[str]:
    """``host``'s addresses to connect to, in order, once none of them is blocked."""
    addresses = [host] if urls.is_ip_literal(host) else resolve(host, port)
    if not addresses:
        raise OSError(f"cannot resolve {host}: no address")
    bad = urls.blocked_address(addresses, blocked)
    if bad is not None:
        raise BlockedAddressError(f"{what} host {host} resolves into a blocked network ({bad})")
    return addresses


def checked_address(
    host: str, port: int, blocked: Sequence[urls.Network], *, what: str,
    resolve: Resolver = system_addresses,
) -> str:
    """The address to connect to: ``host``'s first, once none of them is blocked."""
    return checked_addresses(host, port, blocked, what=what, resolve=resolve)[0]


@dataclass(frozen=True)
class Pinned:
    """The URL FFmpeg opens and the options that carry what the name said."""

    url: str
    options: dict[str, str] = field(default_factory=dict)


def pin(url: str, blocked: Sequence[urls.Network], *,
        resolve: Resolver = system_addresses) -> list[Pinned]:
    """The URLs to open instead of ``url``, in order: one per address of its host name, every
    address checked first (see the module's docstring); ``url`` itself for other schemes and
    for an address literal."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme not in PINNED_SCHEMES or not host or urls.is_ip_literal(host):
        return [Pinned(url)]
    port = parts.port or urls.DEFAULT_PORTS[scheme]
    addresses = checked_addresses(host, port, blocked, what="stream URL", resolve=resolve)
    options: dict[str, str] = {}
    if scheme == "rtmp":
        options["rtmp_tcurl"] = _tcurl(parts, host, port)
    elif scheme == "http":
        options["headers"] = f"Host: {host if parts.port is None else f'{host}:{parts.port}'}\r\n"
    userinfo = parts.netloc.rpartition("@")[0]
    return [Pinned(urlunsplit((
        parts.scheme,
        (f"{userinfo}@" if userinfo else "") + (f"[{address}]" if ":" in address else address)
        + (f":{parts.port}" if parts.port is not None else ""),
        parts.path, parts.query, parts.fragment)), options)
        for address in dict.fromkeys(addresses)]


def _tcurl(parts: SplitResult, host: str, port: int) -> str:
    """The ``tcUrl`` FFmpeg sends when it connects by name: ``rtmp://host:port/app``, with the
    application read from the path as FFmpeg reads it (the first segment; the first two
    when the path has three or more and no ``?`` or ``:`` in the stream name's place)."""
    segments = parts.path.lstrip("/").split("/")
    second = segments[1] if len(segments) > 1 else ""
    one = (len(segments) < 3 or segments[0] == "ondemand" or parts.query
           or ":" in second)
    app = segments[0] if one else "/".join(segments[:2])
    return f"{parts.scheme.lower()}://{host}:{port}/{app}"
