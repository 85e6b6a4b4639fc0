"""Writes a crash never leaves half done: single files and published folders."""

from __future__ import annotations

import pytest

from megallm.files import atomic_write_text, partial_path, publish, start_partial, writing_folder


def test_a_folder_appears_only_when_complete(tmp_path):
    final = tmp_path / "deep" / "out"
    with writing_folder(final) as partial:
        assert partial == partial_path(final) and partial.is_dir() and not final.exists()
        (partial / "sub").mkdir()
        (partial / "sub" / "a.bin").write_bytes(b"x" * 100)
        (partial / "b.json").write_text("{}")
    assert sorted(p.name for p in final.rglob("*")) == ["a.bin", "b.json", "sub"]
    assert not partial_path(final).exists()


def test_a_failed_write_leaves_nothing_under_either_name(tmp_path):
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk full"):
        with writing_folder(final) as partial:
            (partial / "half.bin").write_bytes(b"x")
            raise RuntimeError("disk full")
    assert not final.exists() and not partial_path(final).exists()


def test_a_partial_left_by_a_crash_is_replaced(tmp_path):
    final = tmp_path / "step_00000010"
    stale = partial_path(final)
    stale.mkdir()
    (stale / "from_the_crash").write_text("old")
    partial = start_partial(final)
    assert list(partial.iterdir()) == []
    (partial / "new").write_text("new")
    publish(partial, final)
    assert [p.name for p in final.iterdir()] == ["new"]
    with pytest.raises(OSError):  # a published folder is never written over
        publish(start_partial(final), final)


def test_atomic_file_write_leaves_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "manifest.json", "{}")
    atomic_write_text(tmp_path / "manifest.json", '{"a": 1}')
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert (tmp_path / "manifest.json").read_text() == '{"a": 1}'
