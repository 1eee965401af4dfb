"""A real line (issue 14): station enrollment tokens, station certificates, accepted
message nonces; a station's broker password hash; a device's proof-of-possession challenge.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

Only additions: two nullable columns and three new tables, so existing rows keep their
values and nothing is rewritten (SQLite adds the columns with a plain ALTER TABLE).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("station") as batch:
        batch.add_column(sa.Column("broker_password_sha256", sa.String(64), nullable=True))
    with op.batch_alter_table("device") as batch:
        batch.add_column(sa.Column("pop_challenge", sa.String(64), nullable=True))

    op.create_table(
        "station_enrollment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["station_id"], ["station.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_sha256"),
    )
    op.create_index(
        "ix_station_enrollment_station_id", "station_enrollment", ["station_id"], unique=False
    )
    op.create_table(
        "station_identity",
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False),
        sa.Column("station_id", sa.String(64), nullable=False),
        sa.Column("serial_number", sa.String(40), nullable=False),
        sa.Column("certificate_pem", sa.String(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(), nullable=True),
        sa.ForeignKeyConstraint(["station_id"], ["station.id"]),
        sa.PrimaryKeyConstraint("fingerprint_sha256"),
    )
    op.create_index(
        "ix_station_identity_station_id", "station_identity", ["station_id"], unique=False
    )
    op.create_table(
        "link_nonce",
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("ix_link_nonce_expires_at", "link_nonce", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_link_nonce_expires_at", table_name="link_nonce")
    op.drop_table("link_nonce")
    op.drop_index("ix_station_identity_station_id", table_name="station_identity")
    op.drop_table("station_identity")
    op.drop_index("ix_station_enrollment_station_id", table_name="station_enrollment")
    op.drop_table("station_enrollment")
    # A plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): batch mode would copy the
    # tables, which SQLite's enforced foreign keys refuse while other tables point at them.
    op.drop_column("device", "pop_challenge")
    op.drop_column("station", "broker_password_sha256")
