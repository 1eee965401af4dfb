"""One-time enrollment tokens: what lets one station PC get its certificate.

``station add ID`` (an admin, on the line server) makes one: 32 random bytes, URL-safe
base64 behind an ``enr_`` prefix (so a user token put in the wrong file is recognised),
valid for a day by default, shown once. The database keeps only its SHA-256 (a dump yields
no usable token), and a station keeps at most one usable token: adding the station again
spends every older unused one. The token is the enrollment request's only credential, so
every way it can be wrong (unknown, already used, expired) gets the same answer, and each
refusal is audited with the first 8 hex digits of the token's hash, never the token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import Station, StationEnrollment, aware, utcnow
from provisioner.errors import AuthenticationError, InvalidInputError

TOKEN_PREFIX = "enr_"
DEFAULT_TTL_S = 86_400
MAX_TTL_S = 30 * 86_400
# Station ids become Redis ACL user names (``st-ID``) and key prefixes (``st:ID:``): ASCII
# letters, digits, '-' and '_' only, so no id can widen a key pattern (``*``, ``?``, ``:``).
STATION_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

REFUSED_MESSAGE = (
    "enrollment token not valid (unknown, used or expired): ask the line admin for a new "
    "one (`provisioner station add ID`)"
)


class EnrollmentTokenError(AuthenticationError):
    """The enrollment token is unknown, used or expired. The message is the same for all
    three (a caller probing tokens learns nothing); ``reason`` says which, for the audit."""

    def __init__(self, reason: str, station_id: str | None = None) -> None:
        super().__init__(REFUSED_MESSAGE)
        self.reason, self.station_id = reason, station_id


def check_station_id(station_id: str) -> None:
    if not STATION_ID_RE.fullmatch(station_id):
        raise InvalidInputError(
            f"station id {station_id!r}: ASCII letters, digits, '-' or '_', starting with a "
            "letter or digit, at most 64"
        )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_prefix(digest: str) -> str:
    """What the audit trail keeps of a token: enough to match a refusal to a ``station
    add`` event, far too little to use."""
    return digest[:8]


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def cancel_pending(session: Session, station_id: str, now: datetime) -> int:
    """Spend every unused token of ``station_id`` (re-added or revoked); returns how many."""
    result = session.exec(
        update(StationEnrollment)
        .where(
            col(StationEnrollment.station_id) == station_id,
            col(StationEnrollment.used_at).is_(None),
        )
        .values(used_at=now)
    )
    return int(result.rowcount or 0)


def add_station(engine: Engine, station_id: str, actor: str, ttl_s: int = DEFAULT_TTL_S) -> str:
    """Register ``station_id`` (if new) and return a fresh one-time enrollment token for it,
    valid ``ttl_s`` seconds; older unused tokens of the station stop working. Audited
    ``station.added``. The token is returned once and stored only as its SHA-256."""
    check_station_id(station_id)
    if not 60 <= ttl_s <= MAX_TTL_S:
        raise InvalidInputError(
            f"token lifetime {ttl_s} s: between 60 s and {MAX_TTL_S // 86_400} days"
        )
    token = new_token()
    digest = token_hash(token)
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    with transaction(engine) as s:
        chain.lock_for_append(s)
        new = s.get(Station, station_id) is None
        if new:
            s.add(Station(id=station_id))
            s.flush()
        cancelled = cancel_pending(s, station_id, now)
        s.add(
            StationEnrollment(
                station_id=station_id,
                token_sha256=digest,
                created_by=actor,
                created_at=now,
                expires_at=expires,
            )
        )
        s.flush()
        chain.append(
            s,
            "station.added",
            actor=actor,
            station_id=station_id,
            payload={
                "station": station_id,
                "new_station": new,
                "token_hash": hash_prefix(digest),
                "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "cancelled_unused": cancelled,
            },
        )
    return token


def find_usable(session: Session, digest: str, now: datetime) -> StationEnrollment:
    """The enrollment row of a token hash if it can still be used; else
    :class:`EnrollmentTokenError` with the reason (``unknown``, ``used``, ``expired``)."""
    row = session.exec(
        select(StationEnrollment).where(StationEnrollment.token_sha256 == digest)
    ).first()
    if row is None:
        raise EnrollmentTokenError("unknown")
    if row.used_at is not None:
        raise EnrollmentTokenError("used", row.station_id)
    if aware(row.expires_at) <= now:
        raise EnrollmentTokenError("expired", row.station_id)
    return row


def spend(session: Session, enrollment_id: int, station_id: str, now: datetime) -> None:
    """Mark a token used, in the caller's transaction. A conditional update, so of two
    enrollments racing with one token exactly one wins (the other: ``used``)."""
    result = session.exec(
        update(StationEnrollment)
        .where(
            col(StationEnrollment.id) == enrollment_id,
            col(StationEnrollment.used_at).is_(None),
        )
        .values(used_at=now)
    )
    if result.rowcount != 1:
        raise EnrollmentTokenError("used", station_id)
