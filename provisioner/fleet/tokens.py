"""Enrollment tokens of a registry (Thistle's ``Thistle-Device-Enrollment-Token``) and the
device tokens that ``POST /enroll`` hands out.

An enrollment token belongs to one registry (``projects/p/locations/l/registries/r``): every
device enrolled with it is created there. An admin makes it (``fleet token create``) with a
lifetime and a number of uses (one by default: a token per device; more for a group of
devices flashed with one configuration file, as Thistle's group enrollment does). It is shown
once; the database keeps its SHA-256 only, so a dump yields nothing usable. ``regenerate``
kills it at once and makes its successor (same registry, label and uses), for a token that
leaked or a batch of images that must stop enrolling.

A device token is the bearer credential of ``/identity``: 32 random bytes, stored as SHA-256
on the device's row.

Every way an enrollment token can be wrong (unknown, used up, expired, regenerated) gets the
same answer; ``reason`` says which for the audit trail, which keeps the first 8 hex digits of
the hash, never the token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import FieldEnrollmentToken, aware, utcnow
from provisioner.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError
from provisioner.settings import Settings

ENROLLMENT_PREFIX = "fet_"  # a token in the wrong place is recognisable at a glance
DEVICE_PREFIX = "fdt_"
MAX_TOKEN_CHARS = 200  # longer can match nothing: refused before it is hashed
MAX_LABEL_CHARS = 200
_PART = r"[A-Za-z0-9][A-Za-z0-9._+~%-]{0,254}"
REGISTRY_RE = re.compile(rf"^projects/({_PART})/locations/({_PART})/registries/({_PART})$")

REFUSED_MESSAGE = (
    "enrollment token not valid (unknown, used up, expired or regenerated): ask the fleet "
    "admin for a new one (`provisioner fleet token create`)"
)


class FleetTokenError(AuthenticationError):
    """The enrollment token cannot enroll. One message for every reason (a caller probing
    tokens learns nothing); ``reason`` (``unknown``, ``used``, ``expired``,
    ``regenerated``) and ``token_id`` are for the audit."""

    def __init__(self, reason: str, token_id: int | None = None) -> None:
        super().__init__(REFUSED_MESSAGE)
        self.reason, self.token_id = reason, token_id


@dataclass(frozen=True)
class TokenInfo:
    """An enrollment token as ``fleet token list`` shows it (never the token itself)."""

    id: int
    registry: str
    label: str | None
    uses: int
    max_uses: int
    created_by: str
    created_at: datetime
    expires_at: datetime
    state: str  # live, used, expired, regenerated
    replaced_by: int | None
    hash_prefix: str

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "registry": self.registry,
            "label": self.label,
            "uses": self.uses,
            "max_uses": self.max_uses,
            "created_by": self.created_by,
            "created_at": _ts(self.created_at),
            "expires_at": _ts(self.expires_at),
            "state": self.state,
            "replaced_by": self.replaced_by,
            "token_hash": self.hash_prefix,
        }


@dataclass(frozen=True)
class NewToken:
    """A token just made: ``token`` exists only here and with whoever it is given to."""

    token: str
    info: TokenInfo


def _ts(t: datetime) -> str:
    return aware(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_prefix(digest: str) -> str:
    """What the audit trail keeps of a token: enough to match a refusal to its
    ``fleet.token_created`` event, far too little to use."""
    return digest[:8]


def new_enrollment_token() -> str:
    return ENROLLMENT_PREFIX + secrets.token_urlsafe(32)


def new_device_token() -> str:
    return DEVICE_PREFIX + secrets.token_urlsafe(32)


def default_registry(settings: Settings) -> str:
    """The line's configured registry, as a registry path."""
    r = settings.registry
    return f"projects/{r.project}/locations/{r.location}/registries/{r.registry}"


def parse_registry(name: str) -> tuple[str, str, str]:
    """(project, location, registry) of a registry path; InvalidInputError if it is not
    one."""
    m = REGISTRY_RE.fullmatch(name)
    if m is None:
        raise InvalidInputError(
            f"registry {name!r}: expected projects/PROJECT/locations/LOCATION/registries/ID"
        )
    return m.group(1), m.group(2), m.group(3)


def check_label(label: str | None) -> str | None:
    """A label as stored: stripped, printable, at most 200 characters; empty is none."""
    if label is None:
        return None
    label = label.strip()
    if not label:
        return None
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise InvalidInputError(f"label: printable text of at most {MAX_LABEL_CHARS} characters")
    return label


def state_of(row: FieldEnrollmentToken, now: datetime) -> str:
    if row.replaced_at is not None:
        return "regenerated"
    if row.uses >= row.max_uses:
        return "used"
    if aware(row.expires_at) <= now:
        return "expired"
    return "live"


def _info(row: FieldEnrollmentToken, now: datetime) -> TokenInfo:
    assert row.id is not None
    return TokenInfo(
        id=row.id,
        registry=row.registry_name,
        label=row.label,
        uses=row.uses,
        max_uses=row.max_uses,
        created_by=row.created_by,
        created_at=aware(row.created_at),
        expires_at=aware(row.expires_at),
        state=state_of(row, now),
        replaced_by=row.replaced_by,
        hash_prefix=hash_prefix(row.token_hash),
    )


def create(
    engine: Engine,
    registry: str,
    actor: str,
    *,
    ttl: timedelta,
    max_uses: int,
    label: str | None = None,
) -> NewToken:
    """Make an enrollment token for ``registry``; audited ``fleet.token_created`` (with the
    hash prefix, never the token)."""
    parse_registry(registry)
    label = check_label(label)
    if max_uses < 1:
        raise InvalidInputError("max_uses: at least 1")
    if ttl <= timedelta(0):
        raise InvalidInputError("the token's lifetime must be positive")
    token, now = new_enrollment_token(), utcnow()
    digest = token_hash(token)
    with transaction(engine) as s:
        chain.lock_for_append(s)
        row = FieldEnrollmentToken(
            registry_name=registry,
            token_hash=digest,
            label=label,
            max_uses=max_uses,
            created_by=actor,
            created_at=now,
            expires_at=now + ttl,
        )
        s.add(row)
        s.flush()
        info = _info(row, now)
        chain.append(s, "fleet.token_created", actor=actor, payload=_event(info))
    return NewToken(token, info)


def _event(info: TokenInfo) -> dict[str, object]:
    return {
        "enrollment_id": info.id,
        "registry": info.registry,
        "label": info.label,
        "max_uses": info.max_uses,
        "expires_at": _ts(info.expires_at),
        "token_hash": info.hash_prefix,
    }


def regenerate(engine: Engine, token_id: int, actor: str, *, ttl: timedelta) -> NewToken:
    """Replace token ``token_id``: it is refused from this commit on, and its successor
    (same registry, label and uses, a fresh lifetime) is returned. Audited
    ``fleet.token_regenerated``. Regenerating a token already replaced is refused (its
    successor is the one to regenerate), so one leak never yields two live tokens."""
    token, now = new_enrollment_token(), utcnow()
    with transaction(engine) as s:
        chain.lock_for_append(s)
        old = s.get(FieldEnrollmentToken, token_id)
        if old is None:
            raise NotFoundError(f"no enrollment token {token_id} (see `fleet token list`)")
        if old.replaced_at is not None:
            raise ConflictError(
                f"enrollment token {token_id} was already regenerated as token "
                f"{old.replaced_by}: regenerate that one"
            )
        new = FieldEnrollmentToken(
            registry_name=old.registry_name,
            token_hash=token_hash(token),
            label=old.label,
            max_uses=old.max_uses,
            created_by=actor,
            created_at=now,
            expires_at=now + ttl,
        )
        s.add(new)
        s.flush()
        old.replaced_at, old.replaced_by = now, new.id
        s.add(old)
        s.flush()
        info = _info(new, now)
        chain.append(
            s,
            "fleet.token_regenerated",
            actor=actor,
            payload={**_event(info), "replaces": token_id, "old_token_hash": old.token_hash[:8]},
        )
    return NewToken(token, info)


def list_tokens(engine: Engine, registry: str | None = None) -> list[TokenInfo]:
    """Every enrollment token (dead ones too), oldest first."""
    now = utcnow()
    with Session(engine) as s:
        q = select(FieldEnrollmentToken)
        if registry is not None:
            q = q.where(FieldEnrollmentToken.registry_name == registry)
        rows = s.exec(q.order_by(col(FieldEnrollmentToken.id))).all()
        return [_info(r, now) for r in rows]


def find_usable(s: Session, digest: str, now: datetime) -> FieldEnrollmentToken:
    """The live token with this hash, or FleetTokenError with the reason. The lookup is by
    the hash (unique index): nothing secret is compared byte by byte."""
    row = s.exec(
        select(FieldEnrollmentToken).where(FieldEnrollmentToken.token_hash == digest)
    ).first()
    if row is None:
        raise FleetTokenError("unknown")
    state = state_of(row, now)
    if state != "live":
        raise FleetTokenError(state, row.id)
    return row


def spend(s: Session, token_id: int) -> None:
    """Count one use, in the caller's transaction. A conditional update, so of enrollments
    racing for a token's last use exactly one wins, and a token regenerated meanwhile
    enrolls nobody."""
    result = s.exec(
        update(FieldEnrollmentToken)
        .where(
            col(FieldEnrollmentToken.id) == token_id,
            col(FieldEnrollmentToken.uses) < col(FieldEnrollmentToken.max_uses),
            col(FieldEnrollmentToken.replaced_at).is_(None),
        )
        .values(uses=FieldEnrollmentToken.uses + 1)
    )
    if result.rowcount != 1:
        row = s.get(FieldEnrollmentToken, token_id)
        reason = "regenerated" if row is not None and row.replaced_at is not None else "used"
        raise FleetTokenError(reason, token_id)
