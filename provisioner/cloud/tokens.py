"""Bearer tokens of the registry's service accounts, known to the server only as SHA-256
hashes, each with a role.

The upload token (role writer) and the admin token (role admin) are random tokens in private
files the server creates beside each other; further tokens (any role, e.g. read-only ones for
dashboards) are minted with :func:`add_token`, which prints nothing and keeps only the hash in
``tokens.sha256`` beside them.

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
import re
import secrets
from collections.abc import Iterable, Mapping
from enum import IntEnum
from pathlib import Path

from provisioner.errors import ConfigError

_TOKEN_BYTES = 32
ADMIN_TOKEN_NAME = "admin.token"
HASHED_TOKENS_NAME = "tokens.sha256"
_HASH_LINE = re.compile(r"([0-9a-f]{64})\s+([a-z]+)")


class Role(IntEnum):
    """What a service account may do; each role includes the ones below it.

    reader: GET only. writer (the upload worker): also create and patch devices. admin: also
    delete devices and create, patch and delete registries.
    """

    READER = 1
    WRITER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            raise ConfigError(
                f"unknown registry role {name!r}; expected reader, writer or admin"
            ) from None


def admin_token_file(upload_token_file: Path) -> Path:
    """The admin token lives beside the upload token, in the same private directory."""
    return upload_token_file.parent / ADMIN_TOKEN_NAME


def hashed_tokens_file(upload_token_file: Path) -> Path:
    return upload_token_file.parent / HASHED_TOKENS_NAME


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
            "(`python -m provisioner.cloud`, or `provisioner services run`) or run "
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


def add_token(path: Path, role: Role) -> str:
    """Mint a token of ``role``: its hash is appended to ``path`` (a ``tokens.sha256`` file),
    the token itself is returned for the caller to hand over once and is stored nowhere."""
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(f"{token_hash(token)} {role.name.lower()}\n")
    return token


def read_hashed_tokens(path: Path) -> dict[str, Role]:
    """The ``<sha256 hex> <role>`` lines of ``path`` (absent file: none); ``#`` comments and
    blank lines are skipped, anything else is a ConfigError naming the line."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read registry tokens {path}: {exc.strerror}") from None
    out: dict[str, Role] = {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _HASH_LINE.fullmatch(line.lower())
        if m is None:
            raise ConfigError(f"{path}:{n}: expected '<sha256 hex> <role>'")
        out[m.group(1)] = Role.parse(m.group(2))
    return out


def token_role(token: str, roles: Mapping[str, Role]) -> Role | None:
    """The role of ``token`` (None: unknown), compared with every known hash in time
    independent of where they differ."""
    presented = token_hash(token)
    found: Role | None = None
    for known, role in roles.items():
        if hmac.compare_digest(presented, known):
            found = role
    return found


def token_matches(token: str, known_hashes: Iterable[str]) -> bool:
    """Whether ``token`` is one of the known ones, in time independent of where they differ."""
    presented = token_hash(token)
    found = False
    for known in known_hashes:
        found |= hmac.compare_digest(presented, known)
    return found
