"""The one rotator of ``<var>/log``: the supervisor calls :func:`rotate_dir` every ~30 s.

No writing process rotates: several of them append to one file (a worker's pool
children), and each would rename on its own. Instead:

- ``name.log`` (JSON lines, written by :class:`~provisioner.logs.handlers.AppendHandler`)
  is *renamed* to ``name.log.1`` (``.1`` to ``.2`` ... up to ``backups``; the oldest is
  dropped) once it exceeds ``max_bytes``. A writer notices the new inode before its next
  record and reopens ``name.log``; a record written between the rename and that check
  lands, whole, at the end of ``name.log.1``. Nothing is lost or torn.
- ``name.out`` (a child's raw stdout and stderr: tracebacks before logging is set up,
  Celery's banner, a C library's crash) is held open by the child, which cannot reopen it,
  so it is *copied* to ``name.out.1`` and truncated in place (it is opened ``O_APPEND``:
  the next write goes to the new start). Output written between the copy and the truncate
  is lost; this file is a last resort, not the log.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def _numbered(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


def _shift(path: Path, backups: int) -> None:
    """``path.(backups-1)`` -> ``path.backups`` ... ``path.1`` -> ``path.2``."""
    for i in range(backups - 1, 0, -1):
        src = _numbered(path, i)
        if src.exists():
            os.replace(src, _numbered(path, i + 1))


def _too_big(path: Path, max_bytes: int) -> bool:
    try:
        return path.stat().st_size > max_bytes
    except FileNotFoundError:
        return False


def rotate_file(path: Path, max_bytes: int, backups: int) -> bool:
    """Rename ``path`` away if it is larger than ``max_bytes``; True if it was."""
    if not _too_big(path, max_bytes):
        return False
    _shift(path, backups)
    os.replace(path, _numbered(path, 1))
    return True


def copy_truncate(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy ``path`` to ``path.1`` and empty it, if larger than ``max_bytes``."""
    if not _too_big(path, max_bytes):
        return False
    _shift(path, backups)
    shutil.copyfile(path, _numbered(path, 1))
    with path.open("r+b") as f:
        f.truncate(0)
    return True


def rotate_dir(log_dir: Path, max_bytes: int, backups: int) -> list[Path]:
    """Rotate every ``*.log`` and ``*.out`` of ``log_dir`` that is too large; returns them."""
    done: list[Path] = []
    for path in sorted(log_dir.glob("*.log")):
        if rotate_file(path, max_bytes, backups):
            done.append(path)
    for path in sorted(log_dir.glob("*.out")):
        if copy_truncate(path, max_bytes, backups):
            done.append(path)
    return done
