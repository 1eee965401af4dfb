"""A token connection that keeps signing through a real HSM's hiccups, or stops cleanly.

One persistent logged-in session (the login belongs to the process; closing that session
would log every other one out) plus up to ``size - 1`` more sessions, leased with an
acquire timeout. A token-lost failure trips the :class:`~hsm.breaker.CircuitBreaker`; its
reconnect finalises and re-initialises the module, logs in again (the PIN source is read
again) and opens fresh sessions. Sessions and key handles of the lost connection are never
reused: each carries the generation it was opened in.

Open a pool in the process that uses it, never before a fork (research/hsm.md).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from pkcs11 import exceptions as p11e

from hsm.breaker import BreakerStatus, CircuitBreaker
from hsm.module import TOKEN_LOST, Pkcs11Module, TokenSession
from hsm.pins import PinSource
from provisioner.errors import (
    HsmBusyError,
    HsmError,
    HsmKeyNotFoundError,
    HsmLoginError,
    HsmUnavailableError,
)

T = TypeVar("T")

# What trips the breaker: the token is gone, or a key that was there at open is gone.
_TRIPS: tuple[type[BaseException], ...] = (*TOKEN_LOST, HsmKeyNotFoundError)


class TokenPool:
    """Sessions on one token of one module, guarded by a circuit breaker."""

    def __init__(
        self,
        module_path: str,
        token_label: str,
        pin: PinSource,
        *,
        size: int = 2,
        acquire_timeout_s: float = 10.0,
        retry_base_s: float = 1.0,
        retry_max_s: float = 60.0,
        on_change: Callable[[BreakerStatus], None] | None = None,
        probe: Callable[[TokenSession], object] | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one session")
        self.module_path = module_path
        self.token_label = token_label
        self._pin = pin
        self._size = size
        self._timeout = acquire_timeout_s
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._idle: list[TokenSession] = []
        self._waiting = 0  # callers blocked in _acquire: only then does a release notify
        self._open_count = 0
        self._generation = 0
        self._module: Pkcs11Module | None = None
        self._persistent: TokenSession | None = None
        # Run on every (re)connect: the connection only counts as back when the keys this
        # pool serves are visible again.
        self.probe = probe
        self.breaker = CircuitBreaker(
            token_label,
            self._reconnect,
            base_delay_s=retry_base_s,
            max_delay_s=retry_max_s,
            on_change=on_change,
        )

    # --- lifecycle ------------------------------------------------------------------

    def open(self) -> TokenPool:
        """Load the module and log in; a wrong PIN, a missing token or a failing probe
        raises here (not through the breaker: a signer that never started must say why)."""
        self._module = Pkcs11Module(self.module_path)
        try:
            self._connect_with_retries()
        except BaseException:
            self._module.close()
            self._module = None
            raise
        return self

    def _connect_with_retries(self, attempts: int = 6) -> None:
        """SoftHSM processes starting together on one token directory sometimes see the
        token missing or get GeneralError while another one reads it (research/hsm.md):
        retry such failures briefly. A rejected PIN is final at once."""
        delay = 0.1
        for attempt in range(attempts):
            try:
                self._connect()
                return
            except HsmLoginError:
                raise
            except HsmError:
                if attempt == attempts - 1:
                    raise
            time.sleep(delay)
            delay = min(1.0, delay * 2)
            assert self._module is not None
            self._module.reinitialize()

    def close(self) -> None:
        self.breaker.stop()
        with self._lock:
            self._drop_sessions()
            if self._module is not None:
                self._module.close()
                self._module = None

    def __enter__(self) -> TokenPool:
        return self.open()

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def status(self) -> BreakerStatus:
        return self.breaker.status

    def _connect(self) -> None:
        assert self._module is not None
        with self._lock:
            self._generation += 1
            self._persistent = self._module.open_token(
                self.token_label, self._pin, self._generation
            )
            self._idle = [self._persistent]
            self._open_count = 1
            if self.probe is not None:
                self.probe(self._persistent)

    def _reconnect(self) -> None:
        if self._module is None:
            raise HsmError("the pool is closed")
        with self._lock:
            self._drop_sessions()
        self._module.reinitialize()
        self._connect()

    def _drop_sessions(self) -> None:
        idle, self._idle = self._idle, []
        for ts in idle:
            if ts is not self._persistent:
                ts.close()
        if self._persistent is not None:
            self._persistent.close()
            self._persistent = None
        self._open_count = 0

    # --- use --------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[TokenSession]:
        """A session for the duration of the block; token loss trips the breaker."""
        self.breaker.before_call()
        ts = self._acquire()
        try:
            with ts.lock:
                yield ts
        except _TRIPS as exc:
            raise self._lost(ts, exc) from None
        finally:
            self._release(ts)

    def run(self, fn: Callable[[TokenSession], T]) -> T:
        """Run ``fn`` on a leased session. If this very call found the connection lost and
        an immediate reconnect succeeds (a dropped session, a restarted HSM service), it is
        run once more; otherwise the breaker's error is raised.

        This is the signer's hot path (one call per signature): with the breaker closed
        and a session idle it reads one attribute, takes the pool lock once to lease and
        once to return, and no condition variable is touched."""
        breaker = self.breaker
        was_closed = not breaker.is_open
        try:
            return self._run_once(fn)
        except HsmUnavailableError:
            if not (was_closed and breaker.try_reconnect()):
                raise
        return self._run_once(fn)

    def _run_once(self, fn: Callable[[TokenSession], T]) -> T:
        if self.breaker.is_open:
            self.breaker.before_call()
        with self._lock:  # the uncontended lease: an idle session, no deadline, no wait
            ts = self._idle.pop() if self._idle and self._module is not None else None
        if ts is None:
            ts = self._acquire()
        try:
            with ts.lock:
                return fn(ts)
        except _TRIPS as exc:
            raise self._lost(ts, exc) from None
        finally:
            self._release(ts)

    def _lost(self, ts: TokenSession, exc: BaseException) -> HsmUnavailableError:
        if ts.generation == self._generation:
            return self.breaker.trip(exc)
        return HsmUnavailableError(
            f"token {self.token_label!r} was reconnected during the call; try again"
        )

    def _acquire(self) -> TokenSession:
        deadline = time.monotonic() + self._timeout
        with self._returned:
            while True:
                if self._module is None:
                    raise HsmError(f"the pool of token {self.token_label!r} is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open_count < self._size:
                    self._open_count += 1
                    break
                left = deadline - time.monotonic()
                self._waiting += 1
                try:
                    returned = left > 0 and self._returned.wait(left)
                finally:
                    self._waiting -= 1
                if not returned:
                    if self._idle:
                        continue
                    raise HsmBusyError(
                        f"all {self._size} sessions of token {self.token_label!r} stayed busy "
                        f"for {self._timeout:.0f}s"
                    )
            module, generation = self._module, self._generation
        try:
            return module.open_session(self.token_label, generation)
        except HsmError as exc:
            with self._returned:
                self._open_count -= 1
            raise self.breaker.trip(exc) from None

    def _release(self, ts: TokenSession) -> None:
        with self._lock:
            if ts.generation == self._generation:
                self._idle.append(ts)
                if self._waiting:
                    self._returned.notify()
                return
        if ts is not self._persistent:
            with contextlib.suppress(p11e.PKCS11Error):
                ts.close()
