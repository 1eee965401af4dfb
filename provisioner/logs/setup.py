"""Pointing a process's logging at ``<var>/log/<name>.log``.

- :func:`configure`: a process that is ours alone (the API, the registry, a Celery
  worker): the root logger gets the JSON file handler; with ``terminal`` also warnings in
  the human format on stderr (run by hand). Under the supervisor a child's stderr is its
  ``<name>.out`` file, for what comes before logging or outside it, so there it is off.
- :func:`attach`: a few named loggers of a process that is not ours alone (the supervisor
  runs inside the CLI, or inside a test): their records go to the file and from warnings
  up to stderr, nothing else in the process is touched; :func:`detach` undoes it.

The component name comes from ``$PROVISIONER_PROCESS``, which the supervisor sets for each
child, else from the caller's default. Celery's task-success line would print each task's
return value (the signer's holds the certificate's DER): :func:`quiet_task_results` drops it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from provisioner.logs.formats import HumanFormatter, JsonFormatter
from provisioner.logs.handlers import AppendHandler
from provisioner.settings import Settings

PROCESS_ENV = "PROVISIONER_PROCESS"
_MARK = "_provisioner_logs"  # set on the handlers configure() installs


def process_name(default: str) -> str:
    """This process's component name: the supervisor's name for it, else ``default``."""
    return os.environ.get(PROCESS_ENV) or default


def log_file(settings: Settings, name: str) -> Path:
    return settings.var / "log" / f"{name}.log"


def level_of(settings: Settings) -> int:
    return logging.getLevelNamesMapping()[settings.logging.level.upper()]


def file_handler(path: Path, process: str) -> logging.Handler:
    handler = AppendHandler(path)
    handler.setFormatter(JsonFormatter(process))
    return handler


def terminal_handler(process: str, level: int = logging.WARNING) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(HumanFormatter(process, short=True))
    return handler


def configure(settings: Settings, name: str, *, terminal: bool | None = None) -> Path:
    """Make the root logger write JSON lines to ``<var>/log/<name>.log`` (``name``: the
    supervisor's name for this process if it set one); replaces what an earlier call
    installed. ``terminal``: also warnings on stderr (default: when not supervised).
    Returns the file."""
    name = process_name(name)
    path = log_file(settings, name)
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(h)
        h.close()
    handlers = [file_handler(path, name)]
    if terminal if terminal is not None else PROCESS_ENV not in os.environ:
        handlers.append(terminal_handler(name))
    for h in handlers:
        setattr(h, _MARK, True)
        root.addHandler(h)
    root.setLevel(level_of(settings))
    # httpx: one INFO line per request, URLs included; alembic: its plugin list each
    # time a process opens the database.
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    quiet_task_results()
    return path


def attach(loggers: tuple[str, ...], path: Path, process: str, level: int) -> list[logging.Handler]:
    """``loggers`` (not propagating any more) to ``path`` as JSON and from warnings up to
    stderr in the short human format; returns the handlers for :func:`detach`."""
    installed: list[logging.Handler] = []
    to_file, to_tty = file_handler(path, process), terminal_handler(process)
    for name in loggers:
        logger = logging.getLogger(name)
        for h in (to_file, to_tty):
            logger.addHandler(h)
        logger.setLevel(level)
        logger.propagate = False
    installed += [to_file, to_tty]
    return installed


def detach(loggers: tuple[str, ...], handlers: list[logging.Handler]) -> None:
    for name in loggers:
        logger = logging.getLogger(name)
        for h in handlers:
            logger.removeHandler(h)
        logger.propagate = True
    for h in handlers:
        h.close()


class _NoTaskResult(logging.Filter):
    """Celery's ``Task ... succeeded in ...s: <return value>`` without the return value:
    the signer's is the certificate (DER in hex), a gateway's the answer it relays."""

    def filter(self, record: logging.LogRecord) -> bool:
        args: Any = record.args
        if isinstance(args, dict) and "return_value" in args:
            record.args = {k: v for k, v in args.items() if k != "return_value"}
            record.msg = str(record.msg).replace(": %(return_value)s", "")
            if hasattr(record, "data"):
                record.data = record.args
        return True


def quiet_task_results() -> None:
    """Install :class:`_NoTaskResult` on Celery's tracer logger (once per process)."""
    logger = logging.getLogger("celery.app.trace")
    if not any(isinstance(f, _NoTaskResult) for f in logger.filters):
        logger.addFilter(_NoTaskResult())
