"""The directory where every process of a line writes its metrics (prometheus_client's
multiprocess mode).

Celery's prefork pool children and the API are separate processes; each writes its samples
to files in one directory and the process serving ``/metrics`` sums them at scrape time.
The variable must be in a process's environment *before* prometheus_client is imported, so
the supervisor puts it in its children's environment (never set from Python afterwards), and
wipes the directory before the first child starts: files of dead processes would otherwise
be added to the new ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from provisioner.settings import Settings

ENV = "PROMETHEUS_MULTIPROC_DIR"


def directory(settings: Settings) -> Path:
    return settings.var / "run" / "metrics"


def prepare(settings: Settings) -> Path:
    """Empty (or create) the directory, private to the service user."""
    path = directory(settings)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, mode=0o700)
    return path


def child_env(settings: Settings) -> dict[str, str]:
    """What a child of the supervisor needs in its environment to write its metrics. The
    directory is made if missing (prometheus_client fails on a missing one); emptying it is
    :func:`prepare`'s, at the supervisor's start."""
    if not settings.metrics.enabled:
        return {}
    path = directory(settings)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return {ENV: str(path)}


def process_exited(pid: int) -> None:
    """A pool child ended: its live gauges no longer count (Celery's
    ``worker_process_shutdown``). Its counters stay: what it counted happened. Nothing to do
    in a process without the directory."""
    path = os.environ.get(ENV)
    if not path:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def on_worker_process_shutdown(pid: int | None = None, **_: Any) -> None:
    """Celery's ``worker_process_shutdown`` signal handler (it runs in the ending child):
    ``signals.worker_process_shutdown.connect(on_worker_process_shutdown, weak=False)``."""
    process_exited(pid if pid is not None else os.getpid())
