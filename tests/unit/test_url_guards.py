"""Blocked-network guards found missing by tests/acceptance/test_ssrf.py: the unspecified
address reaches loopback, and FFmpeg must not follow HTTP redirects past the check."""

from __future__ import annotations

import pytest

from livesnap.capture.source import SourceOptions, protocol_options
from livesnap.jobs.urls import blocked_address, parse_networks


def test_unspecified_address_counts_as_loopback():
    loopback = parse_networks(["127.0.0.0/8", "::1/128"])
    assert blocked_address(["0.0.0.0"], loopback) == "0.0.0.0"
    assert blocked_address(["::"], loopback) == "::"
    assert blocked_address(["::ffff:0.0.0.0"], loopback) == "::ffff:0.0.0.0"
    # only when loopback itself is blocked (the default list allows it)
    assert blocked_address(["0.0.0.0", "::"], parse_networks(["169.254.0.0/16"])) is None
    assert blocked_address(["0.0.0.1"], loopback) is None


def test_http_sources_do_not_follow_redirects():
    options = SourceOptions()
    assert protocol_options("http://origin/live/a.flv", options)["max_redirects"] == "0"
    assert protocol_options("HTTPS://origin/live/a.flv", options)["max_redirects"] == "0"
    assert protocol_options("rtmp://origin/live/a", options) == {}


def test_rtsp_reads_over_tcp_with_its_own_io_timeout():
    """RTSP opens its connection itself: rw_timeout never reaches it, its ``timeout`` does."""
    options = SourceOptions(rw_timeout_s=2.5)
    for url in ("rtsp://cam/1", "RTSPS://cam/1"):
        assert protocol_options(url, options) == {"rtsp_transport": "tcp", "timeout": "2500000"}
    udp = SourceOptions(rtsp_transport="udp")
    assert protocol_options("rtsp://cam/1", udp)["rtsp_transport"] == "udp"
    with pytest.raises(ValueError, match="rtsp_transport"):
        SourceOptions(rtsp_transport="http")
