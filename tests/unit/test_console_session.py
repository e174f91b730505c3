"""Console session signing, CSRF and login helpers, and the pure presentation rules."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import stat

import pytest
from starlette.requests import Request

from livesnap.console import present
from livesnap.console.attempts import LoginAttempts
from livesnap.console.auth import safe_next, same_origin
from livesnap.console.forms import TemplateForm, field_for_message
from livesnap.console.session import (
    REVOKED_FILE,
    Revocations,
    Session,
    anonymous,
    csrf_matches,
    load_or_create_secret,
    logged_in,
    secret_matches,
    sign,
    unsign,
)
from livesnap.jobs.models import Job, JobStatus, StorageTarget, StorageType, StreamStatus

SECRET = b"k" * 32
NOW = 1_700_000_000.0


def session(**changes):
    base = dict(account="acct-a", key_id="testid", csrf="tok-123", issued_s=int(NOW))
    return Session(**{**base, **changes})


# logout and wrong logins ----------------------------------------------------------------------


def test_revocations_outlive_a_restart_and_then_expire(tmp_path):
    path = tmp_path / REVOKED_FILE
    revocations = Revocations(max_age_s=3600, now_s=NOW, path=path)
    revocations.revoke(session(csrf="gone"), NOW)
    assert revocations.revoked(session(csrf="gone", issued_s=int(NOW) + 60), NOW + 60)
    assert not revocations.revoked(session(csrf="kept"), NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Revocations(max_age_s=3600, now_s=NOW + 10, path=path)
    assert again.revoked(session(csrf="gone"), NOW + 10)
    # once no cookie carrying it can be valid, the token is forgotten
    assert not again.revoked(session(csrf="gone"), NOW + 3601)
    later = Revocations(max_age_s=3600, now_s=NOW + 3601, path=path)
    assert len(later) == 0
    later.revoke(session(csrf="new"), NOW + 3601)
    assert json.loads(path.read_text()) == {"new": NOW + 3601 + 3600}


def test_a_broken_revocation_file_is_an_error(tmp_path):
    path = tmp_path / REVOKED_FILE
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="revoked console sessions"):
        Revocations(max_age_s=60, now_s=NOW, path=path)


def test_wrong_logins_drain_over_the_window():
    attempts = LoginAttempts(per_key=3, per_address=5, window_s=60)
    for _ in range(3):
        assert attempts.wait_s("k", "10.0.0.1", NOW) == 0
        attempts.failed("k", "10.0.0.1", NOW)
    assert attempts.wait_s("k", "10.0.0.1", NOW) == pytest.approx(20)  # one drains in 20 s
    assert attempts.wait_s("k", "10.0.0.2", NOW) == pytest.approx(20)  # per key, any address
    assert attempts.wait_s("other", "10.0.0.1", NOW) == 0
    assert attempts.wait_s("k", "10.0.0.1", NOW + 20) == 0
    for key in ("a", "b", "c", "d"):  # the address fills up across keys
        attempts.failed(key, "10.0.0.1", NOW + 20)
    assert attempts.wait_s("e", "10.0.0.1", NOW + 20) > 0
    assert attempts.wait_s("e", "10.0.0.3", NOW + 20) == 0


def test_wrong_logins_are_tracked_within_a_bound():
    attempts = LoginAttempts(per_key=3, per_address=3, window_s=60, max_tracked=100)
    attempts.failed("target", "1.1.1.1", NOW)
    attempts.failed("target", "1.1.1.1", NOW)
    for i in range(200):
        attempts.failed(f"k{i}", f"10.0.{i // 256}.{i % 256}", NOW + 1)
    assert len(attempts._buckets) <= 100
    attempts.failed("target", "1.1.1.1", NOW + 1)
    assert attempts.wait_s("target", "1.1.1.1", NOW + 1) > 0  # the fullest are kept


# signing --------------------------------------------------------------------------------------
def test_signed_session_round_trips():
    value = sign(session(), SECRET)
    assert value.startswith("v1.")
    assert unsign(value, SECRET, now_s=NOW + 5) == session()


def test_cookie_value_is_cookie_safe():
    value = sign(session(account="ä b;c", csrf="x" * 40), SECRET)
    assert all(c.isalnum() or c in "-_." for c in value)


def test_a_changed_payload_or_signature_is_refused():
    value = sign(session(), SECRET)
    version, body, mac = value.split(".")
    forged_body = base64.urlsafe_b64encode(json.dumps(
        {"a": "acct-b", "k": "testid", "c": "tok-123", "i": int(NOW)}).encode()).rstrip(b"=").decode()
    assert unsign(f"{version}.{forged_body}.{mac}", SECRET, now_s=NOW) is None
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert unsign(f"{version}.{body}.{flipped}", SECRET, now_s=NOW) is None
    assert unsign(value, b"another secret of 32 bytes......", now_s=NOW) is None


@pytest.mark.parametrize("value", [
    "", "v1", "v1.", "v1..", "v2.abc.def", "garbage", "v1.%%%.sig", "...",
])
def test_malformed_values_are_refused(value):
    assert unsign(value, SECRET, now_s=NOW) is None


@pytest.mark.parametrize("payload", [
    b"[]", b"null", b"not json", b'{"a": "x"}', b'{"a": 1, "k": "", "c": "t", "i": 1}',
    b'{"a": "", "k": "", "c": "", "i": 1}', b'{"a": "", "k": "", "c": "t", "i": true}',
    b'{"a": "", "k": "", "c": "t", "i": "1"}', b"\xff\xfe",
])
def test_validly_signed_but_malformed_payloads_are_refused(payload):
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    mac = base64.urlsafe_b64encode(
        hmac.new(SECRET, f"v1.{body}".encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    assert unsign(f"v1.{body}.{mac}", SECRET, now_s=NOW) is None


def test_sessions_expire_and_cannot_come_from_the_future():
    value = sign(session(), SECRET)
    assert unsign(value, SECRET, now_s=NOW + 100, max_age_s=100) is not None
    assert unsign(value, SECRET, now_s=NOW + 101, max_age_s=100) is None
    assert unsign(value, SECRET, now_s=NOW - 1) is None


def test_login_makes_a_new_csrf_token():
    before = anonymous(NOW)
    after = logged_in("acct-a", "testid", NOW)
    assert not before.logged_in and after.logged_in
    assert before.csrf != after.csrf and len(after.csrf) >= 32


# CSRF and secrets --------------------------------------------------------------------------------
def test_csrf_token_must_match_exactly():
    s = session()
    assert csrf_matches(s, "tok-123")
    assert not csrf_matches(s, "tok-124")
    assert not csrf_matches(s, "")
    assert not csrf_matches(s, None)
    assert not csrf_matches(None, "tok-123")
    assert not csrf_matches(s, "tök")


def test_secret_comparison():
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("s3cret", "s3cre")
    assert not secret_matches(None, "")
    assert not secret_matches(None, "anything")


def test_session_secret_is_created_once_with_mode_0600(tmp_path):
    data = tmp_path / "data"
    first = load_or_create_secret(data)
    path = data / "console-session.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32
    assert load_or_create_secret(data) == first
    assert load_or_create_secret(tmp_path / "other") != first


def test_a_broken_secret_file_is_an_error(tmp_path):
    (tmp_path / "console-session.key").write_text("not hex")
    with pytest.raises(ValueError, match="hex"):
        load_or_create_secret(tmp_path)
    (tmp_path / "console-session.key").write_text("abcd")
    with pytest.raises(ValueError, match="shorter"):
        load_or_create_secret(tmp_path)


# requests --------------------------------------------------------------------------------------
def request(headers: dict[str, str], scheme: str = "http") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request({"type": "http", "method": "POST", "scheme": scheme, "path": "/console/login",
                    "headers": [(b"host", b"console.example:8080"), *raw],
                    "query_string": b"", "server": ("console.example", 8080)})


def test_same_origin_check():
    assert same_origin(request({}))
    assert same_origin(request({"Origin": "http://console.example:8080"}))
    assert not same_origin(request({"Origin": "http://evil.example"}))
    assert not same_origin(request({"Origin": "null"}))
    assert not same_origin(request({"Origin": "https://console.example:8080"}))


@pytest.mark.parametrize(("target", "expected"), [
    (None, "/console/"),
    ("", "/console/"),
    ("/console/jobs/abc", "/console/jobs/abc"),
    ("/console/jobs/abc?from=2026-01-01T00:00", "/console/jobs/abc?from=2026-01-01T00:00"),
    ("https://evil.example/console/", "/console/"),
    ("//evil.example/console/", "/console/"),
    ("/console//evil.example", "/console/"),
    ("/console/\\evil", "/console/"),
    ("/other", "/console/"),
])
def test_next_path_after_login_stays_in_the_console(target, expected):
    assert safe_next(target) == expected


# presentation ----------------------------------------------------------------------------------
def job(**changes):
    base = dict(
        id="j1", account="acct-a", name="cam", template_id="system", template_name="System",
        interval_s=5, overwrite_format=None, sequence_format="s/{JobId}/{UnixTimestamp}.jpg",
        stream_url="rtmp://h/live/a", stream_type="rtmp",
        storage=StorageTarget(storage_type=StorageType.LOCAL, endpoint="e", bucket="b"),
        callback_url=None, status=JobStatus.STARTED, created_ms=0, modified_ms=0,
    )
    return Job(**{**base, **changes})


@pytest.mark.parametrize(("status", "stream", "kind", "text"), [
    (JobStatus.STARTED, StreamStatus.LIVE, "live", "Live"),
    (JobStatus.STARTED, StreamStatus.RECONNECTING, "reconnecting", "Reconnecting"),
    (JobStatus.STARTED, StreamStatus.CONNECTING, "reconnecting", "Connecting"),
    (JobStatus.STARTED, StreamStatus.OFFLINE, "offline", "Offline"),
    (JobStatus.PAUSED, StreamStatus.OFFLINE, "paused", "Paused"),
    (JobStatus.INIT, StreamStatus.OFFLINE, "offline", "Not started"),
    (JobStatus.INIT, StreamStatus.WAITING, "offline", "Waiting for stream"),
    (JobStatus.PAUSED, StreamStatus.WAITING, "offline", "Waiting for stream"),
])
def test_badges_say_what_they_mean(status, stream, kind, text):
    badge = present.badge_for(job(status=status, stream_status=stream))
    assert (badge.kind, badge.text) == (kind, text)


def test_a_live_job_whose_pictures_are_not_stored_is_not_plainly_live():
    trouble = job(stream_status=StreamStatus.LIVE,
                  last_error="storage: snapshot not stored yet: the store has not answered")
    assert present.badge_for(trouble) == present.Badge(kind="trouble", text="Not storing")
    other = job(stream_status=StreamStatus.LIVE, last_error="quality: no usable keyframe")
    assert present.badge_for(other).text == "Live"


def test_pictures_go_stale_after_two_intervals():
    j = job(interval_s=5)
    assert present.stale_after_ms(j) == 20_000
    assert present.stale_after_ms(job(interval_s=5, effective_interval_ms=8000)) == 26_000
    assert present.picture_of(j, None, 0) is None
    paused = job(status=JobStatus.PAUSED)
    assert present.stale_after_ms(paused) is None  # not capturing: an old picture is expected


@pytest.mark.parametrize(("ms", "text"), [
    (-5, "0 s ago"), (12_400, "12 s ago"), (59_999, "59 s ago"), (60_000, "1 min ago"),
    (7_200_000, "2 h ago"), (3 * 86_400_000, "3 d ago"),
])
def test_age_text(ms, text):
    assert present.age_text(ms) == text


def test_datetime_local_values_are_utc():
    assert present.parse_local_input("1970-01-01T00:01") == 60_000
    assert present.parse_local_input("1970-01-01T00:00:01.250") == 1250
    assert present.parse_local_input("2026-13-01T00:00") is None
    assert present.parse_local_input("") is None
    assert present.local_input_value(1250) == "1970-01-01T00:00:01"
    assert present.local_input_value_ms(1250) == "1970-01-01T00:00:01.250"
    assert present.utc_text(0) == "1970-01-01 00:00:00 UTC"


@pytest.mark.parametrize(("message", "name"), [
    ("TimeInterval must be between 5 and 3600 seconds.", "interval"),
    ("TemplateName is mandatory for this action.", "name"),
    ("OverwriteFormat must end with '.jpg'.", "overwrite_format"),
    ("SequenceFormat does not allow the placeholder(s) {X}.", "sequence_format"),
    ("At least one of OverwriteFormat and SequenceFormat is required.", "formats"),
    ("Something else.", ""),
])
def test_validation_messages_go_next_to_their_field(message, name):
    assert field_for_message(message) == name


def test_the_editor_marks_every_wrong_field_at_once():
    form = TemplateForm.from_form({"name": "", "interval": "2", "overwrite_format": "x.png",
                                   "sequence_format": "s/{JobId}.jpg"})
    assert form.validate() is None
    assert set(form.errors) == {"name", "interval", "overwrite_format", "sequence_format"}
    assert "must end with '.jpg'" in form.errors["overwrite_format"]
    typo = TemplateForm.from_form({"name": "n", "interval": "five"})
    assert typo.validate() is None and "whole number" in typo.errors["interval"]
    good = TemplateForm.from_form({"name": " n ", "interval": "10", "overwrite_format": "",
                                   "sequence_format": "s/{JobId}/{Sequence}.jpg"})
    spec = good.validate()
    assert spec is not None and spec.name == "n" and spec.overwrite_format is None


# layering (design.md §2: console/ may import only jobs and config) --------------------------------
