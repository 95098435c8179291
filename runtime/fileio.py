"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

The temporary is fsync'ed before the rename and the folder after it, so a power loss too leaves
the old file or the new one. Temporaries are hidden siblings named `.NAME.PID.*` (PID: the writing process), so a write that
was killed (SIGKILL, power loss) leaves one behind, and the next write of NAME in that folder
removes those whose process is gone. Files and folders get the permissions the umask gives
(as `open` and `mkdir` would), not mkstemp's private 0600 / 0700.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_prefix(path: Path) -> str:
    """Name prefix of this process's temporaries for `path`."""
    return f".{path.name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove `.NAME.PID.*` temporaries of `path` left by processes that no longer run; return them."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.glob(f".{path.name}.*"):
        pid = entry.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _fsync(path: str | Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot sync a folder
        pass
    finally:
        os.close(fd)


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (0o666) or folder (0o777) gets under this process's umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".part") -> Iterator[Path]:
    """A temporary path beside `path` (hidden, ending in `suffix`: give the extension a writer needs
    to pick its format). On a clean exit it replaces `path` with os.replace; on an error it is
    removed and `path` is untouched. The folder must exist."""
    path = Path(path)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, umask_mode())
        _fsync(tmp)  # the data on disk before the name points at it: a power loss leaves old or new
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically, creating its folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
