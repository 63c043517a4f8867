"""Atomic writes leave either the complete new file or the old one, and no temp file."""

from __future__ import annotations

import pytest

from napari_ghanet.io.atomic import atomic_path, atomic_write


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    target = atomic_write(tmp_path / "sub" / "report.json", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_successful_write_replaces(tmp_path):
    target = atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(target, "new text")
    assert target.read_text() == "new text"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_outputs_get_the_umask_permissions_not_0600(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        p = atomic_write(tmp_path / "a.txt", "x")
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        os.umask(0o077)
        q = atomic_write(tmp_path / "b.txt", "x")
        assert stat.S_IMODE(q.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_stale_temp_files_of_this_package_are_removed(tmp_path):
    import os
    import time

    from napari_ghanet.io import atomic

    old = time.time() - 2 * 24 * 3600
    stale = tmp_path / ".report.json.ghanet-tmp-abcd1234.tmp"
    fresh = tmp_path / ".report.json.ghanet-tmp-efgh5678.tmp"
    foreign = tmp_path / ".someone-else.tmp"
    for p in (stale, fresh, foreign):
        p.write_text("half")
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    atomic._cleaned.discard(str(tmp_path.resolve()))
    atomic_write(tmp_path / "report.json", "{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".report.json.ghanet-tmp-efgh5678.tmp", ".someone-else.tmp", "report.json"]


def test_check_writable_dir(tmp_path):
    from napari_ghanet.errors import GHANetError
    from napari_ghanet.io.atomic import NotWritableError, check_writable_dir

    assert check_writable_dir(tmp_path / "new" / "sub").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotWritableError, match="is a file"):
        check_writable_dir(tmp_path / "file")
    with pytest.raises(GHANetError, match="cannot create the output folder"):
        check_writable_dir(tmp_path / "file" / "sub")
    assert [p.name for p in tmp_path.iterdir() if "ghanet-tmp" in p.name] == []
