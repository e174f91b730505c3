"""``Settings``: groups by concern, built from the flat keywords and ``LIVESNAP_*`` names the
command line and the environment use."""

from __future__ import annotations

import pickle
from collections import Counter

import pytest
import typer

from livesnap.cli import _settings
from livesnap.config import Settings


def test_every_setting_belongs_to_one_group():
    names = Counter(name for group in Settings.groups().values() for name in group.model_fields)
    assert [name for name, count in names.items() if count > 1] == []


def test_flat_keywords_go_to_their_groups_and_the_environment_fills_the_rest(
        tmp_path, monkeypatch):
    monkeypatch.setenv("LIVESNAP_JPEG_QUALITY", "70")
    monkeypatch.setenv("LIVESNAP_SHARDS", "2")
    settings = Settings(data_dir=tmp_path, engine="ray", shards=6, capture=False)
    assert settings.server.data_dir == tmp_path
    assert (settings.capture.engine, settings.capture.jpeg_quality) == ("ray", 70)
    assert settings.capture.capture is False  # the setting, not the group of that name
    assert settings.cluster.shards == 6  # a keyword wins over the environment


def test_a_keyword_no_group_declares_is_refused():
    with pytest.raises(TypeError, match=r"unknown setting\(s\): shard_count"):
        Settings(shard_count=6)


def test_a_pickled_copy_is_the_same_settings(tmp_path, monkeypatch):
    """Capture processes and Ray shards get the serving process's settings pickled."""
    settings = Settings(data_dir=tmp_path, engine="ray", callback_keys="acct:key")
    monkeypatch.setenv("LIVESNAP_STORAGE_FALLBACK", "true")  # read at construction only
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings
    assert not copy.storage.storage_fallback
    assert copy.callbacks.configured_callback_keys() == {"acct": "key"}


@pytest.mark.parametrize(("env", "message"), [
    ({"LIVESNAP_PORT": "not-a-port"}, "livesnap: invalid setting port: Input should be a "
                                      "valid integer"),
    ({"LIVESNAP_SHARDS": "0"}, "livesnap: invalid setting shards: Input should be greater "
                               "than or equal to 1"),
    ({"LIVESNAP_CALLBACK_BACKOFF_MAX_S": "0.5"}, "livesnap: invalid settings: "
                                                 "callback_backoff_max_s must be at least"),
])
def test_a_bad_value_in_any_group_is_one_line_at_the_command_line(
        monkeypatch, capsys, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(typer.Exit):
        _settings()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), lines
