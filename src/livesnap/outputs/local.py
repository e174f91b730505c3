"""Local-disk sink: ``<root>/<Account>/<Endpoint>/<Bucket>/<key>``, written by temp file +
rename; and the move of an older data directory's ``<root>/<Endpoint>/...`` to that layout."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import tempfile
from collections.abc import Set
from pathlib import Path

from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# in the storage root: its directories are accounts (written once the layout is settled)
LAYOUT_MARK = ".layout-accounts"

logger = logging.getLogger(__name__)


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
            # On the event loop: a picture into the page cache takes tens of µs, less than
            # handing it to a worker thread and back (measured per snapshot, same run).
            _write_atomic(path, data)
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


def adopt_legacy_layout(root: Path, accounts: Set[str]) -> list[str]:
    """Move objects written before accounts had directories (``<root>/<Endpoint>/...``) to
    ``<root>/<Account>/<Endpoint>/...`` when there is one account; with several, leave them
    and say so. Runs once per data directory; the names it moved or left."""
    if (root / LAYOUT_MARK).exists():
        return []
    legacy = sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) \
        if root.is_dir() else []
    if legacy and len(accounts) == 1:
        account = safe_segment(next(iter(accounts)))
        staging = root / f".{account}.adopting"  # survives a crash half-way: the next start
        staging.mkdir(exist_ok=True)              # moves the rest and finishes
        for name in legacy:
            (root / name).rename(staging / name)
        staging.rename(root / account)
        logger.info("local storage moved into the account's directory",
                    extra={"action": "storage_layout", "account": account,
                           "moved": legacy, "directory": str(root / account)})
    elif legacy:
        logger.warning(
            "local storage written before accounts had their own directories is left where it "
            "is; its pictures are not served until moved into <storage>/<account>/",
            extra={"action": "storage_layout", "left": legacy, "directory": str(root)})
    root.mkdir(parents=True, exist_ok=True)
    (root / LAYOUT_MARK).write_text("<account>/<endpoint>/<bucket>/<key>\n")
    return legacy
