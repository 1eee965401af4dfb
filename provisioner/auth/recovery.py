"""Break-glass: root on the line server makes an admin again when no admin can act.

The last live admin can be neither revoked nor demoted (:mod:`provisioner.auth.users`), but
its token can still be lost (file deleted, person gone). Falling back to the CLI's local
bootstrap admin would let anyone with a shell on the machine take over, so the way back in
asks for two things an intruder should not have together: root on the line server (where
the database and the token are) and the factory token's SO PIN, checked by a real SO login
to the token. Whoever holds both could re-initialise the CA's token anyway, so this grants
nothing new. Every attempt, refused or not, is audited; the SO PIN never leaves this process
(no argv, no log, no audit payload, no message).
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path

from pkcs11 import exceptions as p11e
from sqlalchemy.engine import Engine

from hsm.pins import read_pin
from provisioner.auth import users
from provisioner.errors import (
    AuthenticationError,
    CaNotInitialisedError,
    ConfigError,
    HsmError,
    HsmLoginError,
    PermissionDeniedError,
)
from provisioner.settings import Settings

ACTION = "recover-admin"


def actor() -> str:
    """``break-glass:<OS user>``: the audit trail's name for whoever ran the recovery."""
    return f"break-glass:{getpass.getuser()}"


def read_so_pin(path: Path | None, token_label: str) -> str:
    """The SO PIN from ``path``, else typed at a no-echo prompt (a terminal is required)."""
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"SO PIN file {path} does not exist")
        return read_pin(path)
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to type the SO PIN on: pass --so-pin-file FILE")
    pin = getpass.getpass(f"SO PIN of token {token_label!r}: ").strip()
    if not pin:
        raise ConfigError("no SO PIN typed: nothing changed")
    return pin


def so_pin_is_right(settings: Settings, so_pin: str) -> bool:
    """Log in as SO to the factory token (and out again): whether the token accepts
    ``so_pin``. A missing token or a locked SO PIN raises instead."""
    from provisioner.ca.ceremony import open_module  # loads the HSM stack only when needed

    label = settings.hsm.factory_token
    with open_module(settings) as mod:
        token = mod.find_token(label)
        if token is None:
            raise CaNotInitialisedError(f"no token {label!r} to check the SO PIN against")
        try:
            session = token.open(rw=True, so_pin=so_pin)
        except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
            return False
        except p11e.PinLocked:
            raise HsmLoginError(f"token {label!r}: the SO PIN is locked") from None
        except p11e.PKCS11Error as exc:
            raise HsmError(
                f"cannot log in as SO to token {label!r}: {type(exc).__name__}"
            ) from None
        session.close()  # logs the SO out
        return True


def require_root(engine: Engine, name: str) -> None:
    """Refuse (audited) unless this process runs as root; checked before the SO PIN is
    asked for, so a non-root user is never prompted for it."""
    if os.geteuid() != 0:
        reason = "users recover-admin must run as root on the line server"
        users.record_refusal(engine, actor(), ACTION, name, reason)
        raise PermissionDeniedError(f"{reason} (sudo): nothing changed")


def recover_admin(settings: Settings, engine: Engine, name: str, so_pin: str) -> str:
    """Make ``name`` an enabled admin with a new token (returned, shown once), after
    checking root and the SO PIN. A refusal is audited and raised; nothing else is written."""
    require_root(engine, name)
    who = actor()
    if not so_pin_is_right(settings, so_pin):
        users.record_refusal(engine, who, ACTION, name, "the SO PIN was refused by the token")
        raise AuthenticationError(
            f"token {settings.hsm.factory_token!r} refused the SO PIN: nothing changed"
        )
    detail = {"os_user": getpass.getuser(), "sudo_user": os.environ.get("SUDO_USER")}
    return users.recover_admin(engine, name, who, detail)
