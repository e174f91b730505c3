"""Local-disk sink: ``<root>/<Endpoint>/<Bucket>/<key>``, written by temp file + rename."""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from pathlib import Path

from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_segment(text: str) -> str:
    """A directory name for an endpoint or bucket (``http://h:1`` → ``http_h_1``)."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return cleaned[:128]


class LocalSink:
    """Objects as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def path_for(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise OutputError(f"object key escapes the storage directory: {key!r}")
        return path

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(_write_atomic, path, data)
        except OSError as exc:
            raise OutputError(f"cannot write {key}: {exc.strerror or exc}") from exc

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot delete {key}: {exc.strerror or exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
