"""The schema before migrations: every table issue 13's create_all made, with the audit
tables' append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

A database made before Alembic has exactly these tables (older ones may lack some columns:
``provisioner db upgrade`` completes them, :func:`provisioner.db.migrate.upgrade`), and is
stamped 0001 instead of running this.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from provisioner.audit import triggers
from provisioner.db.migrations.schema_0001 import METADATA

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    bind = op.get_bind()
    METADATA.create_all(bind)  # tables, indexes and (PostgreSQL) the native enum types
    triggers.install(bind)


def downgrade() -> None:
    bind = op.get_bind()
    triggers.drop(bind)
    METADATA.drop_all(bind)
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql("DROP FUNCTION IF EXISTS provisioner_append_only()")
