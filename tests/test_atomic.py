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
