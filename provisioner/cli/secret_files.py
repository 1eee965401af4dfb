"""Writing a secret the CLI made (a user token, an enrollment token) to a new file."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.errors import ConfigError


def write_new_secret(path: Path, secret: str) -> None:
    """Create ``path`` 0600 (never an existing file: no token is overwritten or widened)
    and write ``secret`` to it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists; choose a new file for the token") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
