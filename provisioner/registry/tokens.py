"""The upload token: a random bearer token in a private file, known to the server only as a
SHA-256 hash.

The registry service and the upload workers run on the same machine in the default set-up,
so they share the token through a file (mode 0600 in a 0700 directory) rather than through
settings, which get printed. The server keeps only the hash, so a memory or database dump of
the server does not yield a usable token.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from provisioner.errors import ConfigError

_TOKEN_BYTES = 32


def ensure_upload_token(path: Path) -> None:
    """Create ``path`` holding a fresh random token unless it exists (then it is left alone).

    The file appears atomically with its full content: it is written under a temporary name
    and hard-linked into place, so a concurrent reader never sees it empty and two processes
    racing here agree on one token.
    """
    if path.exists():
        return
    parent = path.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is subject to the umask
    tmp = parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(_TOKEN_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # someone else won the race: keep theirs
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_token(path: Path) -> str:
    """The token in ``path``; ConfigError (saying how to get one) if it is missing or bad."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(
            f"registry upload token {path} does not exist: start the registry "
            "(`python -m provisioner.registry`, or `provisioner services run`) or run "
            "`provisioner demo` once, which creates it; or point registry.token_file at "
            "your registry's token"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read registry upload token {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(
            f"registry upload token {path} is empty: delete it and restart the "
            "registry to create a new one"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ConfigError(f"registry upload token {path} must be a single word on one line")
    return token


def token_hash(token: str) -> str:
    """Lower-case hex SHA-256 of the token: what the server stores and compares."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, known_hashes: Iterable[str]) -> bool:
    """Whether ``token`` is one of the known ones, in time independent of where they differ."""
    presented = token_hash(token)
    found = False
    for known in known_hashes:
        found |= hmac.compare_digest(presented, known)
    return found
