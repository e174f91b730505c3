"""Local-disk sink: ``<root>/<Account>/<Endpoint>/<Bucket>/<key>``, written by temp file +
rename; and the move of an older data directory's ``<root>/<Endpoint>/...`` to that layout."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
from collections.abc import Set
from pathlib import Path

from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# in the storage root: its directories are accounts (written once the layout is settled)
LAYOUT_MARK = ".layout-accounts"
_DIRS_REMEMBERED = 4096  # checked directories a sink keeps (a job's keys share a few)
_part_names = itertools.count()  # temporary names, unique in this process
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC

logger = logging.getLogger(__name__)


def safe_segment(text: str) -> str:
    """A directory name for an endpoint or bucket (``http://h:1`` → ``http_h_1``)."""
    cleaned = _UNSAFE.sub("_", text).strip("._") or "_"
    return cleaned[:128]


class LocalSink:
    """Objects as files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._dirs: dict[str, Path] = {}  # a key's directory part -> its checked directory

    def path_for(self, key: str) -> Path:
        """The file of ``key``; ``OutputError`` if it would lie outside the root. A key's
        directory is resolved (symbolic links and all) the first time it is seen."""
        parent, _, name = key.rpartition("/")
        directory = self._dirs.get(parent)
        if directory is None:
            directory = (self.root / parent).resolve()
            if not directory.is_relative_to(self.root):
                raise OutputError(f"object key escapes the storage directory: {key!r}")
            if len(self._dirs) >= _DIRS_REMEMBERED:
                self._dirs.clear()
            self._dirs[parent] = directory
        if name in ("", ".", ".."):
            raise OutputError(f"object key escapes the storage directory: {key!r}")
        return directory / name

    async def put(self, key: str, data: bytes, *, meta: ObjectMeta) -> None:
        path = self.path_for(key)
        try:
            # On the event loop: a picture into the page cache takes tens of µs, less than
            # handing it to a worker thread and back (measured per snapshot, same run).
            _write_atomic(path, data)
        except OSError as exc:
            raise OutputError(f"cannot write {key}: {exc.strerror or exc}") from exc

    async def put_same(self, key: str, data: bytes, *, meta: ObjectMeta, same_as: str) -> None:
        """A second name for ``same_as``'s file (a hard link renamed into place): the overwrite
        object next to its sequence object costs no second copy of the picture (a 96 KB
        sequence and overwrite object: 128 µs of CPU instead of 213, measured alone; most of
        a write is the kernel's page work). Where links cannot be made (another file system,
        the source gone), the bytes are written."""
        path = self.path_for(key)
        source = self.path_for(same_as)
        tmp = f"{path.parent}/.tmp-{os.getpid()}-{next(_part_names)}.part"
        try:
            os.link(source, tmp, follow_symlinks=False)
        except OSError:
            await self.put(key, data, meta=meta)
            return
        try:
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise OutputError(f"cannot write {key}: {exc.strerror or exc}") from exc

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        try:
            await asyncio.to_thread(path.unlink, missing_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot delete {key}: {exc.strerror or exc}") from exc


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole or not at all: a temporary file beside it, renamed over
    it. Plain system calls: through ``tempfile`` and a file object a 96 KB picture cost twice
    as much CPU (110 against 55 µs, measured)."""
    write_whole(str(path), f"{path.parent}/.tmp-{os.getpid()}-{next(_part_names)}.part",
                (data,))


def write_whole(path: str, partial: str, chunks: tuple[bytes, ...]) -> None:
    """``chunks`` one after the other into ``partial`` (0600; its directory made only when
    the open says it is missing), then renamed over ``path``; nothing left on failure. One
    ``writev`` for the lot (the spool writes its description line and the picture so)."""
    try:
        fd = os.open(partial, _PART_FLAGS, 0o600)
    except FileNotFoundError:  # the first file in its directory (or it was removed)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(partial, _PART_FLAGS, 0o600)
    try:
        try:
            total = sum(len(chunk) for chunk in chunks)
            written = os.writev(fd, chunks)
            if written < total:  # a short write: the rest, one write at a time
                rest = memoryview(b"".join(chunks))[written:]
                while rest:
                    rest = rest[os.write(fd, rest):]
        finally:
            os.close(fd)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
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
