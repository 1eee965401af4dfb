"""PIN files: the only way a PIN reaches this code (never argv, env, logs or exceptions)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from provisioner.errors import HsmError


def read_pin(path: Path) -> str:
    """Read a PIN from a file; errors name the file, never its content."""
    try:
        pin = path.read_text().strip()
    except FileNotFoundError:
        raise HsmError(f"PIN file {path} does not exist: run `provisioner ca init`") from None
    except OSError as exc:
        raise HsmError(f"cannot read PIN file {path}: {exc.strerror}") from None
    if not pin:
        raise HsmError(f"PIN file {path} is empty")
    return pin


def write_new_pin(path: Path) -> str:
    """Generate a random PIN and store it in ``path`` with mode 0600 (parent 0700)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pin = secrets.token_hex(8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pin + "\n")
    os.chmod(path, 0o600)
    return pin
