"""Database triggers that make the audit tables append-only.

The application has no UPDATE or DELETE path for them; the triggers make the database
itself refuse one, so a mistaken script or a careless administrator gets an error instead
of silently rewriting history. An insider who drops the triggers first is what the hash
chain and the HSM-signed checkpoints catch (``provisioner audit verify``).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

APPEND_ONLY_TABLES = ("audit_event", "audit_node", "audit_checkpoint")

_PG_LOCK_KEY = 0x61756474  # "audt"

# "%%" because the driver reads "%" as a placeholder marker (it sends one "%").
_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION provisioner_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%% is append-only: %% refused', TG_TABLE_NAME, TG_OP;
END
$$
"""


def install(conn: Connection) -> None:
    """Create the triggers if missing (idempotent; runs with every schema check)."""
    if conn.dialect.name == "postgresql":
        # Every process checks the schema at start; serialise them (concurrent CREATE OR
        # REPLACE of one function fails with "tuple concurrently updated").
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
        names = [
            f"{t}_{kind}" for t in APPEND_ONLY_TABLES for kind in ("append_only", "no_truncate")
        ]
        listed = ", ".join(f"'{n}'" for n in names)
        have = {
            r[0]
            for r in conn.exec_driver_sql(
                f"SELECT tgname FROM pg_trigger WHERE tgname IN ({listed})"
            )
        }
        if set(names) <= have:
            return
        conn.exec_driver_sql(_PG_FUNCTION)
        for t in APPEND_ONLY_TABLES:
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
                "FOR EACH ROW EXECUTE FUNCTION provisioner_append_only()"
            )
            conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
                "FOR EACH STATEMENT EXECUTE FUNCTION provisioner_append_only()"
            )
        return
    for t in APPEND_ONLY_TABLES:
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} "
                f"BEGIN SELECT RAISE(ABORT, '{t} is append-only: {op} refused'); END"
            )


def drop(conn: Connection) -> None:
    """Remove the triggers: what an insider would do first. Tests use it to tamper."""
    for t in APPEND_ONLY_TABLES:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_append_only ON {t}")
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_no_truncate ON {t}")
        else:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_no_update")
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {t}_no_delete")
