"""Where a PIN comes from: a file (RFC 7512 ``pin-source``) or an interactive prompt.

Never argv, never the environment, never a log line or an exception message: errors name
the file, not its content, and every PIN read is registered with the log redaction
(:func:`provisioner.logs.redact.register_secret`) in case something quotes it anyway.
A :class:`PinSource` is read each time a login needs it (a re-login after the token came
back reads the file again); a prompted PIN is asked once and kept in this process's memory
only, since a worker cannot prompt.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from provisioner.errors import HsmError
from provisioner.logs.redact import register_secret
from provisioner.private_files import check_pin_file

PROMPT = "prompt"


@dataclass
class PinSource:
    """``file:/path``, a bare path, or ``prompt``; see :meth:`parse`."""

    path: Path | None = None  # None: prompt
    label: str = "token"  # what the prompt names
    _prompted: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, source: str, label: str = "token") -> PinSource:
        """Accept ``prompt``, ``file:/abs/path`` (RFC 7512 pin-source form) or a path."""
        if source == PROMPT:
            return cls(None, label)
        if source.startswith("file:"):
            source = unquote(source.removeprefix("file:"))
            if source.startswith("//"):  # file:///abs/path
                source = source[2:]
        if not source:
            raise HsmError("empty pin-source: give file:/path/to/pin or 'prompt'")
        return cls(Path(source), label)

    @classmethod
    def file(cls, path: Path, label: str = "token") -> PinSource:
        return cls(path, label)

    def describe(self) -> str:
        """Where the PIN comes from, for messages (never the PIN)."""
        return "an interactive prompt" if self.path is None else f"PIN file {self.path}"

    def read(self) -> str:
        if self.path is not None:
            return read_pin(self.path)
        if self._prompted is None:
            if not sys.stdin.isatty():
                raise HsmError(
                    f"the PIN of {self.label!r} is to be typed, but there is no terminal: "
                    "run interactively or give --pin-source file:/path"
                )
            pin = getpass.getpass(f"PIN for token {self.label!r}: ").strip()
            if not pin:
                raise HsmError(f"no PIN typed for {self.label!r}")
            register_secret(pin)  # never in this process's logs, whatever logs it
            self._prompted = pin
        return self._prompted

    def __repr__(self) -> str:  # the dataclass repr would be fine too; be explicit
        return f"PinSource({self.describe()})"


def read_pin(path: Path) -> str:
    """Read a PIN from a file; errors name the file, never its content. A PIN file other
    users can read is refused (ConfigError with the chmod that fixes it): the PIN there is
    no longer a secret of this account's."""
    check_pin_file(path)
    try:
        pin = path.read_text().strip()
    except FileNotFoundError:
        raise HsmError(f"PIN file {path} does not exist: run `provisioner ca init`") from None
    except OSError as exc:
        raise HsmError(f"cannot read PIN file {path}: {exc.strerror}") from None
    if not pin:
        raise HsmError(f"PIN file {path} is empty")
    register_secret(pin)  # never in this process's logs, whatever logs it
    return pin


def write_new_pin(path: Path) -> str:
    """Generate a random PIN and store it in ``path`` with mode 0600 (parent 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pin = secrets.token_hex(8)
    register_secret(pin)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    os.chmod(path, 0o600)
    return pin
