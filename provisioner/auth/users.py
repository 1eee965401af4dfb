"""User accounts and their bearer tokens, and the one authorisation check.

Tokens are 32 random bytes (``prv_`` + URL-safe base64); the database keeps only their
SHA-256, so a database dump yields no usable token. A token is shown once, when created.
A refused action is written to the audit trail (``auth.denied``) in its own transaction
before the refusal is raised, so a denial is recorded even though nothing else happens;
repeated denials of one action for one user are counted in one event per window
(:mod:`provisioner.audit.refusals`), so they cannot flood the trail.
A sign-in is written (``auth.login``) once per user, channel and UTC day, so reading the
trail does not grow it (:func:`record_login`).

No lock-outs: the installation always keeps a *live admin* (an enabled admin with at least
one unrevoked token), since only an admin can make accounts. So the first account must be an
admin, and the last live admin can be neither revoked nor demoted; such a refusal is audited
(``user.change_refused``) and nothing else is written. If the last admin's token is lost
anyway, root on the line server gets back in with :mod:`provisioner.auth.recovery`.
Each check runs in the transaction that writes, after the audit lock, so two admins revoking
each other at the same moment cannot both succeed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain, refusals
from provisioner.audit.entry import canonical_payload
from provisioner.auth.roles import ACTIONS, Role, allowed
from provisioner.db.engine import transaction
from provisioner.db.models import ApiToken, AuditEvent, UserAccount, utcnow
from provisioner.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)

TOKEN_PREFIX = "prv_"
_NAME = re.compile(r"[a-z][a-z0-9._-]{0,63}")
_MAX_VIA = 200  # a request path is the client's text: the trail keeps its start only


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


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidInputError(
            f"user name {name!r}: lower-case letters, digits, '.', '_' or '-', max 64"
        )


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInputError(
            f"unknown role {role!r}: one of {', '.join(r.value for r in Role)}"
        ) from None


def _user(s: Session, name: str) -> UserAccount:
    user = s.get(UserAccount, name)
    if user is None:
        raise NotFoundError(f"user {name!r} does not exist (see `provisioner users list`)")
    return user


def _live_admins(s: Session) -> set[str]:
    """Enabled admins with at least one unrevoked token: who can still administer."""
    rows = s.exec(
        select(UserAccount.name)
        .join(ApiToken, col(ApiToken.user_name) == col(UserAccount.name))
        .where(
            UserAccount.role == Role.ADMIN,
            col(UserAccount.disabled).is_(False),
            col(ApiToken.revoked_at).is_(None),
        )
        .distinct()
    ).all()
    return set(rows)


def _refuse(s: Session, actor: str, action: str, user: str, reason: str) -> str:
    """Audit a refused account change in ``s`` (which then writes nothing else); returns
    the reason, which becomes the one-line error."""
    chain.append(
        s,
        "user.change_refused",
        actor=actor,
        payload={"action": action, "user": user, "reason": reason},
    )
    return reason


def _last_admin_refusal(s: Session, name: str, actor: str, action: str) -> str | None:
    if _live_admins(s) != {name}:
        return None
    return _refuse(s, actor, action, name, f"{name} is the last admin: add another admin first")


def record_refusal(engine: Engine, actor: str, action: str, user: str, reason: str) -> None:
    """Audit a refusal decided outside a transaction (e.g. a wrong SO PIN), on its own."""
    with transaction(engine) as s:
        _refuse(s, actor, action, user, reason)


def add_user(engine: Engine, name: str, role: str, actor: str) -> str:
    """Create a user and its first token; returns the token (shown once). Refused for a
    non-admin while no live admin exists: the first account must be able to make others."""
    check_name(name)
    new_role = _role(role)
    token = new_token()
    with transaction(engine) as s:
        chain.lock_for_append(s)
        if s.get(UserAccount, name) is not None:
            raise InvalidInputError(f"user {name!r} already exists")
        refusal = None
        if new_role != Role.ADMIN and not _live_admins(s):
            refusal = _refuse(
                s,
                actor,
                "add",
                name,
                f"no admin exists yet: add an admin first "
                f"(provisioner users add NAME --role admin), then {name}",
            )
        else:
            s.add(UserAccount(name=name, role=new_role, created_by=actor))
            s.flush()
            s.add(ApiToken(user_name=name, token_sha256=token_hash(token), label="initial"))
            chain.append(
                s, "user.created", actor=actor, payload={"user": name, "user_role": new_role}
            )
            return token
    raise ConflictError(refusal)


def add_token(engine: Engine, name: str, actor: str, label: str | None = None) -> str:
    token = new_token()
    with transaction(engine) as s:
        _user(s, name)
        s.add(ApiToken(user_name=name, token_sha256=token_hash(token), label=label))
        s.flush()
        chain.append(s, "user.token_added", actor=actor, payload={"user": name, "label": label})
    return token


def revoke_tokens(engine: Engine, name: str, actor: str) -> int:
    """Revoke every token of ``name``; returns how many were live. Refused (and audited)
    for the last live admin."""
    with transaction(engine) as s:
        chain.lock_for_append(s)
        _user(s, name)
        refusal = _last_admin_refusal(s, name, actor, "revoke")
        if refusal is None:
            live = s.exec(
                select(ApiToken).where(
                    ApiToken.user_name == name, col(ApiToken.revoked_at).is_(None)
                )
            ).all()
            for t in live:
                t.revoked_at = utcnow()
                s.add(t)
            chain.append(
                s, "user.tokens_revoked", actor=actor, payload={"user": name, "count": len(live)}
            )
            return len(live)
    raise ConflictError(refusal)


def set_role(engine: Engine, name: str, role: str, actor: str) -> str:
    """Give ``name`` the role ``role``; returns its previous role (the same role again
    writes nothing). Demoting the last live admin is refused and audited."""
    new_role = _role(role)
    with transaction(engine) as s:
        chain.lock_for_append(s)
        user = _user(s, name)
        old = user.role
        if old == new_role:
            return old
        refusal = None
        if new_role != Role.ADMIN:
            refusal = _last_admin_refusal(s, name, actor, "role")
        if refusal is None:
            user.role = new_role
            s.add(user)
            chain.append(
                s,
                "user.role_changed",
                actor=actor,
                payload={"user": name, "from": old, "to": new_role},
            )
            return old
    raise ConflictError(refusal)


def recover_admin(engine: Engine, name: str, actor: str, detail: dict[str, str | None]) -> str:
    """Break-glass (the caller proved root and the SO PIN): make ``name`` an enabled admin,
    creating it if needed, with a new token (returned, shown once). ``detail`` (who ran
    it) goes into the ``user.admin_recovered`` event."""
    check_name(name)
    token = new_token()
    with transaction(engine) as s:
        chain.lock_for_append(s)
        user = s.get(UserAccount, name)
        before = None if user is None else {"role": user.role, "disabled": user.disabled}
        if user is None:
            user = UserAccount(name=name, role=Role.ADMIN, created_by=actor)
        user.role, user.disabled = Role.ADMIN, False
        s.add(user)
        s.flush()
        s.add(ApiToken(user_name=name, token_sha256=token_hash(token), label="recovered"))
        chain.append(
            s,
            "user.admin_recovered",
            actor=actor,
            payload={"user": name, "before": before, **detail},
        )
    return token


@dataclass(frozen=True)
class UserView:
    """A user as ``users list`` shows it: a user without a live token can no longer act,
    so it is shown as revoked (its account and history stay)."""

    name: str
    role: str
    created_at: datetime
    created_by: str
    disabled: bool
    live_tokens: int
    revoked_tokens: int

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return "active" if self.live_tokens else "revoked"

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "role": self.role,
            "status": self.status,
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "tokens": {"live": self.live_tokens, "revoked": self.revoked_tokens},
        }


def list_users(engine: Engine) -> list[UserView]:
    with Session(engine) as s:
        counts: dict[tuple[str, bool], int] = {}
        for user_name, revoked, n in s.exec(
            select(
                ApiToken.user_name,
                col(ApiToken.revoked_at).is_not(None),
                func.count(),
            ).group_by(col(ApiToken.user_name), col(ApiToken.revoked_at).is_not(None))
        ).all():
            counts[(user_name, bool(revoked))] = int(n)
        return [
            UserView(
                u.name,
                u.role,
                u.created_at,
                u.created_by,
                u.disabled,
                counts.get((u.name, False), 0),
                counts.get((u.name, True), 0),
            )
            for u in s.exec(select(UserAccount).order_by(col(UserAccount.name))).all()
        ]


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


def check_action(action: str) -> None:
    """An action missing from the roles table is a bug (KeyError), not a user error."""
    if action not in ACTIONS:
        raise KeyError(f"undeclared action {action!r}")


def authorize(engine: Engine, who: Principal, action: str, *, via: str) -> None:
    """Raise PermissionDeniedError (after auditing ``auth.denied``) unless ``who``'s role
    may take ``action``. ``via`` says where (``cli``, ``api GET /audit/events``, ``web GET
    /ui/ca``); the event carries the first one of its window.

    Denials are aggregated (:mod:`provisioner.audit.refusals`): the first denial of an
    action for a user appends ``auth.denied`` at once, repeated ones within the window only
    add to its count, so a script replaying a 403 cannot grow the trail without bound."""
    check_action(action)
    if allowed(who.role, action):
        return
    with transaction(engine) as s:
        refusals.record(
            s,
            "auth.denied",
            actor=who.actor,
            reason=action,
            role=who.role,
            payload={"action": action, "via": via[:_MAX_VIA]},
        )
    need = " or ".join(sorted(ACTIONS[action]))
    raise PermissionDeniedError(f"{who.actor} may not {action} (needs role {need})")


def _day_start(now: datetime) -> str:
    """Midnight UTC of ``now``'s day, as the log's sortable timestamp text."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT00:00:00.000000Z")


def _signed_in_today(s: Session, who: Principal, payload: str, since: str) -> bool:
    return (
        s.exec(
            select(AuditEvent.seq)
            .where(
                AuditEvent.event_type == "auth.login",
                AuditEvent.actor == who.actor,
                AuditEvent.payload == payload,
                col(AuditEvent.ts) >= since,
            )
            .limit(1)
        ).first()
        is not None
    )


def record_login(engine: Engine, who: Principal, via: str) -> bool:
    """Audit ``who``'s sign-in through ``via`` (``cli``, ``api``) at most once per UTC
    day; returns whether an event was written.

    A token is presented on every CLI command and API call, so recording each would make
    every read grow the trail it reads (and an auditor's checks would never see the same
    log twice). The first sign-in of the day says who used the system through which door
    and when they started; later ones that day add nothing an auditor needs. The check is
    made again under the append lock, so two commands at once still write one event.
    """
    payload = canonical_payload({"via": via})
    since = _day_start(datetime.now(UTC))
    with Session(engine) as s:
        if _signed_in_today(s, who, payload, since):
            return False
    with transaction(engine) as s:
        chain.lock_for_append(s)
        if _signed_in_today(s, who, payload, since):
            return False
        chain.append(s, "auth.login", actor=who.actor, role=who.role, payload={"via": via})
    return True
