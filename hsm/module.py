"""Opening a PKCS#11 module and logged-in sessions on its tokens.

A :class:`Pkcs11Module` owns one loaded-and-initialised module for one process; closing it
finalises the module (python-pkcs11 re-initialises on the next open, which also makes
SoftHSM re-read its configuration). Tokens are found by label, never by slot number.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any

import pkcs11
from pkcs11 import exceptions as p11e

from hsm.pins import read_pin
from provisioner.errors import HsmError, HsmLoginError


class TokenSession:
    """One logged-in user session on one token; operations are serialised by a lock
    (python-pkcs11 sessions are not safe to share between threads)."""

    def __init__(self, token_label: str, session: Any) -> None:
        self.token_label = token_label
        self.session = session
        self.lock = threading.RLock()

    def close(self) -> None:
        with self.lock, contextlib.suppress(p11e.PKCS11Error):
            self.session.close()

    def __repr__(self) -> str:  # never shows anything secret
        return f"TokenSession(token={self.token_label!r})"


class Pkcs11Module:
    """A PKCS#11 module loaded in this process (SoftHSM via p11-kit's proxy by default)."""

    def __init__(self, module_path: str) -> None:
        if not Path(module_path).exists():
            raise HsmError(
                f"PKCS#11 module {module_path} not found: install it (make install) "
                "or set hsm.module"
            )
        self.module_path = module_path
        try:
            self.lib: Any = pkcs11.lib(module_path)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot load PKCS#11 module {module_path}: {exc!r}") from None

    def close(self) -> None:
        """Finalise the module: every session of this process on it ends."""
        with contextlib.suppress(p11e.PKCS11Error):
            self.lib.finalize()

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

    def open_token(self, label: str, pin_file: Path) -> TokenSession:
        """Log in as user to the token labelled ``label`` with the PIN in ``pin_file``."""
        token = self.find_token(label)
        if token is None:
            raise HsmError(
                f"no PKCS#11 token labelled {label!r} in {self.module_path}: "
                "run `provisioner ca init`"
            )
        pin = read_pin(pin_file)
        try:
            session = token.open(rw=True, user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            raise HsmLoginError(
                f"token {label!r} rejected the PIN from {pin_file}: check the pin file"
            ) from None
        except p11e.PinLocked:
            raise HsmLoginError(f"token {label!r}: the user PIN is locked") from None
        except p11e.UserAlreadyLoggedIn:
            session = token.open(rw=True)
        except p11e.PKCS11Error as exc:
            raise HsmError(f"cannot log in to token {label!r}: {type(exc).__name__}") from None
        finally:
            del pin
        return TokenSession(label, session)
