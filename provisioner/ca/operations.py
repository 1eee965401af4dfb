"""The CA changes an admin makes, as one call each for every front end (the CLI's ``ca
rotate`` / ``ca revoke`` and the dashboard's CA page), and the CRLs' public status.

Each call opens the factory token only for as long as it needs it, under the process's one
HSM lock (:data:`provisioner.enrollment.service.HSM_LOCK`): in the API process a second
PKCS#11 login would share, and on close end, an enrollment's. PINs come from the configured
PIN source (a file), never from the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import chain
from provisioner.ca import revocation
from provisioner.ca.ceremony import CaInfo
from provisioner.db.engine import transaction
from provisioner.db.models import Batch, BatchState
from provisioner.enrollment.service import HSM_LOCK
from provisioner.errors import ConflictError
from provisioner.settings import Settings


def refuse_if_running(engine: Engine) -> None:
    """A batch under way (running or paused) holds devices whose certificate must be
    written with the intermediate that issued it; an ended batch never blocks a rotation."""
    with Session(engine) as s:
        open_ = s.exec(
            select(Batch.id, Batch.state)
            .where(col(Batch.state).in_([BatchState.RUNNING, BatchState.PAUSED]))
            .order_by(col(Batch.id))
        ).all()
    if open_:
        first = open_[0][0]
        names = ", ".join(f"{i} ({BatchState(st).value})" for i, st in open_)
        raise ConflictError(
            f"batch(es) {names} under way: a device issued under the old intermediate must be "
            f"written with it; let them finish, or end them with `provisioner batch close "
            f"{first}` (failed devices) or `provisioner batch cancel {first}`, then rotate"
        )


def running_batches(engine: Engine) -> list[int]:
    """Ids of the batches that would refuse a rotation (for a confirmation page)."""
    with Session(engine) as s:
        return [
            int(i)
            for i in s.exec(
                select(Batch.id).where(
                    col(Batch.state).in_([BatchState.RUNNING, BatchState.PAUSED])
                )
            ).all()
            if i is not None
        ]


def rotate(settings: Settings, engine: Engine, actor: str, pin_source: str | None = None) -> CaInfo:
    """``ca rotate``: refused while a batch is under way; a new intermediate, audited."""
    from provisioner.ca.ceremony import rotate as rotate_ca

    refuse_if_running(engine)
    with HSM_LOCK:
        info = rotate_ca(settings, pin_source)
    with transaction(engine) as s:
        chain.append(
            s,
            "ca.rotated",
            actor=actor,
            payload={
                "key": info.intermediate_name,
                "intermediate_fingerprint_sha256": info.intermediate_fingerprint_sha256,
            },
        )
    return info


@dataclass(frozen=True)
class BlockOutcome:
    state: str | None
    queued: bool
    detail: str


def queue_block(
    settings: Settings, done: revocation.Revoked, redis_up: bool = True
) -> BlockOutcome:
    """Queue the registry block the revocation recorded (uploads.blocking applies it);
    ``redis_up=False``: Redis is known to be down, leave the block to the sync."""
    from provisioner.dispatch import send_block

    state = done.registry_block
    queued = False
    if state == "done":
        detail = "the device is blocked"
    elif state == "skipped":
        detail = "not blocked: the registry holds another certificate under its id"
    else:
        assert done.device_id is not None
        queued = redis_up and send_block(settings, done.device_id)
        detail = (
            "block queued for the registry worker"
            if queued
            else "block recorded; Redis is down, so the registry worker's periodic sync "
            "(or `provisioner registry sync`) will apply it"
        )
    return BlockOutcome(state, queued, detail)


def publish_crls(
    settings: Settings, engine: Engine, actor: str, pin_source: str | None = None
) -> list[revocation.PublishedCrl]:
    """Sign and publish every intermediate's CRL (``ca crl``)."""
    from provisioner.ca.ceremony import load_ca

    with HSM_LOCK:
        ca = load_ca(settings, pin_source=pin_source)
        try:
            return revocation.publish(settings, engine, ca, actor)
        finally:
            ca.close()


@dataclass(frozen=True)
class RevokeOutcome:
    revoked: revocation.Revoked
    block: BlockOutcome
    crls: list[revocation.PublishedCrl]


def revoke(
    settings: Settings, engine: Engine, target: str, reason: str, actor: str
) -> RevokeOutcome:
    """``ca revoke``: record the revocation (idempotent), queue the registry block (before
    the CRLs: a PIN problem must not hold it back), publish the CRLs."""
    done = revocation.revoke(engine, target, reason, actor)
    block = queue_block(settings, done)
    return RevokeOutcome(done, block, publish_crls(settings, engine, actor))


@dataclass(frozen=True)
class BatchRevokeOutcome:
    revoked: list[revocation.Revoked]
    blocks: list[BlockOutcome]
    crls: list[revocation.PublishedCrl]


def revoke_batch(
    settings: Settings,
    engine: Engine,
    batch_id: int,
    reason: str,
    actor: str,
    pin_source: str | None = None,
) -> BatchRevokeOutcome:
    """``ca revoke --batch``: every certificate of the batch revoked and its registry block
    recorded (one transaction, each audited), the blocks queued for the registry worker,
    then the CRLs published once."""
    from provisioner.errors import ServiceUnavailableError
    from provisioner.preflight import check_redis

    done = revocation.revoke_batch(engine, batch_id, reason, actor)
    try:  # once for the batch: a Redis that is down takes seconds to say so
        check_redis(settings)
        redis_up = True
    except ServiceUnavailableError:
        redis_up = False
    blocks = [queue_block(settings, d, redis_up) for d in done]
    return BatchRevokeOutcome(done, blocks, publish_crls(settings, engine, actor, pin_source))


@dataclass(frozen=True)
class CrlStatus:
    """A published CRL as relying parties see it (read from its file: public data)."""

    name: str
    url: str
    number: int | None
    this_update: datetime | None
    next_update: datetime | None
    entries: int
    path: Path
    error: str | None = None


def crl_statuses(settings: Settings) -> list[CrlStatus]:
    """Every CRL file under ``<var>/ca/crl`` (one per intermediate), parsed."""
    out = []
    for path in sorted((settings.ca_dir / "crl").glob("*.crl")):
        name = path.name.removesuffix(".crl")
        url = settings.api.crl_url(name)
        try:
            crl = x509.load_der_x509_crl(path.read_bytes())
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except (OSError, ValueError, x509.ExtensionNotFound) as exc:
            out.append(CrlStatus(name, url, None, None, None, 0, path, f"unreadable: {exc}"))
            continue
        out.append(
            CrlStatus(name, url, number, crl.last_update_utc, crl.next_update_utc, len(crl), path)
        )
    return out


@dataclass(frozen=True)
class RevokeTarget:
    """What ``revoke(target)`` would act on, shown before an admin confirms."""

    device_id: int
    chip_serial: str | None
    batch_id: int
    serial_number: str
    fingerprint_sha256: str
    already_revoked: bool


def revoke_target(engine: Engine, target: str) -> RevokeTarget:
    """The certificate ``target`` names (as ``ca revoke`` reads it), or NotFoundError."""
    from provisioner.db.models import Revocation

    with Session(engine) as s:
        cert, dev = revocation.find_certificate(s, target)  # how `ca revoke` reads it
        assert dev.id is not None
        already = (
            s.exec(select(Revocation).where(Revocation.certificate_id == cert.id)).first()
            is not None
        )
    return RevokeTarget(
        dev.id, dev.chip_serial, dev.batch_id, cert.serial_number, cert.fingerprint_sha256, already
    )
