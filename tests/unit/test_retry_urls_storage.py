import pytest
from hypothesis import given
from hypothesis import strategies as st

from livesnap.errors import InvalidParameter
from livesnap.jobs.models import StorageTarget, StorageType
from livesnap.jobs.retry import Backoff
from livesnap.jobs.storage import check_target
from livesnap.jobs.urls import (
    DEFAULT_BLOCKED_NETWORKS,
    blocked_address,
    check_callback_url,
    check_stream_url,
    parse_networks,
    redacted,
)


def test_backoff_grows_and_caps():
    b = Backoff(base_s=1, cap_s=30, jitter=0)
    assert [b.delay(n, 0.0) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]


@given(st.integers(min_value=0, max_value=1000), st.floats(min_value=0, max_value=0.999))
def test_backoff_jitter_stays_within_bounds(attempt, rand):
    b = Backoff(base_s=0.5, cap_s=20, jitter=0.5)
    delay = b.delay(attempt, rand)
    ceiling = min(20, 0.5 * 2**min(attempt, 64))
    assert ceiling * 0.5 <= delay <= ceiling


def test_backoff_rejects_bad_settings():
    with pytest.raises(ValueError, match="base_s"):
        Backoff(base_s=0)
    with pytest.raises(ValueError, match="jitter"):
        Backoff(jitter=2)


@pytest.mark.parametrize(
    "url", ["rtmp://h/app/s", "rtmps://h:443/a/b", "rtsp://cam/1", "https://h/x.m3u8"]
)
def test_stream_urls_allowed(url):
    assert check_stream_url(url) == url.split("://")[1].split("/")[0].split(":")[0]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "schemes"),
        # accepted before, and a job that can never capture: PyAV's FFmpeg has no SRT
        ("srt://h:9000", "SRT cannot be captured.*Relay the stream to RTMP or RTSP"),
        ("rtmp:///nohost", "host"),
        ("rtmp://h/a b", "spaces"),
        ("rtmp://h:99999/x", "valid URL"),
        ("rtmp://h/" + "x" * 300, "255"),
        # what the resolver's IDNA codec refused with a UnicodeError (a 500 before)
        ("rtmp://a..b/live/a", "invalid host name"),
        ("rtmp://" + "a" * 64 + ".example/x", "invalid host name"),
        ("rtmp://.example/x", "invalid host name"),
        # checked as evil.example, resolved by FFmpeg as the raw UTF-8 name
        ("http://\uff45\uff56\uff49\uff4c.example/x", r"ASCII \(for this host: evil.example\)"),
        ("rtmp://b\u00fccher.example/x", "xn--bcher-kva.example"),
    ],
)
def test_stream_urls_rejected(url, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        check_stream_url(url)


def test_callback_only_http():
    check_callback_url("https://hooks.example.com/x?a=1")
    with pytest.raises(InvalidParameter, match="schemes"):
        check_callback_url("rtmp://h/x")
    with pytest.raises(InvalidParameter, match="CallbackUrl has an invalid host name"):
        check_callback_url("http://a..b/cb")


@pytest.mark.parametrize("url", ["rtmp://cam.example./live/a", "rtmp://[fe80::1]/x",
                                 "RTMP://H/app/s", "rtmp://" + "a" * 63 + ".example/x"])
def test_host_names_at_the_limits_are_allowed(url):
    assert check_stream_url(url)


def test_blocked_networks_default_and_mapped_ipv6():
    nets = parse_networks(DEFAULT_BLOCKED_NETWORKS)
    assert blocked_address(["169.254.169.254"], nets) == "169.254.169.254"
    assert blocked_address(["::ffff:169.254.169.254"], nets) == "::ffff:169.254.169.254"
    assert blocked_address(["fe80::1%eth0"], nets) == "fe80::1%eth0"
    assert blocked_address(["10.0.0.1", "127.0.0.1"], nets) is None
    private = parse_networks(["10.0.0.0/8"])
    assert blocked_address(["8.8.8.8", "10.1.2.3"], private) == "10.1.2.3"


def test_parse_networks_names_bad_entry():
    with pytest.raises(ValueError, match="not-a-net"):
        parse_networks(["10.0.0.0/8", "not-a-net"])


def target(kind, endpoint, bucket):
    return StorageTarget(storage_type=StorageType(kind), endpoint=endpoint, bucket=bucket)


@pytest.mark.parametrize(
    ("kind", "endpoint", "bucket"),
    [
        ("oss", "oss-cn-shanghai.aliyuncs.com", "my-bucket-1"),
        ("s3", "http://127.0.0.1:8333", "snapshots"),
        ("s3", "s3.eu-west-1.amazonaws.com", "my.bucket"),
        ("local", "disk", "b1"),
    ],
)
def test_targets_valid(kind, endpoint, bucket):
    check_target(target(kind, endpoint, bucket))


@pytest.mark.parametrize(
    ("kind", "endpoint", "bucket", "fragment"),
    [
        ("oss", "http://oss-cn-shanghai.aliyuncs.com", "b1x", "OSS host name"),
        ("oss", "oss-cn-shanghai.aliyuncs.com", "B", "Bucket"),
        ("oss", "oss-cn-shanghai.aliyuncs.com", "-bad-", "Bucket"),
        ("s3", "ftp://h", "bucket", "Endpoint"),
        ("s3", "h", "a..b", "Bucket"),
        ("local", "../up", "b", "Endpoint"),
    ],
)
def test_targets_invalid(kind, endpoint, bucket, fragment):
    with pytest.raises(InvalidParameter, match=fragment):
        check_target(target(kind, endpoint, bucket))


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://viewer:s3cret@10.0.0.20:554/stream1", "rtsp://viewer:***@10.0.0.20:554/stream1"),
    ("rtsp://viewer@cam/1", "rtsp://viewer@cam/1"),
    ("https://cdn.example/live/a.m3u8?token=abc&expires=99",
     "https://cdn.example/live/a.m3u8?token=***&expires=***"),
    ("rtmp://origin/live/cam1", "rtmp://origin/live/cam1"),
    ("rtsp://a:b:c@[::1]:8554/x?flag", "rtsp://a:***@[::1]:8554/x?flag"),
])
def test_urls_are_shown_without_their_secrets(url, shown):
    assert redacted(url) == shown
