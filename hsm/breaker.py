"""A circuit breaker for a token that can disappear (pulled HSM, network HSM down, crash).

When the token is lost, signing must *stop*: no retry storm against a dead device, no
fallback to anything else. The breaker opens on the first token-lost failure; while open,
calls fail at once with :class:`~provisioner.errors.HsmUnavailableError`; after a backoff
delay (doubling up to a ceiling) one reconnect is attempted, by the next caller or by the
optional background thread, and a successful reconnect closes the breaker again. The
first reconnect is due at once (a lost *session* comes straight back), the backoff starts
when it fails. Every state
change is reported to ``on_change`` (the signer turns it into an audit event and a status
file); this module knows nothing about audit trails or batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum

from provisioner.errors import HsmUnavailableError
from provisioner.metrics import record

log = logging.getLogger("provisioner.hsm")


class BreakerState(StrEnum):
    CLOSED = "closed"  # signing
    OPEN = "open"  # token lost: refusing, reconnecting with backoff


@dataclass(frozen=True)
class BreakerStatus:
    """What the breaker reports: for ``ca show``, the status file and the audit event."""

    state: BreakerState
    since: datetime
    trips: int  # how many times the token was lost since the process started
    reconnect_attempts: int  # failed reconnects since the breaker last opened
    next_attempt_in_s: float | None  # while open
    last_error: str | None  # an exception class name and message, never a secret

    def as_json(self) -> dict[str, object]:
        return {
            "state": str(self.state),
            "since": self.since.isoformat(),
            "trips": self.trips,
            "reconnect_attempts": self.reconnect_attempts,
            "next_attempt_in_s": self.next_attempt_in_s,
            "last_error": self.last_error,
        }


class CircuitBreaker:
    """Guards calls to one token; ``reconnect`` must rebuild the connection or raise."""

    def __init__(
        self,
        name: str,
        reconnect: Callable[[], None],
        *,
        base_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        on_change: Callable[[BreakerStatus], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._reconnect = reconnect
        self._base = base_delay_s
        self._max = max_delay_s
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.RLock()
        self._status = BreakerStatus(BreakerState.CLOSED, datetime.now(UTC), 0, 0, None, None)
        # Whether ``_status.state is OPEN``, set together with it under the lock: what every
        # signature reads first, so a plain attribute rather than a property (hot path).
        self.is_open = False
        self._next_attempt = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        record.breaker(name, False)

    @property
    def status(self) -> BreakerStatus:
        with self._lock:
            if self._status.state is BreakerState.OPEN:
                wait = max(0.0, self._next_attempt - self._clock())
                return replace(self._status, next_attempt_in_s=round(wait, 3))
            return self._status

    def trip(self, error: BaseException) -> HsmUnavailableError:
        """Record that the token was lost; returns the error for the caller to raise."""
        with self._lock:
            if self._status.state is BreakerState.CLOSED:
                # The first reconnect is due at once: a lost session (not a lost token)
                # comes back on the next call; the backoff starts when that fails.
                self._next_attempt = self._clock()
                self._status = BreakerStatus(
                    BreakerState.OPEN,
                    datetime.now(UTC),
                    self._status.trips + 1,
                    0,
                    None,
                    _describe(error),
                )
                self.is_open = True
                self._notify()
            return self._unavailable()

    def before_call(self) -> None:
        """Raise at once while open and not yet due; reconnect when due (half-open)."""
        if not self.is_open:  # the hot path: no lock
            return
        with self._lock:
            if not self.is_open:
                return
            if self._clock() < self._next_attempt:
                raise self._unavailable()
            if not self.try_reconnect():
                raise self._unavailable()

    def try_reconnect(self) -> bool:
        """One reconnect attempt now; True (and closed) if the token is back."""
        with self._lock:
            if self._status.state is BreakerState.CLOSED:
                return True
            try:
                self._reconnect()
            except Exception as exc:
                failed = self._status.reconnect_attempts + 1
                delay = min(self._max, self._base * 2 ** (failed - 1))
                self._next_attempt = self._clock() + delay
                self._status = replace(
                    self._status, reconnect_attempts=failed, last_error=_describe(exc)
                )
                return False
            self._status = BreakerStatus(
                BreakerState.CLOSED, datetime.now(UTC), self._status.trips, 0, None, None
            )
            self.is_open = False
            self._notify()
            return True

    def start_background_retry(self, poll_s: float = 0.25) -> None:
        """Reconnect in a daemon thread while open, so signing resumes by itself even when
        no request arrives. Start it in the process that uses the token (after fork)."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(poll_s):
                with self._lock:
                    due = self.is_open and self._clock() >= self._next_attempt
                    if due:
                        self.try_reconnect()

        self._thread = threading.Thread(target=run, name=f"breaker-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _unavailable(self) -> HsmUnavailableError:
        st = self.status
        return HsmUnavailableError(
            f"token {self.name!r} is unavailable since {st.since:%Y-%m-%d %H:%M:%S} UTC "
            f"({st.last_error}); signing is stopped and resumes by itself when it is back "
            f"(next reconnect in {st.next_attempt_in_s or 0:.1f}s)"
        )

    def _notify(self) -> None:
        """Report a state change (and show it in the ``provisioner_signer_breaker_open``
        gauge). A failing report (the audit database down, say) is logged, never allowed to
        change what the breaker decided or raises."""
        record.breaker(self.name, self.is_open)
        if self._on_change is None:
            return
        try:
            self._on_change(self.status)
        except Exception:
            log.exception("reporting the state of token %r failed", self.name)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
