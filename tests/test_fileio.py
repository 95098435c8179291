"""Atomic writes: the old file or the whole new one, and no temporary files left behind."""
from __future__ import annotations

import pytest

from embedtalk_sdk.runtime.fileio import atomic_path, atomic_write


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_a_finished_write_replaces_and_keeps_the_writers_suffix(tmp_path):
    target = tmp_path / "sub" / "y.wav"
    atomic_write(target, b"first")
    with atomic_path(target, suffix=".part.wav") as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".y.wav.") and tmp.suffix == ".wav"
        tmp.write_bytes(b"second")
    assert target.read_bytes() == b"second" and [p.name for p in target.parent.iterdir()] == ["y.wav"]
