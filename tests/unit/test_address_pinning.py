"""One resolution per connection: FFmpeg gets the checked address, the server the name."""

from __future__ import annotations

import pytest

from livesnap.capture.address import BlockedAddressError, Pinned, pin
from livesnap.jobs.urls import DEFAULT_BLOCKED_NETWORKS, parse_networks

BLOCKED = parse_networks(DEFAULT_BLOCKED_NETWORKS)


def resolver(*addresses: str):
    asked: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(addresses)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


def test_rtmp_gets_the_address_and_keeps_the_name_in_its_tcurl():
    resolve = resolver("203.0.113.7", "203.0.113.8")
    assert pin("rtmp://cam.example.com/live/stream", BLOCKED, resolve=resolve) == [
        Pinned("rtmp://203.0.113.7/live/stream",
               {"rtmp_tcurl": "rtmp://cam.example.com:1935/live"}),
        Pinned("rtmp://203.0.113.8/live/stream",
               {"rtmp_tcurl": "rtmp://cam.example.com:1935/live"}),
    ]
    assert resolve.asked == [("cam.example.com", 1935)]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("path", "app"), [
    ("/live/stream", "live"),
    ("/a/b/stream", "a/b"),  # FFmpeg's application: the first two of three segments
    ("/live/stream?token=x", "live"),
    ("/ondemand/a/b", "ondemand"),
    ("/vod/mp4:clip/x", "vod"),
])
def test_the_tcurl_names_the_application_as_ffmpeg_reads_it(path, app):
    [target, *_] = pin(f"rtmp://cam.example.com:1936{path}", BLOCKED,
                       resolve=resolver("203.0.113.7"))
    assert target.url == f"rtmp://203.0.113.7:1936{path}"
    assert target.options == {"rtmp_tcurl": f"rtmp://cam.example.com:1936/{app}"}


def test_http_flv_sends_the_name_as_its_host_header():
    [target] = pin("http://cdn.example.com:8080/live/cam.flv", BLOCKED,
                   resolve=resolver("203.0.113.7"))
    assert target == Pinned("http://203.0.113.7:8080/live/cam.flv",
                            {"headers": "Host: cdn.example.com:8080\r\n"})


def test_rtsp_keeps_its_credentials_and_brackets_an_ipv6_address():
    [target] = pin("rtsp://viewer:pa55@cam.example.com/stream", BLOCKED,
                   resolve=resolver("2001:db8::7"))
    assert target == Pinned("rtsp://viewer:pa55@[2001:db8::7]/stream")


def test_one_blocked_address_refuses_the_name():
    with pytest.raises(BlockedAddressError, match=r"cam\.example\.com .*169\.254\.169\.254"):
        pin("rtmp://cam.example.com/live/a", BLOCKED,
            resolve=resolver("203.0.113.7", "169.254.169.254"))


@pytest.mark.parametrize("url", [
    "rtmps://cam.example.com/live/a",  # TLS: the certificate is checked against the name
    "https://cdn.example.com/live/a.flv",
    "rtsps://cam.example.com/stream",
    "rtmp://203.0.113.7/live/a",  # already an address
])
def test_tls_and_address_literals_are_left_alone(url):
    def never(host: str, port: int) -> list[str]:
        raise AssertionError("resolved")

    assert pin(url, BLOCKED, resolve=never) == [Pinned(url)]


def test_a_name_that_does_not_resolve_is_an_error():
    def fails(host: str, port: int) -> list[str]:
        raise OSError(f"cannot resolve {host}: Name or service not known")

    with pytest.raises(OSError, match=r"cannot resolve cam\.example\.invalid"):
        pin("rtmp://cam.example.invalid/live/a", BLOCKED, resolve=fails)
