"""Aggregated refusals and denials (issue 20).

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-15

One new table (the open window of each kind of refusal, with its count); nothing existing
is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "refusal_window",
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("opened_ts", sa.String(), nullable=False),
        sa.Column("opened_seq", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("actor", "event_type", "reason"),
    )
    op.create_index("ix_refusal_window_opened_ts", "refusal_window", ["opened_ts"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_refusal_window_opened_ts", table_name="refusal_window")
    op.drop_table("refusal_window")
