"""The local-disk sink: whole objects only, never outside its directory."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from livesnap.errors import OutputError
from livesnap.outputs.base import ObjectMeta
from livesnap.outputs.local import LocalSink

META = ObjectMeta(content_type="image/jpeg")


def names_under(root: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in root.rglob(pattern))


async def test_put_writes_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.put("snapshot/job/1.jpg", b"first", meta=META)
    await sink.put("snapshot/job.jpg", b"a" * 200_000, meta=META)
    await sink.put("snapshot/job.jpg", b"latest", meta=META)  # the overwrite object
    assert (tmp_path / "snapshot/job/1.jpg").read_bytes() == b"first"
    assert (tmp_path / "snapshot/job.jpg").read_bytes() == b"latest"
    assert names_under(tmp_path) == ["1.jpg", "job", "job.jpg", "snapshot"]  # no .part left behind
    assert stat.S_IMODE((tmp_path / "snapshot/job.jpg").stat().st_mode) == 0o600


async def test_a_directory_removed_after_its_first_object_is_made_again(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.put("a/b/1.jpg", b"1", meta=META)
    shutil.rmtree(tmp_path / "a")
    await sink.put("a/b/2.jpg", b"2", meta=META)
    assert (tmp_path / "a/b/2.jpg").read_bytes() == b"2"


@pytest.mark.parametrize("key", ["../x.jpg", "a/../../x.jpg", "/etc/x.jpg", "a/..", "a/.",
                                 "", "a/", ".."])
async def test_keys_outside_the_directory_are_refused(tmp_path: Path, key: str) -> None:
    root = tmp_path / "root"
    sink = LocalSink(root)
    with pytest.raises(OutputError, match="escapes the storage directory"):
        await sink.put(key, b"x", meta=META)
    assert names_under(tmp_path, "x.jpg") == []


async def test_a_directory_linked_outside_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    sink = LocalSink(root)
    with pytest.raises(OutputError, match="escapes"):
        await sink.put("link/x.jpg", b"x", meta=META)
    assert list(outside.iterdir()) == []


async def test_a_second_object_of_the_same_picture_shares_its_file(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.put("snap/job/1.jpg", b"picture 1", meta=META)
    await sink.put_same("snap/job.jpg", b"picture 1", meta=META, same_as="snap/job/1.jpg")
    await sink.put("snap/job/2.jpg", b"picture 2", meta=META)
    await sink.put_same("snap/job.jpg", b"picture 2", meta=META, same_as="snap/job/2.jpg")
    latest, second = tmp_path / "snap/job.jpg", tmp_path / "snap/job/2.jpg"
    assert latest.read_bytes() == b"picture 2" and latest.stat().st_ino == second.stat().st_ino
    assert (tmp_path / "snap/job/1.jpg").read_bytes() == b"picture 1"  # untouched
    await sink.delete("snap/job/2.jpg")  # a sequence object deleted: the latest stays
    assert latest.read_bytes() == b"picture 2"
    assert names_under(tmp_path / "snap") == ["1.jpg", "job", "job.jpg"]


async def test_sharing_falls_back_to_writing_when_no_link_can_be_made(tmp_path: Path) -> None:
    sink = LocalSink(tmp_path)
    await sink.put_same("snap/job.jpg", b"bytes", meta=META, same_as="snap/job/gone.jpg")
    assert (tmp_path / "snap/job.jpg").read_bytes() == b"bytes"
    with pytest.raises(OutputError, match="escapes"):
        await sink.put_same("snap/job.jpg", b"x", meta=META, same_as="../outside.jpg")
    assert names_under(tmp_path, "*.part") == []
