"""``livesnap serve`` and ``livesnap migrate`` as a newcomer runs them: settings from
``LIVESNAP_*`` (flags win), the default data directory, a generated access key pair printed
once and kept, and migrations applied on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from alibabacloud_ice20201109 import models as m
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.servers import free_port
from tests.support.service import ice_client

pytestmark = pytest.mark.acceptance

KEY_PAIR = re.compile(r"AccessKeyId:\s+(\S+)\s+AccessKeySecret:\s+(\S+)")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ``LIVESNAP_*`` setting or proxy, plus ``extra``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("LIVESNAP_") and not k.lower().endswith("_proxy")}
    return {**base, "LIVESNAP_CAPTURE": "false", **extra}


@contextmanager
def serving(cwd: Path, env: dict[str, str], *args: str, port: int) -> Iterator[Path]:
    """``livesnap serve`` started in ``cwd``, healthy on ``port``; yields its log file."""
    log_path = cwd / f"serve-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "livesnap", "serve", *args], cwd=cwd,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"livesnap exited early:\n{log_path.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"not healthy:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield log_path
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
    assert proc.returncode == 0, log_path.read_text()


def system_template(port: int, key: str, secret: str) -> str:
    client = ice_client(f"127.0.0.1:{port}", key=key, secret=secret)
    body = client.get_live_snapshot_template(
        m.GetLiveSnapshotTemplateRequest(template_id="system")).body
    return body.template_id


def test_first_start_generates_a_key_pair_once_in_the_default_data_dir(tmp_path):
    port = free_port()
    with serving(tmp_path, clean_env(LIVESNAP_PORT=str(port)), port=port) as log:
        printed = KEY_PAIR.findall(log.read_text())
        assert len(printed) == 1, log.read_text()
        key, secret = printed[0]
        assert system_template(port, key, secret) == "system"  # the official SDK accepts it
    data = tmp_path / "livesnap-data"  # the default data directory, relative to the cwd
    assert (data / "access-keys.json").is_file()
    assert secret in (data / "access-keys.json").read_text()
    assert (data / "livesnap.db").is_file()  # SQLite in the data directory by default

    # the second start (data dir named by the environment now) reuses the pair, silently
    again = free_port()
    env = clean_env(LIVESNAP_PORT=str(again), LIVESNAP_HOST="127.0.0.1",
                    LIVESNAP_DATA_DIR=str(data))
    with serving(tmp_path, env, port=again) as log:
        assert KEY_PAIR.findall(log.read_text()) == []
        assert secret not in log.read_text()
        assert system_template(again, key, secret) == "system"


def test_configured_keys_are_used_and_flags_beat_the_environment(tmp_path):
    port, ignored = free_port(), free_port()
    env = clean_env(LIVESNAP_PORT=str(ignored), LIVESNAP_DATA_DIR=str(tmp_path / "env-data"),
                    LIVESNAP_ACCESS_KEYS="mykey:mysecret:acct-1")
    flags = ("--port", str(port), "--data-dir", str(tmp_path / "flag-data"))
    with serving(tmp_path, env, *flags, port=port) as log:
        assert KEY_PAIR.findall(log.read_text()) == []
        assert "mysecret" not in log.read_text()
        assert system_template(port, "mykey", "mysecret") == "system"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{ignored}/healthz", timeout=1)
    assert (tmp_path / "flag-data" / "livesnap.db").is_file()
    assert not (tmp_path / "env-data").exists()
    assert not (tmp_path / "flag-data" / "access-keys.json").exists()


def run_migrate(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "livesnap", "migrate", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_migrate_creates_the_schema_on_sqlite_and_is_idempotent(tmp_path):
    data = tmp_path / "data"
    for _ in range(2):
        done = run_migrate(tmp_path, clean_env(), "--data-dir", str(data))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "livesnap: database is up to date"
    with sqlite3.connect(data / "livesnap.db") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        versions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"jobs", "templates", "alembic_version"} <= tables, tables
    assert len(versions) == 1


async def postgres_tables(url: str) -> tuple[set[str], list[str]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            tables = set((await conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))).scalars())
            versions = list((await conn.execute(text(
                "SELECT version_num FROM alembic_version"))).scalars())
    finally:
        await engine.dispose()
    return tables, versions


@pytest.mark.integration
async def test_migrate_on_postgresql_from_the_environment(tmp_path, postgres_url):
    env = clean_env(LIVESNAP_DATABASE_URL=postgres_url)
    done = await asyncio.to_thread(run_migrate, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "livesnap: database is up to date"
    tables, versions = await postgres_tables(postgres_url)
    assert {"jobs", "templates", "files", "outbox_events", "alembic_version"} <= tables, tables
    assert len(versions) == 1
    assert not (tmp_path / "livesnap-data" / "livesnap.db").exists()  # nothing on SQLite


def test_a_bad_setting_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "livesnap", "serve"], cwd=tmp_path,
                          env=clean_env(LIVESNAP_PORT="not-a-port"), capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("livesnap: invalid setting port"), done.stderr
