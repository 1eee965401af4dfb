"""Opening a PKCS#11 module and logged-in sessions on its tokens.

A :class:`Pkcs11Module` owns one loaded-and-initialised module for one process; closing it
finalises the module (python-pkcs11 re-initialises on the next open, which also makes
SoftHSM re-read its configuration). Tokens are found by label, never by slot number.

Login is per process and token (PKCS#11): the first session logs in, every later session of
the process shares that login, and closing the logged-in session logs all of them out.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import exceptions as p11e

from hsm.pins import PinSource
from provisioner.errors import HsmError, HsmLoginError

T = TypeVar("T")

# Failures that mean the token (or our connection to it) is gone, not that the request was
# wrong: a circuit breaker reacts to these, and only to these.
TOKEN_LOST: tuple[type[p11e.PKCS11Error], ...] = (
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.ObjectHandleInvalid,
    p11e.KeyHandleInvalid,
    p11e.GeneralError,
    p11e.UserNotLoggedIn,
)


class TokenSession:
    """One session on one token; operations are serialised by a lock (python-pkcs11
    sessions are not safe to share between threads). ``keys`` caches object handles found
    in this session; they die with it."""

    def __init__(self, token_label: str, session: Any, generation: int = 0) -> None:
        self.token_label = token_label
        self.session = session
        self.generation = generation
        self.lock = threading.RLock()
        self.keys: dict[object, Any] = {}

    def run(self, fn: Callable[[TokenSession], T]) -> T:
        """Run ``fn`` on this session (the same call shape as a pool's)."""
        with self.lock:
            try:
                return fn(self)
            except TOKEN_LOST as exc:
                raise HsmError(f"token {self.token_label!r} failed: {type(exc).__name__}") from None

    def close(self) -> None:
        with self.lock, contextlib.suppress(p11e.PKCS11Error):
            self.session.close()

    def __repr__(self) -> str:  # never shows anything secret
        return f"TokenSession(token={self.token_label!r})"


class _Users:
    """How many open :class:`Pkcs11Module` objects share each loaded library.

    A PKCS#11 library is initialised once per process (python-pkcs11 keeps one ``lib`` per
    path), and C_Finalize ends *every* session of the process. So the last user finalises,
    never an earlier one: a ceremony step run in the signer's process (or the signer
    reloading after a rotation) must not log the other users out. This mirrors state the C
    library already holds per process; it is not configuration."""

    lock = threading.Lock()
    count: dict[str, int] = {}  # noqa: RUF012  (process-wide by nature, see above)


class Pkcs11Module:
    """A PKCS#11 module loaded in this process (SoftHSM via p11-kit's proxy by default)."""

    def __init__(self, module_path: str) -> None:
        if not Path(module_path).exists():
            raise HsmError(
                f"PKCS#11 module {module_path} not found: install it (make install) "
                "or set hsm.module"
            )
        self.module_path = module_path
        with _Users.lock:
            try:
                self.lib: Any = pkcs11.lib(module_path)
            except p11e.PKCS11Error as exc:
                raise HsmError(f"cannot load PKCS#11 module {module_path}: {exc!r}") from None
            _Users.count[module_path] = _Users.count.get(module_path, 0) + 1
        self._open = True

    def close(self) -> None:
        """Release the module; the last user in the process finalises it (every session of
        the process on it then ends)."""
        with _Users.lock:
            if not self._open:
                return
            self._open = False
            left = _Users.count.get(self.module_path, 1) - 1
            _Users.count[self.module_path] = left
            if left == 0:
                with contextlib.suppress(p11e.PKCS11Error):
                    self.lib.finalize()

    def reinitialize(self) -> None:
        """Finalise and initialise again: the only way back after a token was lost (slot
        listing keeps failing until then; research/hsm.md)."""
        try:
            self.lib.reinitialize()
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot re-initialise {self.module_path}: {exc!r}") from None

    def __enter__(self) -> Pkcs11Module:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- tokens ---------------------------------------------------------------------

    def find_token(self, label: str) -> Any | None:
        try:
            return self.lib.get_token(token_label=label)
        except p11e.NoSuchToken:
            return None
        except p11e.MultipleTokensReturned:
            raise HsmError(
                f"several tokens are labelled {label!r}; labels must be unique"
            ) from None
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot list tokens of {self.module_path}: {exc!r}") from None

    def open_token(self, label: str, pin: PinSource | Path, generation: int = 0) -> TokenSession:
        """Log in as user to the token labelled ``label`` (the PIN from ``pin``)."""
        source = pin if isinstance(pin, PinSource) else PinSource.file(pin, label)
        token = self.find_token(label)
        if token is None:
            raise HsmError(
                f"no PKCS#11 token labelled {label!r} in {self.module_path}: "
                "run `provisioner ca init`"
            )
        secret = source.read()
        try:
            session = token.open(rw=True, user_pin=secret)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            raise HsmLoginError(
                f"token {label!r} rejected the PIN from {source.describe()}"
            ) from None
        except p11e.PinLocked:
            raise HsmLoginError(f"token {label!r}: the user PIN is locked") from None
        except p11e.UserAlreadyLoggedIn:
            session = token.open(rw=True)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot log in to token {label!r}: {type(exc).__name__}") from None
        finally:
            del secret
        return TokenSession(label, session, generation)

    def open_session(self, label: str, generation: int = 0) -> TokenSession:
        """Another session on a token this process is already logged in to."""
        token = self.find_token(label)
        if token is None:
            raise HsmError(f"token {label!r} is no longer present in {self.module_path}")
        try:
            return TokenSession(label, token.open(rw=True), generation)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot open a session on {label!r}: {type(exc).__name__}") from None
