"""Private files of the broker (passwords, ACL file, redis.conf): 0600, written atomically.

A reader (redis-server loading ``users.acl``, a second process reading ``line.password``)
must never see a half-written file, and a secret must never exist, even for an instant,
with the umask's permissions: files are created 0600 under a temporary name, then renamed
(replace) or hard-linked (create once) into place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def private_dir(path: Path) -> Path:
    """``path`` as a directory only this user can enter (mkdir's mode obeys the umask)."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    return path


def _write_tmp(path: Path, text: str) -> Path:
    private_dir(path.parent)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (0600) in one step."""
    tmp = _write_tmp(path, text)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def create_private_once(path: Path, text: str) -> None:
    """Create ``path`` holding ``text`` (0600) unless it exists; of two racing processes,
    the first one's content wins and both then read the same file."""
    if path.exists():
        return
    tmp = _write_tmp(path, text)
    try:
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
