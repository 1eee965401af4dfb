"""Field enrollment: enroll with an enrollment token, get an identity, renew it over mTLS,
and revoke a device.

Order of work, so that nothing is half-written:

- ``enroll``: the token is checked first (a caller without a valid one learns nothing
  else); then, in one transaction, a use of the token spent (conditional update: the last
  use goes to one caller only), the device recorded with its device token's hash and
  ``fleet.enrolled`` appended. No registry call: the device enters the registry with its
  first certificate.
- ``issue_identity`` / ``renew``: the caller is checked (device token, or the client
  certificate), the key (the CSR's, with its proof of possession, or a fresh one), then the
  certificate is signed in the token, recorded and audited (``fleet.identity_issued``) in one
  transaction *before* the registry hears of it: every certificate the CA signs is on
  record. Then the registry gets it as the device's only credential (created, or its
  credentials replaced). If the registry cannot be reached or refuses, the new certificate
  is withdrawn (revoked, reason ``superseded``, ``fleet.identity_withdrawn``), never handed
  out, and the caller gets a 503 to retry; a renewal leaves the old certificate valid.
  Only when the registry holds the new one is the renewed certificate revoked
  (``superseded``, ``fleet.renewed``).
- ``revoke_device``: the device and every live certificate of it revoked in one
  transaction (``fleet.device_revoked``), then the registry device blocked (the bridges
  refuse it and cut its sessions), then the CRLs published. The revocation stands even if
  the registry or the HSM is down then; running it again retries the rest.

Every refusal is audited (``fleet.enroll_refused``, ``fleet.identity_refused``,
``fleet.renew_refused``) through :mod:`provisioner.audit.refusals` (one event per actor and
reason per minute, the rest counted), without the token: a hash prefix only.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain, refusals
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.db.models import FieldDevice, IdentityCertificate, aware, utcnow
from provisioner.enrollment.certs import BadCsrError
from provisioner.enrollment.service import HSM_LOCK
from provisioner.errors import (
    AuthenticationError,
    ConfigError,
    ConflictError,
    HsmError,
    InvalidInputError,
    NotFoundError,
    PolicyViolationError,
    ProvisionerError,
    RegistryError,
    ServiceUnavailableError,
)
from provisioner.fleet import identity, tokens
from provisioner.settings import Settings

if TYPE_CHECKING:
    from provisioner.ca.ceremony import LoadedCa
    from provisioner.uploads.client import CloudIotRegistry

# Opens the CA for one use (under HSM_LOCK) and leaves it as it found it.
CaSource = Callable[[], AbstractContextManager["LoadedCa"]]


# --- refusals ---------------------------------------------------------------------------


class DeviceTokenError(AuthenticationError):
    """The device token is unknown (or missing)."""

    reason = "unknown_device_token"

    def __init__(self) -> None:
        super().__init__(
            "device token not valid: send Authorization: Bearer <device_token> as POST "
            "/enroll answered it"
        )


class DeviceRevokedError(PolicyViolationError):
    reason = "device_revoked"

    def __init__(self, device_id: str) -> None:
        super().__init__(f"device {device_id} is revoked: it gets no certificate")


class ServerKeysDisabledError(PolicyViolationError):
    reason = "server_keys_disabled"

    def __init__(self) -> None:
        super().__init__(
            "this server does not generate device keys (fleet.allow_server_keys = false): "
            "POST /identity with a CSR made on the device"
        )


class IdentityExistsError(ConflictError):
    reason = "identity_exists"

    def __init__(self, device_id: str) -> None:
        super().__init__(
            f"device {device_id} already has its identity certificate: renew it over mTLS "
            "(POST /identity/renew); a device that lost it is revoked and enrolled again"
        )


class RenewalRefusedError(PolicyViolationError):
    """The client certificate cannot be renewed; ``reason`` says why (for the audit and
    for the HTTP status: ``no_client_certificate`` is a 401, the rest 403)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --- answers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Enrolled:
    """The answer of ``POST /enroll`` (Thistle's keys): ``device_token`` exists only here
    and, from then on, on the device."""

    device_id: str
    device_token: str
    registry: str

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_token": self.device_token,
            "registry": self.registry,
            "device_name": identity.device_name(self.registry, self.device_id),
        }


@dataclass(frozen=True)
class IdentityAnswer:
    """The answer of ``/identity`` and of a renewal. ``private_key_pem`` is set only in
    server-key mode: made for this answer, never stored or logged."""

    device_id: str
    registry: str
    certificate_pem: str
    chain_pem: str  # the issuing intermediate, then the root
    serial_number: str
    not_after: datetime
    private_key_pem: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device_id": self.device_id,
            "device_certificate_pem": self.certificate_pem,
            "ca_chain_pem": self.chain_pem,
            "registry": self.registry,
            "device_name": identity.device_name(self.registry, self.device_id),
            "serial_number": self.serial_number,
            "not_after": _ts(self.not_after),
        }
        if self.private_key_pem is not None:
            out["device_private_key_pem"] = self.private_key_pem
        return out


@dataclass(frozen=True)
class FleetRevocation:
    """What ``revoke_device`` did; ``registry_error`` / ``crl_error`` say what is left to
    retry (run it again)."""

    device_id: str
    already: bool
    serials: list[str]
    registry_blocked: bool
    registry_error: str | None
    crls: list[str]
    crl_error: str | None


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    registry: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    live_certificates: int
    not_after: datetime | None  # of the newest live certificate

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "registry": self.registry,
            "label": self.label,
            "created_at": _ts(self.created_at),
            "revoked_at": _ts(self.revoked_at) if self.revoked_at else None,
            "live_certificates": self.live_certificates,
            "not_after": _ts(self.not_after) if self.not_after else None,
        }


def _ts(t: datetime) -> str:
    return aware(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# --- the CA -----------------------------------------------------------------------------


@contextmanager
def one_shot_ca(settings: Settings) -> Iterator[LoadedCa]:
    """The CA opened for one use and closed again (commands, rare API calls)."""
    from provisioner.ca.ceremony import load_ca

    with HSM_LOCK:
        ca = load_ca(settings)
        try:
            yield ca
        finally:
            ca.close()


class CaKeeper:
    """The CA of a process that issues often (the device listener): opened at first use,
    kept open (one login per process), following rotations, reopened after a token error.
    Owned by the router that uses it; :meth:`close` on shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ca: LoadedCa | None = None

    @contextmanager
    def __call__(self) -> Iterator[LoadedCa]:
        from provisioner.ca.ceremony import load_ca

        with HSM_LOCK:
            if self._ca is None:
                self._ca = load_ca(self.settings)
            else:
                self._ca.follow(self.settings)
            try:
                yield self._ca
            except HsmError:
                self._close_locked()
                raise

    def _close_locked(self) -> None:
        if self._ca is not None:
            ca, self._ca = self._ca, None
            ca.close()

    def close(self) -> None:
        with HSM_LOCK:
            self._close_locked()


# --- the registry -----------------------------------------------------------------------


def _registry(settings: Settings, registry: str) -> CloudIotRegistry:
    """The line's registry connection (URL, upload token), pointed at ``registry``."""
    from provisioner.cloud.tokens import read_token
    from provisioner.uploads.client import CloudIotRegistry

    project, location, reg = tokens.parse_registry(registry)
    token = read_token(settings.registry_token_file)
    return CloudIotRegistry(
        settings.registry_url, project, location, reg, token, settings.registry.timeout_s
    )


def _register(settings: Settings, device: FieldDevice, certificate_pem: str) -> None:
    """Make ``certificate_pem`` the device's only credential in its registry, creating the
    device there if it is not yet."""
    from provisioner.ports import DeviceAlreadyExists
    from provisioner.uploads.client import UPLOAD_FORMAT, DeviceCredential

    reg = _registry(settings, device.registry_name)
    try:
        credential = (DeviceCredential(UPLOAD_FORMAT, certificate_pem),)
        if reg.get_device(device.device_id) is None:
            try:
                reg.create_device(device.device_id, certificate_pem)
                return
            except DeviceAlreadyExists:
                pass  # made meanwhile (a retry): its credentials are replaced below
        reg.patch_device_credentials(device.device_id, credential)
    finally:
        reg.close()


# --- audit helpers ----------------------------------------------------------------------


def _refused(
    engine: Engine,
    event_type: str,
    reason: str,
    actor: str,
    payload: dict[str, Any],
) -> None:
    with transaction(engine) as s:
        refusals.record(
            s, event_type, actor=actor, reason=reason, payload={"reason": reason, **payload}
        )


def _device_actor(device_id: str) -> str:
    return f"device:{device_id}"


# --- enroll -----------------------------------------------------------------------------


def new_device_id() -> str:
    """A registry device id: Cloud IoT wants a letter first; 64 random bits."""
    return f"fd-{secrets.token_hex(8)}"


def enroll(
    settings: Settings,
    engine: Engine,
    token: str,
    label: str | None = None,
    *,
    peer: str | None = None,
) -> Enrolled:
    """Enroll one device with enrollment token ``token`` (see the module docstring).
    Raises :class:`~provisioner.fleet.tokens.FleetTokenError` (401) or InvalidInputError
    (a bad label; the token is not spent)."""
    del settings  # the policy lives on the token; kept for a uniform signature
    token = token.strip()
    digest = tokens.token_hash(token)
    now = utcnow()
    try:
        if not token or len(token) > tokens.MAX_TOKEN_CHARS:
            raise tokens.FleetTokenError("unknown")
        with Session(engine) as s:
            row = tokens.find_usable(s, digest, now)
    except tokens.FleetTokenError as exc:
        _refused_token(engine, exc, digest, peer)
        raise
    label = tokens.check_label(label)
    assert row.id is not None
    device_id, device_token = new_device_id(), tokens.new_device_token()
    try:
        with transaction(engine) as s:
            chain.lock_for_append(s)
            tokens.spend(s, row.id)
            s.add(
                FieldDevice(
                    device_id=device_id,
                    registry_name=row.registry_name,
                    label=label,
                    token_hash=tokens.token_hash(device_token),
                    enrollment_token_id=row.id,
                    created_at=now,
                )
            )
            s.flush()
            chain.append(
                s,
                "fleet.enrolled",
                actor=_device_actor(device_id),
                payload={
                    "device": device_id,
                    "registry": row.registry_name,
                    "label": label,
                    "enrollment_id": row.id,
                    "token_hash": tokens.hash_prefix(digest),
                    "peer": peer,
                },
            )
    except tokens.FleetTokenError as exc:  # its last use went to another device meanwhile
        _refused_token(engine, exc, digest, peer)
        raise
    return Enrolled(device_id, device_token, row.registry_name)


def _refused_token(
    engine: Engine, exc: tokens.FleetTokenError, digest: str, peer: str | None
) -> None:
    actor = f"fleet-token:{exc.token_id}" if exc.token_id is not None else "anonymous"
    _refused(
        engine,
        "fleet.enroll_refused",
        exc.reason,
        actor,
        {"enrollment_id": exc.token_id, "token_hash": tokens.hash_prefix(digest), "peer": peer},
    )


# --- identity ---------------------------------------------------------------------------


def authenticate_device(engine: Engine, device_token: str, peer: str | None) -> FieldDevice:
    """The enrolled, unrevoked device whose token this is; refusals audited."""
    device_token = device_token.strip()
    digest = tokens.token_hash(device_token)
    with Session(engine) as s:
        dev = None
        if device_token and len(device_token) <= tokens.MAX_TOKEN_CHARS:
            dev = s.exec(select(FieldDevice).where(FieldDevice.token_hash == digest)).first()
    if dev is None or not hmac.compare_digest(dev.token_hash, digest):
        _refused(
            engine,
            "fleet.identity_refused",
            DeviceTokenError.reason,
            "anonymous",
            {"token_hash": tokens.hash_prefix(digest), "peer": peer},
        )
        raise DeviceTokenError()
    if dev.revoked_at is not None:
        _refused(
            engine,
            "fleet.identity_refused",
            DeviceRevokedError.reason,
            _device_actor(dev.device_id),
            {"device": dev.device_id, "peer": peer},
        )
        raise DeviceRevokedError(dev.device_id)
    return dev


def _has_live_identity(s: Session, field_device_id: int) -> bool:
    return (
        s.exec(
            select(IdentityCertificate.id).where(
                IdentityCertificate.field_device_id == field_device_id,
                col(IdentityCertificate.revoked_at).is_(None),
            )
        ).first()
        is not None
    )


def issue_identity(
    settings: Settings,
    engine: Engine,
    device_token: str,
    csr_pem: bytes | None,
    *,
    peer: str | None = None,
    ca: CaSource | None = None,
) -> IdentityAnswer:
    """The device's identity certificate: for the key of ``csr_pem`` (the default, the key
    stays on the device) or, with no CSR, for a key made here for this answer only (when
    ``fleet.allow_server_keys``). Once per device: later it renews over mTLS."""
    dev = authenticate_device(engine, device_token, peer)
    assert dev.id is not None
    key: ec.EllipticCurvePrivateKey | None = None
    try:
        if csr_pem is None:
            if not settings.fleet.allow_server_keys:
                raise ServerKeysDisabledError()
            public = None
        else:
            public = identity.csr_key(csr_pem)
        with Session(engine) as s:
            if _has_live_identity(s, dev.id):
                raise IdentityExistsError(dev.device_id)
    except (BadCsrError, ServerKeysDisabledError, IdentityExistsError) as exc:
        reason = getattr(exc, "reason", "bad_csr")
        _refused(
            engine,
            "fleet.identity_refused",
            reason,
            _device_actor(dev.device_id),
            {"device": dev.device_id, "peer": peer, "detail": str(exc)[:200]},
        )
        raise
    if public is None:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
    answer = _issue(
        settings,
        engine,
        ca or (lambda: one_shot_ca(settings)),
        dev,
        public,
        peer,
        None,
        key_source="server" if key is not None else "csr",
    )
    if key is None:
        return answer
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    del key
    return IdentityAnswer(**{**answer.__dict__, "private_key_pem": pem})


def _issue(
    settings: Settings,
    engine: Engine,
    ca_source: CaSource,
    dev: FieldDevice,
    public: ec.EllipticCurvePublicKey,
    peer: str | None,
    renews: IdentityCertificate | None,
    *,
    key_source: str,
) -> IdentityAnswer:
    """Sign, record, register; on a registry failure withdraw (module docstring)."""
    assert dev.id is not None
    now = utcnow()
    with ca_source() as ca:
        cert = identity.build_identity_certificate(
            ca, settings, public, dev.registry_name, dev.device_id, now
        )
        chain_pem = _pem(ca.intermediate_cert) + _pem(ca.root_cert)
        issuer_fp, ca_name = fingerprint(ca.intermediate_cert), ca.name
    serial, fp, cert_pem = format(cert.serial_number, "x"), fingerprint(cert), _pem(cert)
    actor = _device_actor(dev.device_id)
    try:
        with transaction(engine) as s:
            chain.lock_for_append(s)
            current = s.get(FieldDevice, dev.id)
            assert current is not None
            if current.revoked_at is not None:
                raise DeviceRevokedError(dev.device_id)
            if renews is None and _has_live_identity(s, dev.id):
                raise IdentityExistsError(dev.device_id)
            if renews is not None:
                old = s.get(IdentityCertificate, renews.id)
                if old is None or old.revoked_at is not None:
                    raise RenewalRefusedError(
                        "certificate_revoked", "the client certificate was revoked meanwhile"
                    )
            row = IdentityCertificate(
                field_device_id=dev.id,
                serial_number=serial,
                fingerprint_sha256=fp,
                der=cert.public_bytes(serialization.Encoding.DER),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                issuer_fingerprint_sha256=issuer_fp,
                key_source=key_source,
                created_at=now,
            )
            s.add(row)
            s.flush()
            row_id = row.id
            chain.append(
                s,
                "fleet.identity_issued",
                actor=actor,
                payload={
                    "device": dev.device_id,
                    "registry": dev.registry_name,
                    "serial": serial,
                    "fingerprint": fp,
                    "not_after": _ts(cert.not_valid_after_utc),
                    "key_source": key_source,
                    "ca": ca_name,
                    "renews": renews.serial_number if renews is not None else None,
                    "peer": peer,
                },
            )
    except (DeviceRevokedError, IdentityExistsError, RenewalRefusedError) as exc:
        _refused(
            engine,
            "fleet.renew_refused" if renews is not None else "fleet.identity_refused",
            exc.reason,
            actor,
            {"device": dev.device_id, "peer": peer},
        )
        raise
    try:
        _register(settings, dev, cert_pem)
    except (RegistryError, ConfigError) as exc:
        _withdraw(engine, row_id, dev.device_id, serial, str(exc))
        raise ServiceUnavailableError(
            f"device {dev.device_id}'s certificate was not handed out (withdrawn): the "
            f"registry did not take it; try again later. Registry: {exc}"
        ) from None
    if renews is not None:
        _supersede(engine, renews, dev.device_id, serial)
    return IdentityAnswer(
        device_id=dev.device_id,
        registry=dev.registry_name,
        certificate_pem=cert_pem,
        chain_pem=chain_pem,
        serial_number=serial,
        not_after=cert.not_valid_after_utc,
    )


def _withdraw(engine: Engine, row_id: int | None, device_id: str, serial: str, why: str) -> None:
    with transaction(engine) as s:
        chain.lock_for_append(s)
        row = s.get(IdentityCertificate, row_id)
        assert row is not None
        row.revoked_at, row.reason, row.revoked_by = utcnow(), "superseded", "fleet"
        s.add(row)
        s.flush()
        chain.append(
            s,
            "fleet.identity_withdrawn",
            actor=_device_actor(device_id),
            payload={"device": device_id, "serial": serial, "why": why[:300]},
        )


def _supersede(engine: Engine, old: IdentityCertificate, device_id: str, new_serial: str) -> None:
    with transaction(engine) as s:
        chain.lock_for_append(s)
        row = s.get(IdentityCertificate, old.id)
        assert row is not None
        if row.revoked_at is None:
            row.revoked_at, row.reason, row.revoked_by = (
                utcnow(),
                "superseded",
                _device_actor(device_id),
            )
            s.add(row)
            s.flush()
        chain.append(
            s,
            "fleet.renewed",
            actor=_device_actor(device_id),
            payload={"device": device_id, "superseded": old.serial_number, "serial": new_serial},
        )


# --- renewal ----------------------------------------------------------------------------


def renew(
    settings: Settings,
    engine: Engine,
    client_cert: x509.Certificate | None,
    csr_pem: bytes | None,
    *,
    peer: str | None = None,
    ca: CaSource | None = None,
    now: datetime | None = None,
) -> IdentityAnswer:
    """Renew the identity certificate the device presented in the TLS handshake (verified
    there against our CA): it must be one of ours, unrevoked, unexpired, of an unrevoked
    device, and within ``fleet.renew_window_days`` of its expiry. Same key without a CSR,
    else the CSR's (with its proof of possession)."""
    now = now or utcnow()
    actor = "anonymous"
    payload: dict[str, Any] = {"peer": peer}
    try:
        if client_cert is None:
            raise RenewalRefusedError(
                "no_client_certificate",
                "renewal needs the current identity certificate as the TLS client "
                "certificate (mTLS)",
            )
        fp = fingerprint(client_cert)
        payload["fingerprint"] = fp
        with Session(engine) as s:
            row = s.exec(
                select(IdentityCertificate).where(IdentityCertificate.fingerprint_sha256 == fp)
            ).first()
            if row is None:
                raise RenewalRefusedError(
                    "not_an_identity",
                    "the client certificate is not an identity certificate of this fleet",
                )
            dev = s.get(FieldDevice, row.field_device_id)
            assert dev is not None
        actor = _device_actor(dev.device_id)
        payload.update(device=dev.device_id, serial=row.serial_number)
        if dev.revoked_at is not None:
            raise DeviceRevokedError(dev.device_id)
        if row.revoked_at is not None:
            raise RenewalRefusedError(
                "certificate_revoked", f"certificate {row.serial_number} is revoked ({row.reason})"
            )
        not_after = aware(row.not_after)
        if not_after <= now:
            raise RenewalRefusedError("certificate_expired", "the client certificate has expired")
        opens = not_after - timedelta(days=settings.fleet.renew_window_days)
        if now < opens:
            raise RenewalRefusedError(
                "outside_renew_window",
                f"too early to renew: the renewal window opens {_ts(opens)} "
                f"({settings.fleet.renew_window_days} days before expiry)",
            )
        public = identity.csr_key(csr_pem) if csr_pem else identity.public_key_of(client_cert)
    except (RenewalRefusedError, DeviceRevokedError, BadCsrError) as exc:
        reason = getattr(exc, "reason", "bad_csr")
        _refused(
            engine, "fleet.renew_refused", reason, actor, {**payload, "detail": str(exc)[:200]}
        )
        raise
    return _issue(
        settings,
        engine,
        ca or (lambda: one_shot_ca(settings)),
        dev,
        public,
        peer,
        row,
        key_source="csr",
    )


# --- revocation and listing -------------------------------------------------------------


def revoke_device(
    settings: Settings,
    engine: Engine,
    device_id: str,
    actor: str,
    reason: str = "unspecified",
    *,
    ca: CaSource | None = None,
) -> FleetRevocation:
    """Revoke a field device (module docstring). Idempotent: a device revoked before is
    blocked and the CRLs published again."""
    from provisioner.ca.revocation import REASONS, publish

    if reason not in REASONS:
        raise InvalidInputError(f"reason {reason!r}: one of {', '.join(REASONS)}")
    now = utcnow()
    with transaction(engine) as s:
        chain.lock_for_append(s)
        dev = s.exec(select(FieldDevice).where(FieldDevice.device_id == device_id)).first()
        if dev is None:
            raise NotFoundError(f"no field device {device_id!r} (see `provisioner fleet devices`)")
        already = dev.revoked_at is not None
        if not already:
            dev.revoked_at, dev.revoked_by = now, actor
            s.add(dev)
        live = s.exec(
            select(IdentityCertificate).where(
                IdentityCertificate.field_device_id == dev.id,
                col(IdentityCertificate.revoked_at).is_(None),
            )
        ).all()
        for cert in live:
            cert.revoked_at, cert.reason, cert.revoked_by = now, reason, actor
            s.add(cert)
        serials = [c.serial_number for c in live]
        s.flush()
        chain.append(
            s,
            "fleet.device_revoked",
            actor=actor,
            payload={
                "device": device_id,
                "registry": dev.registry_name,
                "reason": reason,
                "serials": serials,
                "already": already,
            },
        )
        registry_name = dev.registry_name
    blocked, registry_error = False, None
    try:
        reg = _registry(settings, registry_name)
        try:
            blocked = reg.block_device(device_id)
        finally:
            reg.close()
        with transaction(engine) as s:
            chain.append(
                s,
                "fleet.device_blocked",
                actor=actor,
                payload={"device": device_id, "registry": registry_name, "in_registry": blocked},
            )
    except (RegistryError, ConfigError) as exc:
        registry_error = str(exc)
    crls: list[str] = []
    crl_error = None
    try:
        with (ca or (lambda: one_shot_ca(settings)))() as loaded:
            crls = [p.name for p in publish(settings, engine, loaded, actor)]
    except ProvisionerError as exc:
        crl_error = str(exc)
    return FleetRevocation(device_id, already, serials, blocked, registry_error, crls, crl_error)


def list_devices(engine: Engine, registry: str | None = None) -> list[DeviceInfo]:
    """Every field device (revoked ones too), oldest first, with its live certificates."""
    with Session(engine) as s:
        q = select(FieldDevice)
        if registry is not None:
            q = q.where(FieldDevice.registry_name == registry)
        devices = s.exec(q.order_by(col(FieldDevice.id))).all()
        live: dict[int, list[IdentityCertificate]] = {}
        for c in s.exec(
            select(IdentityCertificate).where(col(IdentityCertificate.revoked_at).is_(None))
        ).all():
            live.setdefault(c.field_device_id, []).append(c)
        out = []
        for d in devices:
            assert d.id is not None
            certs = live.get(d.id, [])
            newest = max((aware(c.not_after) for c in certs), default=None)
            out.append(
                DeviceInfo(
                    d.device_id,
                    d.registry_name,
                    d.label,
                    aware(d.created_at),
                    aware(d.revoked_at) if d.revoked_at else None,
                    len(certs),
                    newest,
                )
            )
        return out
