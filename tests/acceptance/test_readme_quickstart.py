"""The README's quickstart, pasted as a newcomer would: the Python block runs against a real
``livesnap serve`` and a real RTMP stream, with only the key pair, endpoint and stream URL
changed, and prints what its comments promise."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from tests.support.service import LivesnapServer

pytestmark = [pytest.mark.acceptance, pytest.mark.integration]

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 1, "the README has one Python block: the quickstart"
    return blocks[0]


def test_the_readme_quickstart_prints_started_and_the_new_object_keys(
    tmp_path, publisher_factory
):
    publisher = publisher_factory()
    with LivesnapServer(tmp_path / "data") as server:
        code = quickstart()
        for old, new in (('access_key_id="LS…"', 'access_key_id="testid"'),
                         ('access_key_secret="…"', 'access_key_secret="testsecret"'),
                         ('"127.0.0.1:8080"', f'"{server.endpoint}"'),
                         ('"rtmp://127.0.0.1/live/cam1"', f'"{publisher.url}"')):
            assert old in code, old
            code = code.replace(old, new)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), {})  # the README's own code
        lines = printed.getvalue().splitlines()
        assert lines[0] == "started"
        keys = [line.split()[1] for line in lines[1:]]
        assert len(keys) >= 2, lines
        for key in keys:
            assert re.fullmatch(r"snapshot/[0-9a-f-]{36}/\d{13}\.jpg", key), key
            assert (server.storage_dir() / "oss-cn-shanghai.aliyuncs.com" / "my-bucket"
                    / key).is_file()
