"""Atomic outputs: whole or absent, never half written, and readable like any other file."""

import os
import stat

import pytest

from medtrans.atomic import atomic_dir, atomic_path, write_json


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with atomic_dir(tmp_path / "ckpt") as folder:
            (folder / "w.bin").write_bytes(b"1")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o644
    assert _mode(tmp_path / "ckpt") == 0o755
    assert _mode(tmp_path / "ckpt" / "w.bin") == 0o644
    assert (tmp_path / "a.json").read_text() == '{\n "x": 1\n}\n'


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_a_folder_is_replaced_whole(tmp_path):
    with atomic_dir(tmp_path / "last") as folder:
        (folder / "old.txt").write_text("1")
    with atomic_dir(tmp_path / "last") as folder:
        (folder / "new.txt").write_text("2")
    assert sorted(p.name for p in (tmp_path / "last").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
