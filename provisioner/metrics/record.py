"""The few calls the pipeline, the signer, the chip driver and the registry client make to
count what they do: small, so instrumenting a module costs a line or two, and never able to
change what the instrumented code does (a metric that cannot be written is a metric lost,
not a device failed)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from provisioner.db.models import Step
from provisioner.errors import DeviceStopped, ServiceUnavailableError
from provisioner.metrics import defs

log = logging.getLogger("provisioner.metrics")

# The station a station worker serves (workers/celery_app.py STATION_ENV): the supervisor
# puts it in that worker's environment; no other process runs chip steps.
STATION_ENV = "PROVISIONER_WORKER_STATION"


def station_label() -> str:
    """This process's station, or "" (a process that serves no one station)."""
    return os.environ.get(STATION_ENV, "")


def step_label(step: Step) -> str:
    return step.name.lower()


def _safely(call: Callable[[], None]) -> None:
    try:
        call()
    except Exception:  # a full disk under the metrics directory, say
        log.warning("a metric could not be recorded", exc_info=True)


class StepMeter:
    """Times and counts the steps of one device's run in this process.

    :meth:`start` names the step the device works towards now (and starts its clock);
    :meth:`ok` counts it done; :meth:`failed` counts the step in progress by how the error
    ended it. A device stopped by its batch (paused, cancelled) is not an attempt that
    ended: it counts nothing."""

    def __init__(self, station: str | None = None, clock: Callable[[], float] | None = None):
        self.station = station_label() if station is None else station
        self._clock = clock or time.perf_counter
        self._step: Step | None = None
        self._t0 = 0.0

    def start(self, step: Step) -> None:
        self._step, self._t0 = step, self._clock()

    def ok(self) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        elapsed = self._clock() - self._t0
        label = step_label(step)

        def count() -> None:
            defs.DEVICE_STEPS.labels(self.station, label, "ok").inc()
            defs.STEP_SECONDS.labels(label).observe(elapsed)

        _safely(count)

    def failed(self, exc: BaseException | str) -> None:
        """``exc``: the error that ended the attempt, or a reason's name (e.g. a conflict
        recorded without an exception)."""
        step, self._step = self._step, None
        if step is None or isinstance(exc, DeviceStopped):
            return
        if isinstance(exc, ServiceUnavailableError):
            outcome, reason = "unavailable", type(exc).__name__
        elif isinstance(exc, str):
            outcome, reason = "failed", exc
        elif isinstance(exc, Exception):
            outcome, reason = "failed", type(exc).__name__
        else:
            return  # KeyboardInterrupt, SystemExit: the process is ending, not the step
        label = step_label(step)

        def count() -> None:
            defs.DEVICE_STEPS.labels(self.station, label, outcome).inc()
            if outcome == "failed":
                defs.DEVICE_FAILURES.labels(self.station, label, reason).inc()

        _safely(count)


def chip_status_label(status: int) -> str:
    """cryptoauthlib's ATCA_STATUS as the C library writes it (``0xf4``, not Python's -12)."""
    return f"0x{status & 0xFF:02x}"


def chip_error(status: int) -> None:
    """A chip command failed with ``status`` (an ATCA_STATUS code)."""
    _safely(
        lambda: defs.CHIP_COMMAND_ERRORS.labels(station_label(), chip_status_label(status)).inc()
    )


def signature(result: str, seconds: float | None = None) -> None:
    """One signing request ended with ``result`` (ok, repeat, refused, unavailable, error);
    ``seconds``: how long a new signature took."""

    def count() -> None:
        defs.SIGNATURES.labels(result).inc()
        if seconds is not None:
            defs.SIGNING_SECONDS.observe(seconds)

    _safely(count)


def breaker(token: str, is_open: bool) -> None:
    _safely(lambda: defs.BREAKER_OPEN.labels(token).set(1 if is_open else 0))


def http_result(status_code: int | None) -> str:
    """A registry answer as a bounded label: None is no answer at all."""
    if status_code is None:
        return "error"
    if status_code == 429:
        return "throttled"
    if 200 <= status_code < 300:
        return "ok"
    if 400 <= status_code < 500:
        return "4xx"
    if status_code >= 500:
        return "5xx"
    return "error"  # 1xx/3xx: not an answer a registry API gives


def registry_call(backend: str, operation: str, status_code: int | None) -> None:
    _safely(lambda: defs.REGISTRY_CALLS.labels(backend, operation, http_result(status_code)).inc())


def upload(result: str) -> None:
    """One upload attempt ended: done, conflict, retry, parked, refused."""
    _safely(lambda: defs.REGISTRY_UPLOADS.labels(result).inc())


def pace_wait(seconds: float) -> None:
    _safely(lambda: defs.PACE_WAIT_SECONDS.observe(max(0.0, seconds)))
