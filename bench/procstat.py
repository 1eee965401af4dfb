"""What the benches that start real services share: a free loopback port, and the CPU a
process has used (read from /proc, so what is measured is the process, not an estimate)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """User + system CPU seconds of a process (/proc/PID/stat), with those of its reaped
    children unless ``children`` is False."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11 : 15 if children else 13])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")
