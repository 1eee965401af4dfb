"""Bearer tokens: generated into a 0600 file, stored by the server only as SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from provisioner.errors import ConfigError


def ensure_upload_token(path: Path) -> None:
    """Create a random token file if there is none (idempotent)."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"registry token file {path} does not exist: start the registry "
            "(`provisioner services run`) or set registry.token_file"
        ) from None
    if not token:
        raise ConfigError(f"registry token file {path} is empty")
    return token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, hashes: set[str]) -> bool:
    h = token_hash(token)
    return any(hmac.compare_digest(h, known) for known in hashes)
