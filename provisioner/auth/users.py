"""User accounts and their bearer tokens, and the one authorisation check.

Tokens are 32 random bytes (``prv_`` + URL-safe base64); the database keeps only their
SHA-256, so a database dump yields no usable token. A token is shown once, when created.
A refused action is written to the audit trail (``auth.denied``) in its own transaction
before the refusal is raised, so a denial is recorded even though nothing else happens.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.auth.roles import ACTIONS, Role, allowed
from provisioner.db.engine import transaction
from provisioner.db.models import ApiToken, UserAccount, utcnow
from provisioner.errors import (
    AuthenticationError,
    ConfigError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)

TOKEN_PREFIX = "prv_"
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Principal:
    """Who is acting: a user with a role (or the local bootstrap admin)."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_token_file(path: Path) -> str:
    """A token from its file (never argv). The message never contains the token."""
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token.startswith(TOKEN_PREFIX):
        raise AuthenticationError(f"{path} does not hold a provisioner token")
    return token


def has_users(engine: Engine) -> bool:
    with Session(engine) as s:
        return bool(s.exec(select(func.count()).select_from(UserAccount)).one())


def add_user(engine: Engine, name: str, role: str, actor: str) -> str:
    """Create a user and its first token; returns the token (shown once)."""
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"user name {name!r}: lower-case letters, digits, '.', '_' or '-', max 64"
        )
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInputError(
            f"unknown role {role!r}: one of {', '.join(r.value for r in Role)}"
        ) from None
    token = new_token()
    with transaction(engine) as s:
        if s.get(UserAccount, name) is not None:
            raise InvalidInputError(f"user {name!r} already exists")
        s.add(UserAccount(name=name, role=role, created_by=actor))
        s.flush()
        s.add(ApiToken(user_name=name, token_sha256=token_hash(token), label="initial"))
        chain.append(s, "user.created", actor=actor, payload={"user": name, "user_role": role})
    return token


def add_token(engine: Engine, name: str, actor: str, label: str | None = None) -> str:
    token = new_token()
    with transaction(engine) as s:
        if s.get(UserAccount, name) is None:
            raise NotFoundError(f"user {name!r} does not exist")
        s.add(ApiToken(user_name=name, token_sha256=token_hash(token), label=label))
        s.flush()
        chain.append(s, "user.token_added", actor=actor, payload={"user": name, "label": label})
    return token


def revoke_tokens(engine: Engine, name: str, actor: str) -> int:
    """Revoke every token of ``name``; returns how many were live."""
    with transaction(engine) as s:
        if s.get(UserAccount, name) is None:
            raise NotFoundError(f"user {name!r} does not exist")
        live = s.exec(
            select(ApiToken).where(ApiToken.user_name == name, col(ApiToken.revoked_at).is_(None))
        ).all()
        for t in live:
            t.revoked_at = utcnow()
            s.add(t)
        chain.append(
            s, "user.tokens_revoked", actor=actor, payload={"user": name, "count": len(live)}
        )
        return len(live)


def list_users(engine: Engine) -> list[UserAccount]:
    with Session(engine) as s:
        return list(s.exec(select(UserAccount).order_by(col(UserAccount.name))).all())


def authenticate(engine: Engine, token: str) -> Principal:
    """The live user behind ``token``; AuthenticationError otherwise (no detail leaks
    whether the token existed)."""
    digest = token_hash(token)
    with Session(engine) as s:
        row = s.exec(
            select(ApiToken, UserAccount)
            .join(UserAccount, col(UserAccount.name) == col(ApiToken.user_name))
            .where(ApiToken.token_sha256 == digest)
        ).first()
    if row is None:
        raise AuthenticationError("the token is not valid")
    tok, user = row
    # The lookup was by hash; compare again in constant time for good measure.
    if not hmac.compare_digest(tok.token_sha256, digest) or tok.revoked_at or user.disabled:
        raise AuthenticationError("the token is not valid")
    return Principal(user.name, user.role)


def authorize(engine: Engine, who: Principal, action: str, *, via: str) -> None:
    """Raise PermissionDeniedError (after auditing ``auth.denied``) unless ``who``'s role
    may take ``action``. ``via`` says where (``cli``, ``api GET /audit/events``)."""
    if action not in ACTIONS:
        raise KeyError(f"undeclared action {action!r}")  # a bug, not a user error
    if allowed(who.role, action):
        return
    with transaction(engine) as s:
        chain.append(
            s,
            "auth.denied",
            actor=who.actor,
            role=who.role,
            payload={"action": action, "via": via},
        )
    need = " or ".join(sorted(ACTIONS[action]))
    raise PermissionDeniedError(f"{who.actor} may not {action} (needs role {need})")


def record_login(engine: Engine, who: Principal, via: str) -> None:
    with transaction(engine) as s:
        chain.append(s, "auth.login", actor=who.actor, role=who.role, payload={"via": via})
