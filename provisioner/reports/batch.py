"""What a batch report states, gathered from the records: numbers, CA chain, manifest and the
signed checkpoint that covers the batch.

Everything here is read from the database, the CA's public files and (if given) the
manifest file; nothing is supplied by the person asking for the report, so what the audit key
signs is what the records say. The numbers are the operators' batch summary
(:func:`provisioner.batches.views.summary`), so the report and ``batch status`` never
disagree; the throughput comes from the ``device.cert_verified`` audit events, the moment a
chip's certificate was read back byte-exact.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner.audit import checkpoint as cpmod
from provisioner.batches.views import FailureGroup, summary
from provisioner.ca.ceremony import store_of
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.db.models import (
    AuditCheckpoint,
    AuditEvent,
    BatchState,
    Certificate,
    Device,
    aware,
)
from provisioner.errors import AuditError, InvalidInputError
from provisioner.reports.signing import key_fingerprint
from provisioner.settings import Settings
from provisioner.uploads import manifest as manifests

VERIFIED_EVENT = "device.cert_verified"
# Reading a batch's record must not move "the batch's last event": the report's own event
# names the batch too, and a second report would otherwise need a newer checkpoint.
_NOT_THE_BATCH = "report."
_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
# Chart buckets, finest first: the first that draws the run in at most MAX_BARS bars.
BUCKETS = (
    (60, "minute"),
    (300, "5 minutes"),
    (900, "15 minutes"),
    (3600, "hour"),
    (6 * 3600, "6 hours"),
    (86400, "day"),
)
MAX_BARS = 60


@dataclass(frozen=True)
class CertInfo:
    """One certificate of the CA chain, as an auditor compares it."""

    role: str  # "root" or "intermediate"
    subject: str
    issuer: str
    serial_hex: str
    not_before: datetime
    not_after: datetime
    sha256: str
    pem: str


@dataclass(frozen=True)
class MissingIssuer:
    """An intermediate the records name (by SHA-256) but whose certificate is not on file."""

    sha256: str


@dataclass(frozen=True)
class ManifestInfo:
    name: str  # the file's name, as given
    sha256: str  # of the file's bytes
    entries: int
    signer_subject: str
    signer_sha256: str


@dataclass(frozen=True)
class CheckpointInfo:
    size: int
    created_at: str
    reason: str
    root_hash: str  # hex
    note: str  # the signed note, verbatim


@dataclass(frozen=True)
class Throughput:
    """Devices verified on their chip per bucket, from ``start``."""

    bucket_s: int
    bucket_name: str
    start: datetime | None
    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)


@dataclass(frozen=True)
class BatchFacts:
    """Everything a batch report says."""

    batch_id: int
    station_id: str
    state: str
    count: int
    done: int
    failed: int
    cancelled: int
    revoked: int
    verified: int  # certificate on the chip, read back (done or waiting for the registry)
    quota: int
    issued: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    failures: tuple[FailureGroup, ...]
    throughput: Throughput
    chain: tuple[CertInfo, ...]
    missing_issuers: tuple[MissingIssuer, ...]
    manifest: ManifestInfo | None
    last_event_seq: int | None
    checkpoint: CheckpointInfo | None
    origin: str
    audit_key_sha256: str | None
    generated_at: datetime
    generated_by: str

    @property
    def ended(self) -> bool:
        return BatchState(self.state).ended

    @property
    def worked_on(self) -> int:
        """Devices the line was asked to provision: all but those released by a cancel."""
        return self.count - self.cancelled

    @property
    def yield_percent(self) -> float | None:
        """Done devices out of those worked on; None when none were."""
        return 100 * self.done / self.worked_on if self.worked_on else None


def collect(
    engine: Engine,
    settings: Settings,
    batch_id: int,
    *,
    generated_by: str,
    audit_key: ec.EllipticCurvePublicKey | None,
    manifest_file: Path | None = None,
    now: datetime | None = None,
) -> BatchFacts:
    """The facts of batch ``batch_id`` (NotFoundError if it does not exist).

    ``audit_key``: the key the report is signed with; the covering checkpoint must verify
    with it (else AuditError: the log or the key is wrong, and the report says neither)."""
    rep = summary(engine, batch_id, live=False)
    with transaction(engine) as s:
        verified_ts = s.exec(
            select(AuditEvent.ts)
            .where(AuditEvent.batch_id == batch_id, AuditEvent.event_type == VERIFIED_EVENT)
            .order_by(col(AuditEvent.seq))
        ).all()
        last_seq = s.exec(
            select(func.max(AuditEvent.seq)).where(
                AuditEvent.batch_id == batch_id,
                col(AuditEvent.event_type).not_like(_NOT_THE_BATCH + "%"),
            )
        ).one()
        cp = _covering_checkpoint(s, last_seq)
        issuers = _issuer_fingerprints(s, batch_id)
        serials = _certified_serials(s, batch_id)
    if cp is not None and audit_key is not None:
        _check_checkpoint(cp, audit_key, settings.audit.origin)
    chain, missing = _chain(settings, issuers)
    verified = sum(n for step, n in rep.steps.items() if step in ("CERT_VERIFIED", "DONE"))
    return BatchFacts(
        batch_id=batch_id,
        station_id=rep.station_id,
        state=rep.state,
        count=rep.count,
        done=rep.done,
        failed=rep.failed,
        cancelled=rep.cancelled,
        revoked=rep.revoked,
        verified=verified,
        quota=rep.quota,
        issued=rep.issued,
        created_at=aware(rep.created_at),
        started_at=aware(rep.started_at) if rep.started_at else None,
        finished_at=aware(rep.finished_at) if rep.finished_at else None,
        failures=rep.failures,
        throughput=throughput([_parse_ts(t) for t in verified_ts]),
        chain=chain,
        missing_issuers=missing,
        manifest=_manifest(settings, manifest_file, batch_id, serials) if manifest_file else None,
        last_event_seq=last_seq,
        checkpoint=cp,
        origin=settings.audit.origin,
        audit_key_sha256=key_fingerprint(audit_key) if audit_key is not None else None,
        generated_at=now or datetime.now(UTC),
        generated_by=generated_by,
    )


def throughput(times: list[datetime]) -> Throughput:
    """Count ``times`` per bucket: the finest bucket that fits the run in MAX_BARS bars,
    aligned to whole buckets in UTC."""
    if not times:
        return Throughput(BUCKETS[0][0], BUCKETS[0][1], None, ())
    first, last = int(min(times).timestamp()), int(max(times).timestamp())
    size, name = next(
        ((s, n) for s, n in BUCKETS if last // s - first // s + 1 <= MAX_BARS), BUCKETS[-1]
    )
    counts = [0] * (last // size - first // size + 1)
    for t in times:
        counts[int(t.timestamp()) // size - first // size] += 1
    start = datetime.fromtimestamp(first // size * size, UTC)
    return Throughput(size, name, start, tuple(counts))


def _parse_ts(ts: str) -> datetime:
    return datetime.strptime(ts, _TS_FORMAT).replace(tzinfo=UTC)


def _covering_checkpoint(s: Session, last_seq: int | None) -> CheckpointInfo | None:
    """The smallest signed checkpoint whose tree holds event ``last_seq``."""
    if last_seq is None:
        return None
    row = s.exec(
        select(AuditCheckpoint)
        .where(col(AuditCheckpoint.size) >= last_seq)
        .order_by(col(AuditCheckpoint.size))
        .limit(1)
    ).first()
    if row is None:
        return None
    return CheckpointInfo(row.size, row.created_at, row.reason, row.root_hash, row.note)


def _check_checkpoint(cp: CheckpointInfo, key: ec.EllipticCurvePublicKey, origin: str) -> None:
    """The stored checkpoint must be what the key signed: a report must not vouch for a
    checkpoint that does not verify."""
    try:
        opened = cpmod.open_signed(cp.note, origin, key, origin)
    except AuditError as exc:
        raise AuditError(
            f"the checkpoint at size {cp.size} does not verify with the audit key ({exc}): "
            "no report is signed over it; run `provisioner audit verify` and raise an incident"
        ) from None
    if opened.size != cp.size or opened.root.hex() != cp.root_hash:
        raise AuditError(
            f"the stored checkpoint row at size {cp.size} does not match its signed note: "
            "run `provisioner audit verify` and raise an incident"
        )


def _issuer_fingerprints(s: Session, batch_id: int) -> list[str]:
    rows = s.exec(
        select(Certificate.issuer_fingerprint_sha256)
        .join(Device, col(Device.id) == Certificate.device_id)
        .where(Device.batch_id == batch_id)
        .distinct()
    ).all()
    return sorted(rows)


def _certified_serials(s: Session, batch_id: int) -> set[str]:
    rows = s.exec(
        select(Device.chip_serial)
        .join(Certificate, col(Certificate.device_id) == Device.id)
        .where(Device.batch_id == batch_id)
    ).all()
    return {r.lower() for r in rows if r}


def _cert_info(role: str, cert: x509.Certificate) -> CertInfo:
    return CertInfo(
        role=role,
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        serial_hex=format(cert.serial_number, "X"),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sha256=fingerprint(cert),
        pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )


def _chain(
    settings: Settings, issuers: list[str]
) -> tuple[tuple[CertInfo, ...], tuple[MissingIssuer, ...]]:
    """The root, then each intermediate that issued a certificate of the batch."""
    store = store_of(settings)
    known = {fingerprint(c): c for c in store.intermediates().values()}
    if store.intermediate_pem.exists():
        current = store.intermediate()
        known[fingerprint(current)] = current
    chain: list[CertInfo] = []
    if store.root_pem.exists():
        chain.append(_cert_info("root", store.root()))
    missing: list[MissingIssuer] = []
    for fp in issuers:
        cert = known.get(fp)
        if cert is None:
            missing.append(MissingIssuer(fp))
        else:
            chain.append(_cert_info("intermediate", cert))
    return tuple(chain), tuple(missing)


def _manifest(settings: Settings, path: Path, batch_id: int, serials: set[str]) -> ManifestInfo:
    """The manifest file's fingerprint, once it is known to be this batch's, signed by the
    manifest key: a report must not vouch for another batch's (or a forged) manifest."""
    signer_path = manifests.signer_file(settings)
    try:
        data = path.read_bytes()
        signer = x509.load_pem_x509_certificate(signer_path.read_bytes())
    except OSError as exc:
        raise InvalidInputError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError:
        raise InvalidInputError(f"{signer_path} is not a PEM certificate") from None
    try:
        entries = manifests.verify_entries(json.loads(data), signer)
    except (ValueError, manifests.ManifestError) as exc:
        raise InvalidInputError(f"{path} is not a manifest that verifies: {exc}") from None
    ids = {e.unique_id.lower() for e in entries}
    if ids != serials:
        raise InvalidInputError(
            f"{path} is not the manifest of batch {batch_id}: it lists {len(ids)} chips, "
            f"{len(ids & serials)} of the batch's {len(serials)} certified chips"
        )
    return ManifestInfo(
        name=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        entries=len(entries),
        signer_subject=signer.subject.rfc4514_string(),
        signer_sha256=fingerprint(signer),
    )


def run_time(facts: BatchFacts) -> timedelta | None:
    """How long the batch ran (start to end), for the report's summary line."""
    if facts.started_at is None or facts.finished_at is None:
        return None
    return facts.finished_at - facts.started_at
