"""One supervisor per var dir: an exclusive ``flock`` on ``<var>/run/supervisor.lock``.

The lock file holds who has it (pid, start time, config file) so a second ``services run``
or ``demo`` can refuse in one line that names the running one. The kernel drops the lock
when its holder dies, however it dies, so a free lock is proof that the previous supervisor
is gone: only then may its leftover children be reaped (before this lock, a second start
killed the first one's workers). The file is never removed (removing a lock file races with
a process that just opened it); its content is cleared on release.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from provisioner.errors import ConflictError

LOCK_NAME = "supervisor.lock"


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) the lock."""

    pid: int
    started_at: str  # ISO 8601, UTC
    config: str | None

    def describe(self) -> str:
        since = self.started_at.replace("T", " ")[:19]
        return f"pid {self.pid}, since {since} UTC" + (
            f", config {self.config}" if self.config else ""
        )


def _read_holder(path: Path) -> Holder | None:
    try:
        data = json.loads(path.read_text() or "null")
        return Holder(int(data["pid"]), str(data["started_at"]), data.get("config"))
    except (OSError, ValueError, TypeError, KeyError):
        return None


class InstanceLock:
    """The lock of one var dir, held from :meth:`acquire` until :meth:`release` (or the
    holder's death)."""

    def __init__(self, run_dir: Path, config: Path | None) -> None:
        self.path = run_dir / LOCK_NAME
        self.config = str(config.resolve()) if config is not None else None
        self._fd: int | None = None

    def acquire(self, wait_s: float = 1.0) -> Holder:
        """Take the lock or raise ConflictError naming the holder. Retries for ``wait_s``
        so a `services status` peeking at the lock never makes a start fail."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.1)
                    continue
                os.close(fd)
                holder = _read_holder(self.path)
                who = holder.describe() if holder else "a process that is starting"
                raise ConflictError(
                    f"services for {self.path.parent.parent} are already running ({who}): "
                    "stop that one first (Ctrl-C in its terminal, or kill -TERM its pid); "
                    "`provisioner services status` shows it"
                ) from None
        holder = Holder(os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"), self.config)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder.__dict__).encode(), 0)
        self._fd = fd
        return holder

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing the last descriptor drops the flock
        self._fd = None


def running_holder(run_dir: Path) -> Holder | None:
    """The supervisor holding the lock of ``run_dir``, or None when nobody does (peeks with
    a shared lock taken and dropped at once)."""
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or Holder(0, "", None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
