"""Enrollment in the field (issue 17).

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01

Three new tables: the registries' enrollment tokens, the devices enrolled with them and
their identity certificates; nothing existing is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_S = sa.String


def upgrade() -> None:
    op.create_table(
        "field_enrollment_token",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("registry_name", _S(length=300), nullable=False),
        sa.Column("token_hash", _S(length=64), nullable=False),
        sa.Column("label", _S(length=200), nullable=True),
        sa.Column("max_uses", sa.Integer(), nullable=False),
        sa.Column("uses", sa.Integer(), nullable=False),
        sa.Column("created_by", _S(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replaced_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("replaced_by", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index(
        "ix_field_enrollment_token_registry_name", "field_enrollment_token", ["registry_name"]
    )
    op.create_index(
        "ix_field_enrollment_token_expires_at", "field_enrollment_token", ["expires_at"]
    )
    op.create_table(
        "field_device",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", _S(length=128), nullable=False),
        sa.Column("registry_name", _S(length=300), nullable=False),
        sa.Column("label", _S(length=200), nullable=True),
        sa.Column("token_hash", _S(length=64), nullable=False),
        sa.Column("enrollment_token_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", _S(length=200), nullable=True),
        sa.ForeignKeyConstraint(["enrollment_token_id"], ["field_enrollment_token.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_field_device_registry_name", "field_device", ["registry_name"])
    op.create_table(
        "identity_certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("field_device_id", sa.Integer(), nullable=False),
        sa.Column("serial_number", _S(), nullable=False),
        sa.Column("fingerprint_sha256", _S(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issuer_fingerprint_sha256", _S(length=64), nullable=False),
        sa.Column("key_source", _S(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", _S(length=32), nullable=True),
        sa.Column("revoked_by", _S(length=200), nullable=True),
        sa.ForeignKeyConstraint(["field_device_id"], ["field_device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint_sha256"),
        sa.UniqueConstraint("serial_number"),
    )
    op.create_index(
        "ix_identity_certificate_field_device_id", "identity_certificate", ["field_device_id"]
    )
    op.create_index(
        "ix_identity_certificate_issuer_fingerprint_sha256",
        "identity_certificate",
        ["issuer_fingerprint_sha256"],
    )
    op.create_index("ix_identity_certificate_revoked_at", "identity_certificate", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("identity_certificate")
    op.drop_table("field_device")
    op.drop_table("field_enrollment_token")
