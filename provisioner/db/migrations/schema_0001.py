"""The schema of revision 0001, frozen: every table as ``SQLModel.metadata.create_all``
made it before migrations existed (issue 13), written out in plain SQLAlchemy so that later
changes to provisioner.db.models never change what 0001 means.

Three users: revision 0001 creates it, ``provisioner db upgrade`` completes a database made
before migrations against it (:func:`provisioner.db.migrate.upgrade`), and the tests build
such a database from it.
"""

from __future__ import annotations

import sqlalchemy as sa

METADATA = sa.MetaData()


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    # SQLModel's UTCDateTime: an aware timestamp (timestamptz on PostgreSQL).
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int | None = None, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=nullable)


def _int(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.Integer(), nullable=nullable)


sa.Table(
    "audit_checkpoint",
    METADATA,
    _int("size"),
    _str("root_hash", 64),
    _str("note"),
    _str("reason"),
    _str("created_at"),
    sa.PrimaryKeyConstraint("size"),
)

sa.Table(
    "audit_event",
    METADATA,
    _int("seq"),
    _str("ts"),
    _str("actor"),
    _str("role", nullable=True),
    _str("event_type"),
    _str("station_id", nullable=True),
    _int("socket", nullable=True),
    _int("batch_id", nullable=True),
    _int("device_id", nullable=True),
    _str("chip_serial", nullable=True),
    _str("payload"),
    _str("prev_hash", 64),
    _str("hash", 64),
    sa.PrimaryKeyConstraint("seq"),
    sa.Index("ix_audit_event_actor", "actor"),
    sa.Index("ix_audit_event_batch_id", "batch_id"),
    sa.Index("ix_audit_event_chip_serial", "chip_serial"),
    sa.Index("ix_audit_event_event_type", "event_type"),
    sa.Index("ix_audit_event_station_id", "station_id"),
    sa.Index("ix_audit_event_ts", "ts"),
)

sa.Table(
    "audit_node",
    METADATA,
    _int("level"),
    _int("idx"),
    sa.Column("hash", sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint("level", "idx"),
)

sa.Table(
    "crl_number",
    METADATA,
    _str("ca_name", 64),
    _int("number"),
    sa.PrimaryKeyConstraint("ca_name"),
)

sa.Table(
    "service_health",
    METADATA,
    _str("name", 64),
    sa.Column("up", sa.Boolean(), nullable=False),
    _ts("since"),
    _ts("checked_at"),
    _str("detail", nullable=True),
    sa.PrimaryKeyConstraint("name"),
)

sa.Table(
    "socket_state",
    METADATA,
    _str("station_id", 64),
    _int("socket"),
    _str("state", 16),
    _int("device_id", nullable=True),
    _str("chip_serial", 18, nullable=True),
    _str("detail", nullable=True),
    _ts("updated_at"),
    sa.PrimaryKeyConstraint("station_id", "socket"),
)

sa.Table(
    "station",
    METADATA,
    _str("id", 64),
    _ts("created_at"),
    sa.PrimaryKeyConstraint("id"),
)

sa.Table(
    "user_account",
    METADATA,
    _str("name", 64),
    _str("role", 16),
    _ts("created_at"),
    _str("created_by"),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.PrimaryKeyConstraint("name"),
)

sa.Table(
    "api_token",
    METADATA,
    _int("id"),
    _str("user_name"),
    _str("token_sha256", 64),
    _str("label", nullable=True),
    _ts("created_at"),
    _ts("revoked_at", nullable=True),
    sa.ForeignKeyConstraint(["user_name"], ["user_account.name"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("token_sha256"),
    sa.Index("ix_api_token_user_name", "user_name"),
)

sa.Table(
    "batch",
    METADATA,
    _int("id"),
    _str("station_id"),
    _int("count"),
    _int("quota", nullable=True),
    sa.Column("issued", sa.Integer(), server_default="0", nullable=False),
    sa.Column(
        "state",
        sa.Enum(
            "CREATED",
            "RUNNING",
            "PAUSED",
            "FINISHED",
            "FINISHED_WITH_FAILURES",
            "CANCELLED",
            name="batchstate",
        ),
        nullable=False,
    ),
    _str("created_by"),
    _ts("created_at"),
    _ts("started_at", nullable=True),
    _ts("finished_at", nullable=True),
    sa.ForeignKeyConstraint(["station_id"], ["station.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_batch_station_id", "station_id"),
)

sa.Table(
    "device",
    METADATA,
    _int("id"),
    _int("batch_id"),
    _int("position"),
    _int("step"),  # provisioner.db.models.StepType: the Step as its integer
    _int("socket", nullable=True),
    _str("chip_serial", 18, nullable=True),
    _str("revision", nullable=True),
    _str("public_key", nullable=True),
    _str("error", nullable=True),
    _str("action", 16, nullable=True),
    _int("attempts"),
    _ts("updated_at"),
    _str("claimed_by", 80, nullable=True),
    _ts("claimed_until", nullable=True),
    _ts("cancelled_at", nullable=True),
    sa.ForeignKeyConstraint(["batch_id"], ["batch.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("batch_id", "position"),
    sa.UniqueConstraint("chip_serial"),
    sa.UniqueConstraint("public_key"),
    sa.Index("ix_device_batch_id", "batch_id"),
    sa.Index("ix_device_step", "step"),
)

sa.Table(
    "certificate",
    METADATA,
    _int("id"),
    _int("device_id"),
    _str("serial_number"),
    _str("fingerprint_sha256", 64),
    sa.Column("der", sa.LargeBinary(), nullable=False),
    _ts("not_before"),
    _ts("not_after"),
    _str("issuer_fingerprint_sha256", 64),
    _ts("created_at"),
    sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("device_id"),
    sa.UniqueConstraint("fingerprint_sha256"),
    sa.UniqueConstraint("serial_number"),
)

sa.Table(
    "device_block",
    METADATA,
    _int("id"),
    _int("device_id"),
    sa.Column(
        "state",
        sa.Enum("PENDING", "PARKED", "DONE", "SKIPPED", name="blockstate"),
        nullable=False,
    ),
    _int("attempts"),
    _str("error", nullable=True),
    _str("requested_by"),
    _ts("created_at"),
    _ts("updated_at"),
    _ts("blocked_at", nullable=True),
    sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("device_id"),
    sa.Index("ix_device_block_state", "state"),
)

sa.Table(
    "registryupload",
    METADATA,
    _int("id"),
    _int("device_id"),
    _str("registry_name"),
    _str("registry_device_id"),
    _str("fingerprint_sha256", 64),
    sa.Column(
        "state",
        sa.Enum("PENDING", "PARKED", "DONE", "CONFLICT", name="uploadstate"),
        nullable=False,
    ),
    _str("num_id", nullable=True),
    _int("attempts"),
    _str("error", nullable=True),
    _ts("created_at"),
    _ts("updated_at"),
    sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("device_id"),
)

sa.Table(
    "revocation",
    METADATA,
    _int("id"),
    _int("certificate_id"),
    _str("serial_number"),
    _str("issuer_fingerprint_sha256", 64),
    _str("reason"),
    _ts("revoked_at"),
    _str("actor"),
    sa.ForeignKeyConstraint(["certificate_id"], ["certificate.id"]),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("certificate_id"),
    sa.Index("ix_revocation_issuer_fingerprint_sha256", "issuer_fingerprint_sha256"),
)
