"""The line server's side of station identity: enrolling a station, revoking it, and the
line server's own certificate.

Enrollment (``POST /stations/enroll``): the token is checked first (cheap, and a caller
without a valid token learns nothing else), then the CSR, then that the line server has its
identity to hand out; only then is the HSM opened and, in one transaction, the token spent,
the certificate issued, the station's previous identities revoked, a fresh broker password's
hash stored and ``station.enrolled`` appended. So a failure anywhere before the commit
leaves the token usable, and a committed enrollment always has its audit event. Every
refusal is audited (``station.enroll_refused``) in its own transaction, without the token.
Then the broker's ACL is rewritten (:func:`provisioner.broker.acl.sync_acl`) so the new
password works at once and a replaced one stops working.

Revocation marks every identity of the station revoked, clears its broker password, spends
its pending tokens and re-syncs the ACL, which also closes the station's open broker
connections: a stolen station PC is cut off within seconds, and its certificate is refused
at its next signed message.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.db.models import Station, StationEnrollment, StationIdentity, utcnow
from provisioner.enrollment import certs, files, tokens
from provisioner.errors import (
    NotFoundError,
    ProvisionerError,
    ServiceUnavailableError,
)
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa

# The line server refreshes its certificate this long before it expires (`line identity`).
LINE_RENEW_BEFORE_DAYS = 30

# One HSM use at a time in this process. A PKCS#11 login belongs to the process: of two
# enrollments served at once (the API's thread pool), the first to close its CA would log
# the other's sessions out mid-signature. Enrollments are rare; waiting costs nothing.
HSM_LOCK = threading.Lock()


@dataclass(frozen=True)
class EnrollmentAnswer:
    """What an enrolled station receives (the JSON body of ``POST /stations/enroll``).
    ``broker_password`` exists only here and, from then on, on the station PC."""

    station_id: str
    certificate_pem: str
    chain_pem: str  # the current intermediate, then the root
    line_certificate_pem: str  # the line server's certificate, pinned by the station
    broker_password: str
    broker_host: str
    broker_port: int
    broker_mode: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EnrollmentAnswer:
        """The answer from the line server's JSON; anything else is a clear error."""
        fields = cls.__dataclass_fields__
        if not isinstance(data, Mapping) or not set(fields) <= set(data):
            raise ProvisionerError(
                "the line server's enrollment answer is incomplete: is --line-url the "
                "line server's API, and are both on the same provisioner version?"
            )
        values = {name: data[name] for name in fields}
        for name, value in values.items():
            want = int if name == "broker_port" else str
            if not isinstance(value, want) or isinstance(value, bool):
                raise ProvisionerError(f"the line server's enrollment answer: bad {name}")
        return cls(**values)


@dataclass(frozen=True)
class LinePaths:
    """The line server's identity files under ``settings.line_identity_dir``."""

    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / "line.key"

    @property
    def certificate(self) -> Path:
        return self.dir / "line.crt"

    @property
    def chain(self) -> Path:
        return self.dir / "ca-chain.pem"

    @classmethod
    def of(cls, settings: Settings) -> LinePaths:
        return cls(settings.line_identity_dir)


@dataclass(frozen=True)
class Revocation:
    """What ``revoke_station`` did."""

    station_id: str
    serials: list[str]  # identities revoked now (hex)
    had_broker_user: bool
    cancelled_tokens: int


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


def password_hash(password: str) -> str:
    """What Redis ACL files accept as ``#<hash>``: SHA-256 hex of the password."""
    return hashlib.sha256(password.encode()).hexdigest()


def _sync_acl(settings: Settings, engine: Engine) -> None:
    # Imported here: the broker package depends on the settings and tables, not on us.
    from provisioner.broker.acl import sync_acl

    sync_acl(settings, engine)


def _refused(
    engine: Engine,
    reason: str,
    digest: str,
    station_id: str | None,
    peer: str | None,
) -> None:
    with transaction(engine) as s:
        chain.append(
            s,
            "station.enroll_refused",
            actor=f"station:{station_id}" if station_id else "anonymous",
            station_id=station_id,
            payload={
                "reason": reason,
                "token_hash": tokens.hash_prefix(digest),
                "peer": peer,
            },
        )


def _line_certificate(settings: Settings, intermediate: x509.Certificate) -> x509.Certificate:
    """The line server's certificate, which stations pin; it must exist and come from the
    intermediate that issues the station's (so one pinned chain verifies both)."""
    paths = LinePaths.of(settings)
    if not paths.certificate.exists() or not paths.key.exists():
        raise ServiceUnavailableError(
            "the line server has no identity yet, so stations cannot enroll: the line admin "
            "runs `provisioner line identity --name HOST` (HOST: how stations reach it)"
        )
    cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
    try:
        cert.verify_directly_issued_by(intermediate)
    except (InvalidSignature, ValueError, TypeError):
        raise ServiceUnavailableError(
            f"{paths.certificate} was issued by another intermediate than the current one "
            "(the CA rotated): the line admin runs `provisioner line identity` again"
        ) from None
    return cert


def enroll_station(
    settings: Settings,
    engine: Engine,
    token: str,
    csr_pem: bytes,
    *,
    peer: str | None = None,
) -> EnrollmentAnswer:
    """Enroll the station ``token`` was made for (see the module docstring). Raises
    :class:`~provisioner.enrollment.tokens.EnrollmentTokenError` (401),
    :class:`~provisioner.enrollment.certs.BadCsrError` (422) or a service error; ``peer``
    (the caller's address) goes into refusal events."""
    from provisioner.ca.ceremony import load_ca

    digest = tokens.token_hash(token)
    now = utcnow()
    try:
        with Session(engine) as s:
            enrollment = tokens.find_usable(s, digest, now)
    except tokens.EnrollmentTokenError as exc:
        _refused(engine, exc.reason, digest, exc.station_id, peer)
        raise
    station_id = enrollment.station_id
    try:
        csr = certs.load_csr(csr_pem)
        certs.check_station_csr(csr, station_id)
    except certs.BadCsrError as exc:
        _refused(engine, f"bad CSR: {exc}", digest, station_id, peer)
        raise
    with HSM_LOCK:
        answer = _issue(settings, engine, load_ca(settings), enrollment, csr, digest, now, peer)
    _sync_acl(settings, engine)
    return answer


def _issue(
    settings: Settings,
    engine: Engine,
    ca: LoadedCa,
    enrollment: StationEnrollment,
    csr: x509.CertificateSigningRequest,
    digest: str,
    now: datetime,
    peer: str | None,
) -> EnrollmentAnswer:
    """Spend the token, issue and record, in one transaction; closes ``ca``."""
    station_id = enrollment.station_id
    assert enrollment.id is not None
    try:
        line_cert = _line_certificate(settings, ca.intermediate_cert)
        password = secrets.token_urlsafe(32)
        try:
            with transaction(engine) as s:
                chain.lock_for_append(s)
                tokens.spend(s, enrollment.id, station_id, now)
                cert = certs.build_station_certificate(
                    ca, csr, station_id, now, organization=settings.profile.organization
                )
                replaced = _revoke_identities(s, station_id, enrollment.created_by, now)
                station = s.get(Station, station_id)
                assert station is not None  # a token exists only for a station row
                station.broker_password_sha256 = password_hash(password)
                s.add(station)
                fp = fingerprint(cert)
                s.add(
                    StationIdentity(
                        fingerprint_sha256=fp,
                        station_id=station_id,
                        serial_number=_serial_hex(cert),
                        certificate_pem=_pem(cert),
                        not_after=cert.not_valid_after_utc,
                        issued_at=now,
                    )
                )
                s.flush()
                chain.append(
                    s,
                    "station.enrolled",
                    actor=f"station:{station_id}",
                    station_id=station_id,
                    payload={
                        "station": station_id,
                        "serial": _serial_hex(cert),
                        "fingerprint": fp,
                        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        "replaced": replaced,
                        "token_hash": tokens.hash_prefix(digest),
                        "peer": peer,
                    },
                )
        except tokens.EnrollmentTokenError as exc:  # another request spent it meanwhile
            _refused(engine, exc.reason, digest, station_id, peer)
            raise
        answer = EnrollmentAnswer(
            station_id=station_id,
            certificate_pem=_pem(cert),
            chain_pem=_pem(ca.intermediate_cert) + _pem(ca.root_cert),
            line_certificate_pem=_pem(line_cert),
            broker_password=password,
            broker_host=settings.broker.host,
            broker_port=settings.broker.port,
            broker_mode=settings.broker.mode,
        )
    finally:
        ca.close()
    return answer


def _revoke_identities(s: Session, station_id: str, actor: str, now: datetime) -> list[str]:
    live = s.exec(
        select(StationIdentity).where(
            StationIdentity.station_id == station_id,
            col(StationIdentity.revoked_at).is_(None),
        )
    ).all()
    for identity in live:
        identity.revoked_at, identity.revoked_by = now, actor
        s.add(identity)
    return [i.serial_number for i in live]


def revoke_station(settings: Settings, engine: Engine, station_id: str, actor: str) -> Revocation:
    """Cut a station off: every certificate of it revoked, its broker user removed (and its
    connections closed by the ACL sync), its unused enrollment tokens spent. Audited
    ``station.revoked``; safe to repeat. Enrolling it again takes a new ``station add``."""
    tokens.check_station_id(station_id)
    now = utcnow()
    with transaction(engine) as s:
        chain.lock_for_append(s)
        station = s.get(Station, station_id)
        if station is None:
            raise NotFoundError(
                f"station {station_id!r} is unknown to this line server "
                "(see `provisioner station identities`)"
            )
        serials = _revoke_identities(s, station_id, actor, now)
        had_user = station.broker_password_sha256 is not None
        station.broker_password_sha256 = None
        s.add(station)
        cancelled = tokens.cancel_pending(s, station_id, now)
        s.flush()
        chain.append(
            s,
            "station.revoked",
            actor=actor,
            station_id=station_id,
            payload={
                "station": station_id,
                "serials": serials,
                "broker_user_removed": had_user,
                "cancelled_unused": cancelled,
            },
        )
    _sync_acl(settings, engine)
    return Revocation(station_id, serials, had_user, cancelled)


def list_identities(engine: Engine, station_id: str | None = None) -> list[StationIdentity]:
    """Station certificates, by station then issue time (revoked ones included)."""
    with Session(engine) as s:
        q = select(StationIdentity)
        if station_id is not None:
            q = q.where(StationIdentity.station_id == station_id)
        q = q.order_by(col(StationIdentity.station_id), col(StationIdentity.issued_at))
        return list(s.exec(q).all())


# --- the line server's identity ---------------------------------------------------------


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    if not path.exists():
        return None
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        return None  # unreadable: replaced by a new one
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def _current(
    paths: LinePaths,
    key: ec.EllipticCurvePrivateKey | None,
    chain_pem: bytes,
    intermediate: x509.Certificate,
    names: list[str] | None,
    now: datetime,
) -> bool:
    """Whether the files already hold a line identity for this key, chain and names that
    is not about to expire."""
    if key is None or not paths.certificate.exists() or not paths.chain.exists():
        return False
    if paths.chain.read_bytes() != chain_pem:
        return False
    try:
        cert = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
        cert.verify_directly_issued_by(intermediate)
    except (InvalidSignature, ValueError, TypeError):
        return False
    if cert.public_key() != key.public_key():
        return False
    if names is not None and sorted(certs.san_names(cert)) != sorted(names):
        return False
    return (cert.not_valid_after_utc - now).days >= LINE_RENEW_BEFORE_DAYS


def init_line_identity(
    settings: Settings,
    names: Sequence[str] | None = None,
    *,
    pin_source: str | None = None,
) -> Path:
    """Make sure ``settings.line_identity_dir`` holds the line server's key (``line.key``,
    P-256, 0600, made here, a software key: it is no CA key), its certificate from the HSM
    intermediate (``line.crt``, SANs ``names``) and ``ca-chain.pem`` (intermediate, root).

    Idempotent: nothing is written while the files match the current CA chain, ``names``
    and key and the certificate has 30 days left. ``names`` empty or None: the current
    certificate's names, else localhost and 127.0.0.1. Returns the directory."""
    from provisioner.ca.ceremony import load_ca, store_of

    paths = LinePaths.of(settings)
    store = store_of(settings)
    inter, root = store.intermediate(), store.root()
    chain_pem = (_pem(inter) + _pem(root)).encode()
    wanted = [str(n.value) for n in certs.general_names(names)] if names else None
    key = _load_key(paths.key)
    now = utcnow()
    if _current(paths, key, chain_pem, inter, wanted, now):
        return paths.dir
    if wanted is None:
        wanted = list(certs.DEFAULT_LINE_NAMES)
        if paths.certificate.exists():
            try:
                old = x509.load_pem_x509_certificate(paths.certificate.read_bytes())
                wanted = certs.san_names(old) or wanted
            except ValueError:
                pass
    new_key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    with HSM_LOCK:
        ca = load_ca(settings, pin_source=pin_source)
        try:
            cert = certs.build_line_certificate(
                ca, new_key.public_key(), wanted, now, organization=settings.profile.organization
            )
            ca_chain = (_pem(ca.intermediate_cert) + _pem(ca.root_cert)).encode()
        finally:
            ca.close()
    files.ensure_dir(paths.dir)
    if key is None:
        files.write_file(
            paths.key,
            new_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            files.SECRET,
        )
    files.write_file(paths.certificate, _pem(cert).encode(), files.PUBLIC)
    files.write_file(paths.chain, ca_chain, files.PUBLIC)
    return paths.dir
