"""CLI connection settings: flags > --profile > environment > default profile > defaults."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import typer

from livesnap.commands.common import parse_time
from livesnap.commands.profile import ConfigError, ConnectionFlags, resolve_connection

PROFILES = """
[default]
endpoint = "http://default:1"
access_key_id = "default-id"
access_key_secret = "default-secret"

[prod]
endpoint = "https://prod:2"
access_key_id = "prod-id"
access_key_secret = "prod-secret"
signature = "rpc"
timeout = 5
"""


@pytest.fixture
def env(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(PROFILES)
    return {"LIVESNAP_CONFIG": str(path)}


def test_default_profile_when_nothing_else_is_given(env):
    conn = resolve_connection(ConnectionFlags(), env)
    assert (conn.endpoint, conn.access_key_id, conn.scheme, conn.timeout_s) == (
        "http://default:1", "default-id", "acs3", 30.0)


def test_environment_beats_the_default_profile(env):
    conn = resolve_connection(ConnectionFlags(), {**env, "LIVESNAP_ACCESS_KEY_ID": "env-id",
                                                  "LIVESNAP_ACCESS_KEY_SECRET": "env-secret"})
    assert (conn.endpoint, conn.access_key_id, conn.access_key_secret) == (
        "http://default:1", "env-id", "env-secret")


def test_named_profile_beats_the_environment(env):
    conn = resolve_connection(ConnectionFlags(profile="prod"),
                              {**env, "LIVESNAP_ACCESS_KEY_ID": "env-id"})
    assert (conn.access_key_id, conn.scheme, conn.timeout_s) == ("prod-id", "rpc", 5.0)


def test_flags_beat_everything(env):
    flags = ConnectionFlags(profile="prod", endpoint="http://flag:3", signature="acs3")
    conn = resolve_connection(flags, {**env, "LIVESNAP_ENDPOINT": "http://env:4"})
    assert (conn.endpoint, conn.access_key_id, conn.scheme) == ("http://flag:3", "prod-id", "acs3")


def test_livesnap_profile_selects_the_base_profile(env):
    conn = resolve_connection(ConnectionFlags(), {**env, "LIVESNAP_PROFILE": "prod"})
    assert conn.access_key_id == "prod-id"


def test_built_in_defaults_without_a_file(tmp_path):
    env = {"LIVESNAP_CONFIG": str(tmp_path / "absent.toml"), "LIVESNAP_ACCESS_KEY_ID": "i",
           "LIVESNAP_ACCESS_KEY_SECRET": "s"}
    conn = resolve_connection(ConnectionFlags(), env)
    assert (conn.endpoint, conn.scheme) == ("http://127.0.0.1:8080", "acs3")


@pytest.mark.parametrize(("flags", "extra", "message"), [
    (ConnectionFlags(profile="nope"), {}, r"no profile \[nope\]"),
    (ConnectionFlags(signature="md5"), {}, "signature must be one of acs3, rpc"),
    (ConnectionFlags(endpoint="ftp://x"), {}, "invalid endpoint"),
    (ConnectionFlags(), {"LIVESNAP_TIMEOUT": "soon"}, "timeout must be a number"),
])
def test_bad_settings_are_config_errors(env, flags, extra, message):
    with pytest.raises(ConfigError, match=message):
        resolve_connection(flags, {**env, **extra})


def test_missing_key_says_where_to_put_it(tmp_path):
    with pytest.raises(ConfigError, match="LIVESNAP_ACCESS_KEY_ID"):
        resolve_connection(ConnectionFlags(), {"LIVESNAP_CONFIG": str(tmp_path / "none.toml")})


@pytest.mark.parametrize("text", ["[default\nx=1", "[default]\npassword = 'x'", "default = 1"])
def test_bad_files_are_config_errors(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        resolve_connection(ConnectionFlags(), {"LIVESNAP_CONFIG": str(path)})


def test_flags_repr_hides_the_secret():
    assert "hush" not in repr(ConnectionFlags(access_key_secret="hush"))


NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize(("text", "expected"), [
    ("now", "2026-03-04T05:06:07Z"),
    ("15m", "2026-03-04T04:51:07Z"),
    ("2h", "2026-03-04T03:06:07Z"),
    ("1d", "2026-03-03T05:06:07Z"),
    ("2026-03-04T13:00:00+08:00", "2026-03-04T05:00:00Z"),
    ("2026-03-04T05:00:00Z", "2026-03-04T05:00:00Z"),
    ("2026-03-04T05:00:00.123Z", "2026-03-04T05:00:00.123Z"),  # NextStartTime passes through
])
def test_times(text, expected):
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-03-04T05:00:00", "5x"])
def test_bad_times_are_usage_errors(text):
    with pytest.raises(typer.BadParameter):
        parse_time(text, now=NOW)
