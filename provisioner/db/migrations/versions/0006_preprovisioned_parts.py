"""Pre-provisioned parts, chosen per batch (issue 18).

Revision ID: 0006
Revises: 0005
Create Date: 2027-02-15

A batch gains its mode (``issue``, the flow so far and every existing batch's, or
``preprovisioned``) and the kind of part; one new table keeps the certificates such parts
came with. Nothing existing changes meaning.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_S = sa.String


def upgrade() -> None:
    with op.batch_alter_table("batch") as b:
        b.add_column(sa.Column("mode", _S(length=16), nullable=False, server_default="issue"))
        b.add_column(sa.Column("part", _S(length=32), nullable=True))
    op.create_table(
        "factory_certificate",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("kind", _S(length=16), nullable=False),
        sa.Column("serial_number", _S(length=80), nullable=False),
        sa.Column("fingerprint_sha256", _S(length=64), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("signer_der", sa.LargeBinary(), nullable=False),
        sa.Column("root_fingerprint_sha256", _S(length=64), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["device.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id"),
        sa.UniqueConstraint("fingerprint_sha256"),
    )


def downgrade() -> None:
    op.drop_table("factory_certificate")
    with op.batch_alter_table("batch") as b:
        b.drop_column("part")
        b.drop_column("mode")
