"""Dashboard sessions: opened with a user token, kept as a hash, ended by sign-out, expiry,
or the revocation of the token they were opened with."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.auth import users
from provisioner.auth.roles import allowed
from provisioner.db.engine import transaction
from provisioner.db.models import ApiToken, UserAccount, WebSession, aware, utcnow
from provisioner.errors import AuthenticationError

COOKIE = "prov_session"


@dataclass(frozen=True)
class WebUser:
    """Who is signed in to this browser, and this session's CSRF token."""

    name: str
    role: str
    csrf: str
    session_hash: str
    flash: str | None = None

    @property
    def principal(self) -> users.Principal:
        return users.Principal(self.name, self.role)

    @property
    def actor(self) -> str:
        return self.principal.actor

    def may(self, action: str) -> bool:
        """For templates: whether to show a link or a form at all (the route checks again)."""
        return allowed(self.role, action)


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def sign_in(engine: Engine, token: str, hours: float) -> tuple[str, WebUser]:
    """Open a session for the user of ``token`` (AuthenticationError if it is not a live
    token); audited as ``auth.login`` via ``web``. Returns the cookie value and the user."""
    who = users.authenticate(engine, token)
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    digest = users.token_hash(token)
    now = utcnow()
    with transaction(engine) as s:
        tok = s.exec(select(ApiToken).where(ApiToken.token_sha256 == digest)).one()
        assert tok.id is not None
        # Sessions that ran out are removed when someone signs in: the table stays small.
        s.exec(delete(WebSession).where(col(WebSession.expires_at) < now))
        s.add(
            WebSession(
                id_sha256=_hash(session_id),
                user_name=who.name,
                token_id=tok.id,
                csrf=csrf,
                created_at=now,
                expires_at=now + timedelta(hours=hours),
            )
        )
        chain.append(s, "auth.login", actor=who.actor, role=who.role, payload={"via": "web"})
    return session_id, WebUser(who.name, who.role, csrf, _hash(session_id))


def lookup(engine: Engine, session_id: str) -> WebUser:
    """The live session behind the cookie value; AuthenticationError when there is none, it
    expired, its token was revoked or its user disabled."""
    if not session_id or len(session_id) > 100:
        raise AuthenticationError("not signed in")
    digest = _hash(session_id)
    with Session(engine) as s:
        row = s.exec(
            select(WebSession, UserAccount, ApiToken)
            .join(UserAccount, col(UserAccount.name) == col(WebSession.user_name))
            .join(ApiToken, col(ApiToken.id) == col(WebSession.token_id))
            .where(WebSession.id_sha256 == digest)
        ).first()
    if row is None:
        raise AuthenticationError("not signed in")
    sess, user, tok = row
    if (
        not hmac.compare_digest(sess.id_sha256, digest)
        or aware(sess.expires_at) <= utcnow()
        or tok.revoked_at is not None
        or user.disabled
    ):
        raise AuthenticationError("the session has ended: sign in again")
    return WebUser(user.name, user.role, sess.csrf, digest, sess.flash)


def take_flash(engine: Engine, user: WebUser) -> str | None:
    """The message left for this session's next page, removed as it is read."""
    if user.flash is None:
        return None
    with transaction(engine) as s:
        row = s.get(WebSession, user.session_hash)
        if row is not None:
            row.flash = None
            s.add(row)
    return user.flash


def set_flash(engine: Engine, user: WebUser, message: str) -> None:
    with transaction(engine) as s:
        row = s.get(WebSession, user.session_hash)
        if row is not None:
            row.flash = message[:2000]
            s.add(row)


def sign_out(engine: Engine, user: WebUser) -> None:
    with transaction(engine) as s:
        row = s.get(WebSession, user.session_hash)
        if row is None:
            return
        s.delete(row)
        chain.append(s, "auth.logout", actor=user.actor, role=user.role, payload={"via": "web"})
