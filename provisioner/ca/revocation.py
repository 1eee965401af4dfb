"""Revoking device certificates and publishing CRLs signed in the token.

A revocation also records the device's registry block in the same transaction
(:mod:`provisioner.uploads.blocking`): the CRL tells relying parties, the block tells the
registry that receives the device's connections.

One CRL per intermediate, named like the intermediate (its key label), so a certificate's
CRL distribution point stays valid across rotations: ``<var>/ca/crl/<name>.crl`` (DER),
served by the API at ``/crl/<name>.crl``. Each CRL carries a CRL number that only grows
(RFC 5280 5.2.3), the issuer's key identifier, and per entry its reason (none for
"unspecified", as RFC 5280 recommends). It is verified with the intermediate's key before
it is written, and written atomically: the API never serves half a file.

What a CRL lists comes from :func:`provisioner.ca.status.revoked_entries` only (line
devices, field identities, stations), the same reader the OCSP responder uses. The root's
own CRL is :mod:`provisioner.ca.root_crl`; the schedule that re-signs them all is
:mod:`provisioner.ca.crl_schedule`.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from sqlalchemy import ColumnElement
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hsm.signer import HsmEcPrivateKey
from provisioner.audit import chain
from provisioner.ca.ceremony import LoadedCa, store_of
from provisioner.ca.status import RevokedEntry, revoked_entries
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Certificate,
    CrlNumber,
    Device,
    RegistryBlock,
    RegistryUpload,
    Revocation,
)
from provisioner.errors import ConflictError, HsmError, InvalidInputError, NotFoundError
from provisioner.ledger import registry_device_id
from provisioner.settings import Settings

REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key_compromise": x509.ReasonFlags.key_compromise,
    "affiliation_changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation_of_operation": x509.ReasonFlags.cessation_of_operation,
    "certificate_hold": x509.ReasonFlags.certificate_hold,
    "privilege_withdrawn": x509.ReasonFlags.privilege_withdrawn,
}
NEXT_UPDATE = timedelta(days=7)
_CHIP_SERIAL = re.compile(r"^[0-9A-Fa-f]{18}$")


@dataclass(frozen=True)
class Revoked:
    """What ``ca revoke`` did."""

    serial_number: str
    fingerprint_sha256: str
    chip_serial: str | None
    reason: str
    already: bool  # it was revoked before: nothing changed
    device_id: int | None = None
    registry_block: str | None = None  # BlockState of the device's registry block


@dataclass(frozen=True)
class PublishedCrl:
    name: str
    path: Path
    number: int
    entries: int
    next_update: datetime
    sha256: str


def find_certificate(s: Session, target: str) -> tuple[Certificate, Device]:
    """A certificate by device id, chip serial (18 hex) or certificate serial (hex), tried
    in that order: the first reading that names a certificate wins."""
    t = target.strip()
    hex_serial = t.lower().removeprefix("0x").replace(":", "").lstrip("0")
    candidates: list[ColumnElement[bool]] = []
    if t.isdigit():
        candidates.append(col(Device.id) == int(t))
    if _CHIP_SERIAL.match(t):
        candidates.append(col(Device.chip_serial) == t.upper())
    if hex_serial and all(c in "0123456789abcdef" for c in hex_serial):
        candidates.append(col(Certificate.serial_number) == hex_serial)
    for where in candidates:
        row = s.exec(
            select(Certificate, Device)
            .join(Device, col(Device.id) == Certificate.device_id)
            .where(where)
        ).first()
        if row is not None:
            return row
    raise NotFoundError(
        f"no certificate for {target!r}: give a device id (see `provisioner batch status`),"
        " a chip serial (18 hex digits) or a certificate serial number (hex)"
    )


def _check_reason(reason: str) -> None:
    if reason not in REASONS:
        raise InvalidInputError(
            f"unknown revocation reason {reason!r}; one of: {', '.join(REASONS)}"
        )


def revoke(engine: Engine, target: str, reason: str, actor: str) -> Revoked:
    """Record the revocation (idempotent) and its audit event in one transaction."""
    _check_reason(reason)
    with transaction(engine) as s:
        cert, dev = find_certificate(s, target)
        return _revoke_one(s, cert, dev, reason, actor)


def revoke_batch(engine: Engine, batch_id: int, reason: str, actor: str) -> list[Revoked]:
    """Revoke every certificate batch ``batch_id`` issued, in one transaction: each one
    audited and its device's registry block recorded, as ``revoke`` does one by one, plus
    one ``ca.batch_revoked`` event. Idempotent (already revoked ones are reported as such).

    Refused while the batch is under way: a device issued after the revocation would
    escape it; pause is not enough, end it first (``batch cancel`` / ``batch close``)."""
    _check_reason(reason)
    with transaction(engine) as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise NotFoundError(f"no batch {batch_id} (see `provisioner batch list`)")
        if batch.state in (BatchState.RUNNING, BatchState.PAUSED, BatchState.CREATED):
            raise ConflictError(
                f"batch {batch_id} is {BatchState(batch.state).value}: it may still issue "
                f"certificates; end it first (`provisioner batch cancel {batch_id}` or "
                f"`provisioner batch close {batch_id}`), then revoke it"
            )
        rows = s.exec(
            select(Certificate, Device)
            .join(Device, col(Device.id) == Certificate.device_id)
            .where(Device.batch_id == batch_id)
            .order_by(col(Device.position))
        ).all()
        done = [_revoke_one(s, cert, dev, reason, actor) for cert, dev in rows]
        chain.append(
            s,
            "ca.batch_revoked",
            actor=actor,
            batch_id=batch_id,
            payload={
                "reason": reason,
                "certificates": len(done),
                "newly_revoked": sum(not d.already for d in done),
            },
        )
    return done


def _revoke_one(s: Session, cert: Certificate, dev: Device, reason: str, actor: str) -> Revoked:
    """One certificate's revocation, audit event and registry block in ``s``."""
    assert cert.id is not None
    existing = s.exec(select(Revocation).where(Revocation.certificate_id == cert.id)).first()
    if existing is not None:
        # A revocation recorded before registry blocks existed gets its block now.
        block = request_block(s, dev, actor)
        return Revoked(
            cert.serial_number,
            cert.fingerprint_sha256,
            dev.chip_serial,
            existing.reason,
            True,
            dev.id,
            block.state.value,
        )
    s.add(
        Revocation(
            certificate_id=cert.id,
            serial_number=cert.serial_number,
            issuer_fingerprint_sha256=cert.issuer_fingerprint_sha256,
            reason=reason,
            actor=actor,
        )
    )
    chain.append(
        s,
        "ca.certificate_revoked",
        actor=actor,
        batch_id=dev.batch_id,
        device_id=dev.id,
        chip_serial=dev.chip_serial,
        payload={
            "serial_number": cert.serial_number,
            "fingerprint_sha256": cert.fingerprint_sha256,
            "reason": reason,
        },
    )
    # The registry must stop accepting the device too: its block is recorded with the
    # revocation, so it is carried out even if no message ever reaches a worker.
    block_state = request_block(s, dev, actor).state.value
    return Revoked(
        cert.serial_number,
        cert.fingerprint_sha256,
        dev.chip_serial,
        reason,
        False,
        dev.id,
        block_state,
    )


def _entry(e: RevokedEntry) -> x509.RevokedCertificate:
    entry = (
        x509.RevokedCertificateBuilder()
        .serial_number(int(e.serial_number, 16))
        .revocation_date(e.revoked_at.replace(microsecond=0))
    )
    if e.reason != "unspecified":
        entry = entry.add_extension(x509.CRLReason(REASONS[e.reason]), critical=False)
    return entry.build()


def sign_crl(
    s: Session,
    name: str,
    issuer: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    now: datetime,
    entries: list[RevokedEntry],
    next_update: timedelta,
) -> x509.CertificateRevocationList:
    """CRL number ``name``'s next (claimed in ``s``) over ``entries``, signed by ``key`` and
    checked against ``issuer``'s public key before anyone sees it."""
    state = s.get(CrlNumber, name)
    if state is None:
        state = CrlNumber(ca_name=name, number=0)
    state.number += 1
    s.add(state)
    this_update = now.replace(microsecond=0)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(this_update)
        .next_update(this_update + next_update)
        .add_extension(x509.CRLNumber(state.number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    for e in entries:
        builder = builder.add_revoked_certificate(_entry(e))
    crl = builder.sign(key, hashes.SHA256())
    pub = issuer.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    try:
        pub.verify(crl.signature, crl.tbs_certlist_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise HsmError(f"the CRL of {name!r} does not verify with its key: not published") from None
    return crl


def build_crl(
    s: Session,
    name: str,
    issuer: x509.Certificate,
    key: HsmEcPrivateKey | ec.EllipticCurvePrivateKey,
    now: datetime,
    next_update: timedelta = NEXT_UPDATE,
) -> x509.CertificateRevocationList:
    """The next CRL of intermediate ``name`` (claims the next CRL number in ``s``): every
    certificate :func:`provisioner.ca.status.revoked_entries` reports for it."""
    entries = revoked_entries(s, fingerprint(issuer), issuer)
    return sign_crl(s, name, issuer, key, now, entries, next_update)


def crl_path(settings: Settings, name: str) -> Path:
    return settings.ca_dir / "crl" / f"{name}.crl"


def write_crl(
    s: Session,
    settings: Settings,
    name: str,
    crl: x509.CertificateRevocationList,
    actor: str,
    event: str = "ca.crl_published",
) -> tuple[Path, PublishedCrl]:
    """Stage ``crl`` next to its file and audit it in ``s``; the caller renames the staged
    file into place after the commit (so a served CRL's number is never reused)."""
    der = crl.public_bytes(serialization.Encoding.DER)
    path = crl_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(der)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    sha = hashlib.sha256(der).hexdigest()
    chain.append(
        s,
        event,
        actor=actor,
        payload={"ca": name, "crl_number": number, "entries": len(crl), "sha256": sha},
    )
    next_update = crl.next_update_utc
    assert next_update is not None
    return tmp, PublishedCrl(name, path, number, len(crl), next_update, sha)


def publish(settings: Settings, engine: Engine, ca: LoadedCa, actor: str) -> list[PublishedCrl]:
    """Sign and write the CRL of every intermediate whose key is in the token: the current
    one and those a rotation left (their certificates are still out there)."""
    store = store_of(settings)
    issuers = store.intermediates() or {ca.name: ca.intermediate_cert}
    out = []
    now = datetime.now(UTC)
    next_update = timedelta(days=settings.crl.next_update_days)
    for name, cert in issuers.items():
        key = ca.key if name == ca.name else HsmEcPrivateKey(ca.pool, name)
        with transaction(engine) as s:
            crl = build_crl(s, name, cert, key, now, next_update)
            tmp, published = write_crl(s, settings, name, crl, actor)
        os.replace(tmp, published.path)  # after the commit
        out.append(published)
    return out


def request_block(s: Session, dev: Device, actor: str) -> RegistryBlock:
    """The device's block, created in the caller's (the revocation's) transaction if it has
    none yet, with its ``registry.block_requested`` event. Idempotent: an existing block is
    returned as it is (a revocation recorded before blocks existed gets one now)."""
    assert dev.id is not None
    existing = s.exec(select(RegistryBlock).where(RegistryBlock.device_id == dev.id)).first()
    if existing is not None:
        return existing
    block = RegistryBlock(device_id=dev.id, requested_by=actor)
    s.add(block)
    up = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == dev.id)).first()
    chain.append(
        s,
        "registry.block_requested",
        actor=actor,
        batch_id=dev.batch_id,
        device_id=dev.id,
        chip_serial=dev.chip_serial,
        payload={
            "registry_device_id": up.registry_device_id
            if up is not None
            else registry_device_id(dev.chip_serial or ""),
            "upload": up.state.value if up is not None else "none",
        },
    )
    return block
