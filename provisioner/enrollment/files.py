"""Writing identity files: atomically (a reader never sees half a key or certificate) and
with their mode from the first byte (a secret is never briefly world-readable)."""

from __future__ import annotations

import os
from pathlib import Path

SECRET = 0o600
# Certificates and chains are public material, but files under the var dir are readable by
# this OS user only (issue 20), so they are written 0600 too; the name says what they hold.
PUBLIC = 0o600


def ensure_dir(path: Path) -> Path:
    """Create an identity directory 0700 (an existing one keeps its mode)."""
    if not path.is_dir():
        path.mkdir(parents=True, mode=0o700)
        path.chmod(0o700)
    return path


def write_file(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` with ``mode``: a temporary file created with that mode, then
    renamed over the target."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover would keep its own (maybe wider) mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # whatever the umask, exactly ``mode``
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
