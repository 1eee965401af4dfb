"""Process groups: how the supervisor stops a child together with everything it started.

Each supervised child leads its own process group (it was started in a new session), so a
signal to the group reaches Celery's pool processes and any other grandchild too, and a
group whose leader is gone can still be found and killed.
"""

from __future__ import annotations

import os
import time
from contextlib import suppress
from pathlib import Path


def signal_group(pgid: int, sig: int) -> None:
    """Signal every process of the group; a group already gone is not an error."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists (the leader may be gone)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_group_gone(pgid: int, timeout: float) -> None:
    """Until the last process of the group is gone (SIGKILL is delivered asynchronously)
    or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.1)


def group_carries(pgid: int, marker: str) -> bool:
    """Whether a live process of group ``pgid`` has ``marker`` in its environment or its
    command line (Redis rewrites its environment block with its process title)."""
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for what in ("environ", "cmdline"):
                if needle in Path(f"/proc/{entry}/{what}").read_bytes():
                    return True
        except (OSError, ValueError, IndexError):
            continue
    return False
