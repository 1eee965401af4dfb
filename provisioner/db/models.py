"""Tables of the product database (SQLModel).

The database, not Redis, records what happened to every chip: Redis only carries work to
the workers. A device row's ``step`` is the last step that *completed*; together with the
chip's own state it lets a re-run task resume exactly where a crash interrupted it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any

from sqlalchemy import Column, Integer, LargeBinary, UniqueConstraint
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel

# The largest id a row can have (a signed 64-bit integer in SQLite and PostgreSQL): the CLI
# and the API refuse larger ones as input errors before the database driver overflows.
MAX_ID = 2**63 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(when: datetime) -> datetime:
    """A stored time as an aware UTC datetime: SQLite hands them back naive, PostgreSQL
    aware; every stored time is UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class Step(IntEnum):
    """Completed provisioning steps of one device, in pipeline order."""

    PENDING = 0
    IDENTIFIED = 10  # serial and revision read
    KEY_GENERATED = 20  # private key created in the key slot, public key recorded
    POP_VERIFIED = 30  # the chip proved possession of the key
    CERT_ISSUED = 40  # the HSM signed the certificate (recorded by the signer)
    CERT_WRITTEN = 50  # certificate written to the chip
    CERT_VERIFIED = 60  # read back byte-exact; upload queued
    DONE = 70  # registry holds the device with this certificate


class StepType(TypeDecorator[Step]):
    """Stores a Step as its integer, so ``step < Step.CERT_VERIFIED`` is ordered in SQL."""

    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value)

    def process_result_value(self, value: Any, dialect: Any) -> Step | None:
        return None if value is None else Step(value)


class BatchState(StrEnum):
    """A batch's lifecycle (provisioner.batches): created -> running <-> paused, then one
    of the three states that end it. An ended batch never changes again."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"  # no new device starts; chips in flight finish the step they are in
    FINISHED = "finished"  # every device done
    FINISHED_WITH_FAILURES = "finished_with_failures"  # closed by an operator with failures
    CANCELLED = "cancelled"  # unstarted devices released, remaining quota released

    @property
    def ended(self) -> bool:
        return self in _ENDED


_ENDED = frozenset({BatchState.FINISHED, BatchState.FINISHED_WITH_FAILURES, BatchState.CANCELLED})


class BatchMode(StrEnum):
    """How a batch's devices get their certificate (chosen per batch, never changed)."""

    ISSUE = "issue"  # a blank chip: key generated on it, certificate issued by our CA
    # A part provisioned by its manufacturer (Trust&GO, TrustFLEX): its certificate chain is
    # verified against the configured manufacturer root and uploaded as it is.
    PREPROVISIONED = "preprovisioned"


class PartAction(StrEnum):
    """What the operator must do with the physical part of a failed device."""

    REJECT = "reject"  # put it in the reject bin (the reason says why)
    REINSERT = "reinsert"  # take it out and put it back (seating, contacts), then retry
    WAIT = "wait"  # leave it in the socket: a service is down, the device resumes by itself


class UploadState(StrEnum):
    PENDING = "pending"  # queued; a worker task is trying (with backoff)
    PARKED = "parked"  # the task gave up for now; the periodic sync / `registry sync` retries
    DONE = "done"
    CONFLICT = "conflict"  # the registry holds another certificate: a person decides


class Station(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    # The station's broker (Redis ACL) password, as SHA-256 hex: Redis ACL files accept
    # ``#<sha256>``, so the line server never keeps the password itself. None: the station
    # has not enrolled (or was revoked), and has no broker user.
    broker_password_sha256: str | None = Field(default=None, max_length=64)


class StationEnrollment(SQLModel, table=True):
    """A one-time, expiring token that lets one station PC enroll (``station add``).
    Only its SHA-256 is kept; it is spent by the first enrollment that uses it."""

    __tablename__ = "station_enrollment"

    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", index=True, max_length=64)
    token_sha256: str = Field(unique=True, max_length=64)
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class StationIdentity(SQLModel, table=True):
    """A station certificate issued by the HSM CA at enrollment (the station's key never
    leaves the station PC). Messages from a station are checked against it; a revoked one
    is refused at the next message."""

    __tablename__ = "station_identity"

    fingerprint_sha256: str = Field(primary_key=True, max_length=64)  # of the DER
    station_id: str = Field(foreign_key="station.id", index=True, max_length=64)
    serial_number: str = Field(max_length=40)  # hex
    certificate_pem: str
    not_after: datetime
    issued_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None
    revoked_by: str | None = None


class LinkNonce(SQLModel, table=True):
    """Nonces of signed station messages the line server accepted, kept until the message
    would have expired anyway: a replayed message finds its nonce here and is refused."""

    __tablename__ = "link_nonce"

    nonce: str = Field(primary_key=True, max_length=64)
    sender: str = Field(max_length=64)
    expires_at: datetime = Field(index=True)


class Batch(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    station_id: str = Field(foreign_key="station.id", index=True)
    count: int
    # Certificates this batch may consume (the order's licensed quantity); the signer
    # increments ``issued`` in the issuing transaction, conditionally, so several signer
    # processes together never exceed it.
    quota: int | None = None  # None: ``count``
    issued: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    state: BatchState = Field(default=BatchState.CREATED)
    created_by: str
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # A BatchMode's value (stored as text, as the migration made it).
    mode: str = Field(
        default=BatchMode.ISSUE.value, max_length=16, sa_column_kwargs={"server_default": "issue"}
    )
    # The kind of pre-provisioned part (``trust-and-go``, ``trustflex``): its I2C address
    # and certificate definitions; None for an ``issue`` batch.
    part: str | None = Field(default=None, max_length=32)


class Device(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("batch_id", "position"),)

    id: int | None = Field(default=None, primary_key=True)
    batch_id: int = Field(foreign_key="batch.id", index=True)
    position: int  # 0..count-1 within the batch
    step: Step = Field(
        default=Step.PENDING, sa_column=Column(StepType(), nullable=False, index=True)
    )
    socket: int | None = None
    chip_serial: str | None = Field(default=None, unique=True, max_length=18)
    revision: str | None = None
    public_key: str | None = Field(default=None, unique=True)  # hex of 04||X||Y
    error: str | None = None  # last failure; cleared when the device is retried
    # What the operator does with the part of a failed device (PartAction), with the error.
    action: str | None = Field(default=None, max_length=16)
    attempts: int = 0
    updated_at: datetime = Field(default_factory=utcnow)
    # The socket task working on the device holds it until ``claimed_until``; a second
    # message for the same device (re-dispatch after a broker restart, a retry racing a
    # redelivery) finds it claimed and leaves it alone.
    claimed_by: str | None = Field(default=None, max_length=80)
    claimed_until: datetime | None = None
    cancelled_at: datetime | None = None  # released by `batch cancel` before it started
    # The proof-of-possession challenge the line server gave the station for this device
    # (hex): the chip must sign exactly this one, once; cleared when the certificate issues.
    pop_challenge: str | None = Field(default=None, max_length=64)


class SocketState(SQLModel, table=True):
    """What one socket of a station's jig is doing now, written by the socket's worker:
    the live view of `station status`, `batch status` and the dashboard."""

    __tablename__ = "socket_state"

    station_id: str = Field(primary_key=True, max_length=64)
    socket: int = Field(primary_key=True)
    # empty (no chip, nothing to do), insert_chip (a device waits for a part), busy
    # (a step in progress), idle (a part present, nothing to do), failed (see detail)
    state: str = Field(max_length=16)
    device_id: int | None = None
    chip_serial: str | None = Field(default=None, max_length=18)
    detail: str | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class ServiceHealth(SQLModel, table=True):
    """Whether a service the line depends on answers (the signer, the registry), as the
    supervisor's health monitor last saw it. A change of state is also audited."""

    __tablename__ = "service_health"

    name: str = Field(primary_key=True, max_length=64)
    up: bool = True
    since: datetime = Field(default_factory=utcnow)
    checked_at: datetime = Field(default_factory=utcnow)
    detail: str | None = None


class Certificate(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", unique=True)
    serial_number: str = Field(unique=True)  # hex
    fingerprint_sha256: str = Field(unique=True, max_length=64)
    der: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    not_before: datetime
    not_after: datetime
    issuer_fingerprint_sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)


class FactoryCertificate(SQLModel, table=True):
    """The certificate a pre-provisioned part came with (its manufacturer issued it, not
    our CA: it is never a :class:`Certificate` row and never counts against a quota), with
    the signer certificate it was verified through. Written by the line server only after it
    verified the chain against the configured manufacturer root."""

    __tablename__ = "factory_certificate"

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", unique=True)
    kind: str = Field(max_length=16)  # tngtls | tflxtls
    serial_number: str = Field(max_length=80)  # hex, as the manufacturer chose it
    fingerprint_sha256: str = Field(unique=True, max_length=64)
    der: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    signer_der: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    root_fingerprint_sha256: str = Field(max_length=64)
    not_before: datetime
    not_after: datetime
    created_at: datetime = Field(default_factory=utcnow)


class RegistryUpload(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", unique=True)
    registry_name: str  # projects/{p}/locations/{l}/registries/{r}
    registry_device_id: str
    fingerprint_sha256: str = Field(max_length=64)
    state: UploadState = Field(default=UploadState.PENDING)
    num_id: str | None = None
    attempts: int = 0
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AuditEvent(SQLModel, table=True):
    """One event of the audit log: a link of the hash chain (``hash`` covers every other
    column and ``prev_hash``) and leaf ``seq - 1`` of the Merkle tree. Append-only: a
    trigger refuses UPDATE and DELETE (provisioner.audit.triggers)."""

    __tablename__ = "audit_event"

    seq: int = Field(primary_key=True)
    ts: str = Field(index=True)  # RFC 3339 UTC with microseconds, as hashed
    actor: str = Field(index=True)
    role: str | None = None  # the actor's role when it acted (operator, admin, station...)
    event_type: str = Field(index=True)
    station_id: str | None = Field(default=None, index=True)
    socket: int | None = None
    batch_id: int | None = Field(default=None, index=True)
    device_id: int | None = None
    chip_serial: str | None = Field(default=None, index=True)
    payload: str  # canonical JSON, as hashed
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class AuditNode(SQLModel, table=True):
    """A complete (perfect) subtree of the audit Merkle tree: ``level`` 0 are the leaf
    hashes; node (level, idx) covers leaves [idx * 2**level, (idx + 1) * 2**level). Written
    once when it becomes complete, so proofs are O(log n) lookups and appends never
    recompute the tree."""

    __tablename__ = "audit_node"

    level: int = Field(primary_key=True)
    idx: int = Field(primary_key=True)
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class AuditCheckpoint(SQLModel, table=True):
    """A C2SP tlog-checkpoint over the first ``size`` events, signed by the audit key in
    the HSM (never the CA key)."""

    __tablename__ = "audit_checkpoint"

    size: int = Field(primary_key=True)
    root_hash: str = Field(max_length=64)  # hex, as in the signed note (there base64)
    note: str  # the signed note, verbatim
    reason: str  # batch_end, events, interval, manual
    created_at: str  # RFC 3339 UTC


class UserAccount(SQLModel, table=True):
    """A person or service that acts on the system, with exactly one role."""

    __tablename__ = "user_account"

    name: str = Field(primary_key=True, max_length=64)
    role: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)
    created_by: str
    disabled: bool = False


class ApiToken(SQLModel, table=True):
    """A bearer token of a user, stored as SHA-256 of the token only (the token itself is
    shown once, at creation)."""

    __tablename__ = "api_token"

    id: int | None = Field(default=None, primary_key=True)
    user_name: str = Field(foreign_key="user_account.name", index=True)
    token_sha256: str = Field(unique=True, max_length=64)
    label: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class WebSession(SQLModel, table=True):
    """A signed-in dashboard session. The cookie holds a random id; only its SHA-256 is kept
    here, so a database dump yields no usable session. The session ends when it expires,
    when its user signs out, or at once when the token it was opened with is revoked or the
    user disabled (checked on every request)."""

    __tablename__ = "web_session"

    id_sha256: str = Field(primary_key=True, max_length=64)
    user_name: str = Field(foreign_key="user_account.name", index=True)
    token_id: int = Field(foreign_key="api_token.id")
    csrf: str = Field(max_length=64)  # sent back in every form of this session
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    flash: str | None = Field(default=None, max_length=2000)  # shown once, on the next page


class Revocation(SQLModel, table=True):
    """A revoked device certificate (one row per certificate, never updated)."""

    id: int | None = Field(default=None, primary_key=True)
    certificate_id: int = Field(foreign_key="certificate.id", unique=True)
    serial_number: str  # hex, as in certificate.serial_number
    issuer_fingerprint_sha256: str = Field(max_length=64, index=True)
    reason: str
    revoked_at: datetime = Field(default_factory=utcnow)
    actor: str


class CrlNumber(SQLModel, table=True):
    """The last CRL number issued per CA (RFC 5280: monotonically increasing)."""

    __tablename__ = "crl_number"

    ca_name: str = Field(primary_key=True, max_length=64)
    number: int = 0


class BlockState(StrEnum):
    """Where blocking a revoked device in the registry stands (provisioner.uploads.blocking)."""

    PENDING = "pending"  # to do: the block task (or the next sync) tries it, with backoff
    PARKED = "parked"  # the task gave up for now; the periodic sync / `registry sync` retries
    DONE = "done"  # the registry shows the device blocked (or holds no such device)
    SKIPPED = "skipped"  # the registry holds another certificate under the id: not ours


class RegistryBlock(SQLModel, table=True):
    """A revoked device to block in the registry: written with the revocation itself, so the
    block survives a lost Redis message and is retried until the registry shows it."""

    __tablename__ = "device_block"  # not registry_*: that prefix is the built-in registry's

    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", unique=True)
    state: BlockState = Field(default=BlockState.PENDING, index=True)
    attempts: int = 0
    error: str | None = None
    requested_by: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    blocked_at: datetime | None = None


class RefusalWindow(SQLModel, table=True):
    """The open aggregation window of one kind of refusal by one actor
    (provisioner.audit.refusals): the event that opened it is in the audit trail; this row
    counts the refusals since, until the count is carried into the trail (the next window's
    event, or a ``refusals.counted`` event when the window is closed)."""

    __tablename__ = "refusal_window"

    actor: str = Field(primary_key=True, max_length=200)
    event_type: str = Field(primary_key=True, max_length=64)
    reason: str = Field(primary_key=True, max_length=64)
    opened_ts: str = Field(index=True)  # when the window opened (RFC 3339 UTC, as ts)
    opened_seq: int  # the opening event's seq
    count: int = 1  # refusals in this window, the opening one included


class FieldEnrollmentToken(SQLModel, table=True):
    """An enrollment token of one registry (Thistle's ``Thistle-Device-Enrollment-Token``):
    made by an admin, stored only as its SHA-256, spent per enrollment up to ``max_uses``,
    dead at ``expires_at`` or as soon as it is regenerated (``replaced_at``)."""

    __tablename__ = "field_enrollment_token"

    id: int | None = Field(default=None, primary_key=True)
    registry_name: str = Field(index=True, max_length=300)  # projects/p/locations/l/registries/r
    token_hash: str = Field(unique=True, max_length=64)
    label: str | None = Field(default=None, max_length=200)
    max_uses: int = 1
    uses: int = 0
    created_by: str = Field(max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime = Field(index=True)
    replaced_at: datetime | None = None  # regenerated: refused from then on
    replaced_by: int | None = None  # the token that replaced it


class FieldDevice(SQLModel, table=True):
    """A device enrolled in the field (``POST /enroll``): its id in the registry and the
    SHA-256 of its device token (the bearer credential of ``/identity``)."""

    __tablename__ = "field_device"

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(unique=True, max_length=128)  # the registry's device id
    registry_name: str = Field(index=True, max_length=300)
    label: str | None = Field(default=None, max_length=200)
    token_hash: str = Field(unique=True, max_length=64)
    enrollment_token_id: int = Field(foreign_key="field_enrollment_token.id")
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None  # the device is deny-listed: no identity, no renewal
    revoked_by: str | None = Field(default=None, max_length=200)


class IdentityCertificate(SQLModel, table=True):
    """An identity certificate of a field device (enrollment or renewal), issued by the
    HSM intermediate. Revocation is recorded on the row (``revoked_at``/``reason``), and the
    CRLs and the OCSP responder read it beside the line's device certificates."""

    __tablename__ = "identity_certificate"

    id: int | None = Field(default=None, primary_key=True)
    field_device_id: int = Field(foreign_key="field_device.id", index=True)
    serial_number: str = Field(unique=True)  # hex, as certificate.serial_number
    fingerprint_sha256: str = Field(unique=True, max_length=64)
    der: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    not_before: datetime
    not_after: datetime
    issuer_fingerprint_sha256: str = Field(max_length=64, index=True)
    key_source: str = Field(max_length=16)  # "csr" (the device's key) or "server"
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = Field(default=None, index=True)
    reason: str | None = Field(default=None, max_length=32)  # a revocation.REASONS key
    revoked_by: str | None = Field(default=None, max_length=200)
