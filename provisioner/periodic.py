"""Background work on a period, inside a worker process (audit checkpoints, registry sync).

One daemon thread per job: it waits ``interval_s``, runs the job, logs what came of it, and
goes on. A failure (a lost token, a busy database, a dead registry) is logged and simply
tried again on the next round: the job's own state lives in the database, so nothing is
lost by skipping a round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from provisioner.errors import ProvisionerError

T = TypeVar("T")


class Periodic(Generic[T]):
    """Runs ``job`` every ``interval_s`` until :meth:`stop`; ``report`` sees each result."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        job: Callable[[], T],
        report: Callable[[T], None],
        log: logging.Logger,
        failed: str,
    ) -> None:
        self.name, self.interval_s = name, interval_s
        self._job, self._report, self._log, self._failed = job, report, log, failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                result = self._job()
            except ProvisionerError as exc:
                self._log.warning("%s: %s", self._failed, exc)
            except Exception:
                self._log.exception(self._failed)
            else:
                self._report(result)
