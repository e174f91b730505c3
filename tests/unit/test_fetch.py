"""capture.fetch: the HLS fetcher checks where each URL leads before it connects, connects to
the address it checked, follows no redirect, and verifies HTTPS certificates by name."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.tls import write_certificates

from livesnap.capture.fetch import BlockedAddressError, CheckedFetcher, is_hls_url
from livesnap.capture.source import SourceOptions, protocol_options
from livesnap.jobs.urls import parse_networks


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_error(404)
            return
        body = b"#EXTM3U\n" * 5000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def fetcher(*blocked: str, **kw) -> CheckedFetcher:
    return CheckedFetcher(blocked=parse_networks(blocked), timeout_s=5, **kw)


def test_a_body_is_read_whole_through_the_file_object(server):
    port = server.server_address[1]
    body = fetcher()(f"http://localhost:{port}/live/a.m3u8?t=1", 1, {})
    data = b""
    while chunk := body.read(32768):
        data += chunk
    body.close()
    assert data == b"#EXTM3U\n" * 5000
    assert server.seen == [("/live/a.m3u8?t=1", f"localhost:{port}")]  # the name, not the IP


def test_a_blocked_address_is_refused_before_any_request(server):
    port = server.server_address[1]
    with pytest.raises(BlockedAddressError, match="blocked network"):
        fetcher("127.0.0.0/8")(f"http://localhost:{port}/seg.ts", 1, {})
    assert server.seen == []


def test_after_one_refusal_every_request_is_refused(server):
    port = server.server_address[1]
    fetch = fetcher("127.0.0.2/32")
    fetch(f"http://127.0.0.1:{port}/a.m3u8", 1, {}).close()
    with pytest.raises(BlockedAddressError):
        fetch(f"http://127.0.0.2:{port}/seg.ts", 1, {})
    with pytest.raises(BlockedAddressError, match=r"127\.0\.0\.2"):  # the playlist's reload too
        fetch(f"http://127.0.0.1:{port}/a.m3u8", 1, {})
    assert "127.0.0.2" in fetch.refused and len(server.seen) == 1


def test_redirects_and_errors_fail_the_fetch(server):
    port = server.server_address[1]
    with pytest.raises(OSError, match="redirect \\(not followed\\) 302"):
        fetcher()(f"http://127.0.0.1:{port}/moved", 1, {})
    with pytest.raises(OSError, match="HTTP error 404"):
        fetcher()(f"http://127.0.0.1:{port}/missing", 1, {})
    with pytest.raises(BlockedAddressError, match="only fetch http"):
        fetcher()("crypto+http://127.0.0.1/key", 1, {})
    with pytest.raises(BlockedAddressError, match="only fetch http"):
        fetcher()("file:///etc/passwd", 1, {})


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[http.server.ThreadingHTTPServer, Path]]:
    ca, cert, key = write_certificates(tmp_path, ["localhost"])
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.seen = []  # type: ignore[attr-defined]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, ca
    httpd.shutdown()
    httpd.server_close()


def test_https_is_verified_by_the_name_in_the_url(tls_server):
    httpd, ca = tls_server
    port = httpd.server_address[1]
    body = fetcher(ca_file=str(ca))(f"https://localhost:{port}/a.m3u8", 1, {})
    assert body.read(8) == b"#EXTM3U\n"
    body.close()
    with pytest.raises(ssl.SSLCertVerificationError):  # not for this name
        fetcher(ca_file=str(ca))(f"https://127.0.0.1:{port}/a.m3u8", 1, {})
    with pytest.raises(ssl.SSLCertVerificationError):  # not a trusted authority
        fetcher()(f"https://localhost:{port}/a.m3u8", 1, {})
    body = fetcher(tls_verify=False)(f"https://127.0.0.1:{port}/a.m3u8", 1, {})
    assert body.read(8) == b"#EXTM3U\n"
    body.close()


def test_which_urls_are_hls_and_what_ffmpeg_is_told():
    assert is_hls_url("https://cdn.example/live/cam/index.M3U8?token=1")
    assert not is_hls_url("http://origin/live/cam.flv")
    assert not is_hls_url("rtmp://origin/live/cam.m3u8")
    options = SourceOptions()
    assert protocol_options("http://origin/live/cam.m3u8", options) == {
        "format_whitelist": "hls,mpegts,mov,mp4", "http_persistent": "0"}
    flv = protocol_options("https://origin/live/cam.flv", options)
    assert flv["max_redirects"] == "0" and flv["tls_verify"] == "1" and flv["ca_file"]
    allowed = flv["format_whitelist"].split(",")
    assert "hls" not in allowed and "dash" not in allowed and "concat" not in allowed
    assert {"flv", "mpegts", "mpjpeg"} <= set(allowed)
    rtmps = protocol_options("rtmps://origin/live/cam", SourceOptions(tls_verify=False))
    assert rtmps == {"tls_verify": "0"}
    assert protocol_options("rtmp://origin/live/cam", options) == {}
