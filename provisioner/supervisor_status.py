"""``<var>/run/services.json``: what the supervisor runs, as ``services status`` shows it.

The supervisor rewrites the file on every change (a start, an exit, a restart) and every
few seconds; it is written whole to a temporary file then renamed, so a reader never sees
half of it, and it is mode 0600 like everything under ``run/``. It is only trusted while
the supervisor's lock is held (:func:`provisioner.supervisor_lock.running_holder`): a file
left by a supervisor that was killed describes processes that no longer exist.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATUS_NAME = "services.json"


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int
    state: str  # running | restarting | failed | stopped
    started_at: float  # time.time() of the current process's start
    restarts: int
    last_exit: int | None  # exit code (negative: killed by that signal) of the last crash

    def uptime_s(self, now: float) -> float:
        return max(0.0, now - self.started_at) if self.state == "running" else 0.0


def write_status(run_dir: Path, supervisor: dict[str, Any], comps: list[ComponentStatus]) -> None:
    path = run_dir / STATUS_NAME
    tmp = run_dir / f".{STATUS_NAME}.{os.getpid()}"
    data = {"supervisor": supervisor, "components": [asdict(c) for c in comps]}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_status(run_dir: Path) -> tuple[dict[str, Any], list[ComponentStatus]] | None:
    try:
        data = json.loads((run_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data.get("supervisor", {}), [ComponentStatus(**c) for c in data.get("components", [])]


def remove_status(run_dir: Path) -> None:
    (run_dir / STATUS_NAME).unlink(missing_ok=True)
