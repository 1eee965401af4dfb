"""Schema migrations (Alembic) on SQLite and PostgreSQL: an empty database upgraded to head
equals the models; a database at the previous revision keeps every row through the
upgrade; every process refuses a schema older or newer than the software; a database made
before migrations is adopted by ``provisioner db upgrade``; the CLI says what to run."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DatabaseError
from sqlmodel import SQLModel, col, select

from provisioner.audit import chain, triggers
from provisioner.audit.checkpointer import Checkpointer
from provisioner.audit.verify import AuditKey, verify_log
from provisioner.db import migrate
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.migrations.schema_0001 import METADATA as SCHEMA_0001
from provisioner.db.models import (
    AuditEvent,
    Batch,
    BatchState,
    Certificate,
    Device,
    LinkNonce,
    Station,
    StationEnrollment,
    StationIdentity,
    Step,
)
from provisioner.errors import SchemaMismatchError
from provisioner.settings import AuditSettings, Settings
from tests.conftest import free_port, make_station, run_cli

ORIGIN = "factory.example/audit"
T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _diffs(engine: Engine, metadata: Any = None) -> list[Any]:
    """What Alembic's autogenerate would change to make the database match the models
    (or ``metadata``): nothing, when the schema is what the software expects."""
    with engine.connect() as conn:
        mc = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(mc, metadata if metadata is not None else SQLModel.metadata))


def _upgrade_to(url: str, revision: str) -> None:
    """Run the real revisions up to ``revision`` (as an older release's `db upgrade`)."""
    engine = make_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrate.config(connection=conn), revision)
    engine.dispose()


def _stored(engine: Engine) -> tuple[str, ...]:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_heads()


def _assert_append_only(engine: Engine) -> None:
    with transaction(engine) as s:
        chain.append(s, "test.event", actor="operator:alice", payload={"n": 1})
    for sql in ("UPDATE audit_event SET actor = 'x'", "DELETE FROM audit_event"):
        with pytest.raises(DatabaseError, match="append-only"), engine.begin() as c:
            c.exec_driver_sql(sql)


def test_head_constant_is_the_newest_revision_file() -> None:
    assert migrate.head() == migrate.HEAD
    revs = {s.revision: s.down_revision for s in migrate.scripts().walk_revisions()}
    assert revs == {
        "0001": None,
        "0002": "0001",
        "0003": "0002",
        "0004": "0003",
        "0005": "0004",
        "0006": "0005",
    }


def test_empty_database_upgraded_to_head_equals_the_models(db_url: str) -> None:
    assert migrate.current(db_url) is None
    assert migrate.upgrade(db_url) == (None, migrate.HEAD)
    engine = make_engine(db_url)
    assert _diffs(engine) == []
    assert _stored(engine) == (migrate.HEAD,)
    _assert_append_only(engine)
    create_schema(engine)  # accepted as is
    assert migrate.upgrade(db_url) == (migrate.HEAD, migrate.HEAD)  # idempotent


def test_fast_path_of_an_empty_database_equals_the_upgrade(db_url: str) -> None:
    """create_schema creates an empty database with create_all + triggers + stamp: the same
    schema as the revisions give (both compared with the models), at head."""
    engine = make_engine(db_url)
    create_schema(engine)
    assert _diffs(engine) == []
    assert _stored(engine) == (migrate.HEAD,)
    assert migrate.current(db_url) == migrate.HEAD
    _assert_append_only(engine)
    create_schema(engine)


def test_revision_0001_is_the_frozen_schema(db_url: str) -> None:
    _upgrade_to(db_url, "0001")
    engine = make_engine(db_url)
    assert _diffs(engine, SCHEMA_0001) == []
    names = set(inspect(engine).get_table_names())
    assert not names & {"station_enrollment", "station_identity", "link_nonce"}
    assert "pop_challenge" not in {c["name"] for c in inspect(engine).get_columns("device")}
    # the comparison has teeth: against the models, 0001 lacks exactly the later additions
    missing = {(d[0], d[-1].name) for d in _diffs(engine)}
    assert missing == {
        ("add_table", "station_enrollment"),
        ("add_table", "station_identity"),
        ("add_table", "link_nonce"),
        ("add_index", "ix_station_enrollment_station_id"),
        ("add_index", "ix_station_identity_station_id"),
        ("add_index", "ix_link_nonce_expires_at"),
        ("add_column", "broker_password_sha256"),
        ("add_column", "pop_challenge"),
        # 0003
        ("add_table", "web_session"),
        ("add_index", "ix_web_session_user_name"),
        ("add_index", "ix_web_session_expires_at"),
        # 0004
        ("add_table", "refusal_window"),
        ("add_index", "ix_refusal_window_opened_ts"),
        # 0005
        ("add_table", "field_enrollment_token"),
        ("add_index", "ix_field_enrollment_token_registry_name"),
        ("add_index", "ix_field_enrollment_token_expires_at"),
        ("add_table", "field_device"),
        ("add_index", "ix_field_device_registry_name"),
        ("add_table", "identity_certificate"),
        ("add_index", "ix_identity_certificate_field_device_id"),
        ("add_index", "ix_identity_certificate_issuer_fingerprint_sha256"),
        ("add_index", "ix_identity_certificate_revoked_at"),
        # 0006
        ("add_column", "mode"),
        ("add_column", "part"),
        ("add_table", "factory_certificate"),
    }
    _assert_append_only(engine)


def _fill_0001(engine: Engine, tmp_path: Path) -> tuple[Checkpointer, AuditKey]:
    """A line's worth of rows at revision 0001: a station, a paused batch, devices at
    several steps, a certificate; audit events and a signed checkpoint appended by the
    product's own code (its audit tables are the same at both revisions)."""
    t = SCHEMA_0001.tables
    with engine.begin() as c:
        c.execute(t["station"].insert(), [{"id": "line1", "created_at": T0}])
        c.execute(
            t["batch"].insert(),
            [
                {
                    "id": 7,
                    "station_id": "line1",
                    "count": 3,
                    "quota": 5,
                    "issued": 1,
                    "state": "PAUSED",
                    "created_by": "operator:alice",
                    "created_at": T0,
                    "started_at": T0,
                }
            ],
        )
        c.execute(
            t["device"].insert(),
            [
                {
                    "id": 100 + i,
                    "batch_id": 7,
                    "position": i,
                    "step": [int(Step.DONE), int(Step.KEY_GENERATED), int(Step.PENDING)][i],
                    "socket": i,
                    "chip_serial": f"0123{i:012X}EE" if i < 2 else None,
                    "public_key": "04" + f"{i:02x}" * 64 if i < 2 else None,
                    "attempts": i,
                    "updated_at": T0,
                    "error": "chip absent" if i == 1 else None,
                }
                for i in range(3)
            ],
        )
        c.execute(
            t["certificate"].insert(),
            [
                {
                    "device_id": 100,
                    "serial_number": "0abc",
                    "fingerprint_sha256": "f" * 64,
                    "der": b"\x30\x03\x02\x01\x00",
                    "not_before": T0,
                    "not_after": T0,
                    "issuer_fingerprint_sha256": "e" * 64,
                    "created_at": T0,
                }
            ],
        )
    settings = Settings(var_dir=tmp_path / "var", audit=AuditSettings(origin=ORIGIN))
    key = ec.generate_private_key(ec.SECP256R1())
    cp = Checkpointer(engine, settings, key)
    with transaction(engine) as s:
        for i in range(5):
            chain.append(s, "device.step", actor="station:line1", batch_id=7, payload={"i": i})
    cp.write("test")
    with transaction(engine) as s:
        chain.append(s, "batch.paused", actor="operator:alice", batch_id=7)
    return cp, AuditKey(key.public_key(), ORIGIN, ORIGIN)


def test_database_at_0001_with_data_is_upgraded_without_loss(db_url: str, tmp_path: Path) -> None:
    _upgrade_to(db_url, "0001")
    engine = make_engine(db_url)
    _, key = _fill_0001(engine, tmp_path)

    assert migrate.upgrade(db_url, actor="admin:test") == ("0001", migrate.HEAD)

    assert _diffs(engine) == []
    with transaction(engine) as s:
        station = s.get(Station, "line1")
        assert station is not None and station.broker_password_sha256 is None
        assert station.created_at == T0
        batch = s.get(Batch, 7)
        assert batch is not None
        assert (batch.state, batch.count, batch.quota, batch.issued) == (
            BatchState.PAUSED,
            3,
            5,
            1,
        )
        devices = s.exec(select(Device).order_by(col(Device.position))).all()
        assert [d.step for d in devices] == [Step.DONE, Step.KEY_GENERATED, Step.PENDING]
        assert [d.chip_serial for d in devices] == [
            "0123000000000000EE",
            "0123000000000001EE",
            None,
        ]
        assert devices[1].error == "chip absent" and devices[1].attempts == 1
        assert all(d.pop_challenge is None and d.updated_at == T0 for d in devices)
        cert = s.exec(select(Certificate)).one()
        assert cert.der == b"\x30\x03\x02\x01\x00" and cert.device_id == 100
        for new in (StationEnrollment, StationIdentity, LinkNonce):
            assert s.exec(select(func.count()).select_from(new)).one() == 0
        events = s.exec(select(AuditEvent).order_by(col(AuditEvent.seq))).all()
        assert [e.event_type for e in events] == ["device.step"] * 5 + [
            "batch.paused",
            "db.upgraded",
        ]
        assert events[-1].payload == f'{{"from":"0001","to":"{migrate.HEAD}"}}'
        result = verify_log(s, key, workers=1)
    assert result.ok and result.events == 7 and result.checkpoints == 1, result
    _assert_append_only(engine)  # the triggers survived
    create_schema(engine)


def test_older_schema_is_refused_and_left_alone(db_url: str) -> None:
    _upgrade_to(db_url, "0001")
    engine = make_engine(db_url)
    with pytest.raises(SchemaMismatchError) as err:
        create_schema(engine)
    msg = str(err.value)
    assert "revision 0001" in msg and f"needs revision {migrate.HEAD}" in msg
    assert "provisioner db upgrade" in msg
    with pytest.raises(SchemaMismatchError, match="provisioner db upgrade"):
        migrate.check_schema(engine)
    assert _stored(engine) == ("0001",)
    assert "link_nonce" not in inspect(engine).get_table_names()


def test_newer_schema_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    for attempt in (create_schema, migrate.check_schema):
        with pytest.raises(SchemaMismatchError) as err:
            attempt(engine)
        msg = str(err.value)
        assert "ffff" in msg and migrate.HEAD in msg and "upgrade the software" in msg
    with pytest.raises(SchemaMismatchError, match="upgrade the software"):
        migrate.upgrade(db_url)
    assert _stored(engine) == ("ffff",)


def _pre_migrations(engine: Engine) -> None:
    """A database as releases before migrations left it: the tables, no alembic_version."""
    with engine.begin() as c:
        SCHEMA_0001.create_all(c)
        triggers.install(c)
        c.execute(SCHEMA_0001.tables["station"].insert(), [{"id": "line1", "created_at": T0}])


def test_database_made_before_migrations_is_refused_then_adopted(db_url: str) -> None:
    engine = make_engine(db_url)
    _pre_migrations(engine)
    with pytest.raises(SchemaMismatchError) as err:
        create_schema(engine)
    assert "before schema migrations" in str(err.value)
    assert "provisioner db upgrade" in str(err.value)
    assert _stored(engine) == ()  # refusing changed nothing
    assert migrate.current(db_url) == "0001"

    assert migrate.upgrade(db_url) == ("0001", migrate.HEAD)
    assert _diffs(engine) == []
    assert _stored(engine) == (migrate.HEAD,)
    with transaction(engine) as s:
        assert [st.id for st in s.exec(select(Station)).all()] == ["line1"]
    _assert_append_only(engine)
    create_schema(engine)


def test_downgrade_to_0001_and_back(db_url: str) -> None:
    """For developers: 0002's downgrade undoes it exactly, with rows in the tables."""
    engine = make_engine(db_url)
    migrate.upgrade(db_url)
    with transaction(engine) as s:
        s.add(Station(id="line1", broker_password_sha256="a" * 64))
    with engine.begin() as conn:
        command.downgrade(migrate.config(connection=conn), "0001")
    assert _diffs(engine, SCHEMA_0001) == []
    assert migrate.upgrade(db_url) == ("0001", migrate.HEAD)
    assert _diffs(engine) == []


def test_processes_starting_together_create_an_empty_database_once(db_url: str) -> None:
    code = (
        "import sys; from provisioner.db.engine import create_schema, make_engine; "
        "create_schema(make_engine(sys.argv[1]))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, db_url], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    engine = make_engine(db_url)
    assert _stored(engine) == (migrate.HEAD,)
    assert _diffs(engine) == []


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_current_and_upgrade(tmp_path: Path, db_url: str) -> None:
    st = make_station(tmp_path / "line", database_url=db_url)
    env = st.env()

    r = run_cli("db", "current", env=env)
    assert r.returncode == 2, r.stderr
    assert "database: empty" in r.stdout and f"software: {migrate.HEAD}" in r.stdout
    assert "provisioner db upgrade" in r.stderr

    _upgrade_to(db_url, "0001")
    r = run_cli("db", "current", env=env)
    assert r.returncode == 2 and "database: 0001" in r.stdout
    assert "provisioner db upgrade" in r.stderr

    # every other command refuses the old schema, and says what to run
    r = run_cli("batch", "list", env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "revision 0001" in r.stderr and "provisioner db upgrade" in r.stderr

    r = run_cli("db", "upgrade", env=env)
    assert r.returncode == 0, r.stderr
    assert f"upgraded from revision 0001 to {migrate.HEAD}" in r.stdout
    r = run_cli("db", "upgrade", env=env)
    assert r.returncode == 0 and f"already at revision {migrate.HEAD}" in r.stdout
    r = run_cli("db", "current", env=env)
    assert r.returncode == 0, r.stderr
    assert f"database: {migrate.HEAD}" in r.stdout and f"software: {migrate.HEAD}" in r.stdout
    assert run_cli("batch", "list", env=env).returncode == 0

    engine = make_engine(db_url)
    with transaction(engine) as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.event_type == "db.upgraded")).one()
    assert (
        ev.actor.startswith("admin:") and ev.payload == f'{{"from":"0001","to":"{migrate.HEAD}"}}'
    )

    with engine.begin() as c:
        c.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    for args in (("db", "upgrade"), ("db", "current"), ("batch", "list")):
        r = run_cli(*args, env=env)
        assert r.returncode == 2 and "upgrade the software" in r.stderr, (args, r.stderr)


def test_cli_upgrade_of_an_empty_database(tmp_path: Path) -> None:
    st = make_station(tmp_path / "line")
    r = run_cli("db", "upgrade", env=st.env())
    assert r.returncode == 0, r.stderr
    assert f"empty database created at revision {migrate.HEAD}" in r.stdout
    assert _diffs(make_engine(st.settings.db_url)) == []


def test_cli_refuses_on_a_station_pc(tmp_path: Path) -> None:
    st = make_station(tmp_path / "st")
    st.config.write_text('role = "station"\nstation_id = "line1"\n' + st.config.read_text())
    r = run_cli("db", "upgrade", env=st.env())
    assert r.returncode == 2 and "holds no database" in r.stderr, r.stderr
    assert not (tmp_path / "st" / "var" / "provisioner.db").exists()


def test_cli_help_explains() -> None:
    r = run_cli("db", "--help")
    assert r.returncode == 0 and "upgrade" in r.stdout and "current" in r.stdout
    r = run_cli("db", "upgrade", "--help")
    assert "Idempotent" in r.stdout


def test_cli_unreachable_database_is_one_line_without_the_password(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://provisioner:s3cretpw@127.0.0.1:{free_port()}/provisioner"
    st = make_station(tmp_path / "line", database_url=url)
    for args in (("db", "upgrade"), ("db", "current")):
        r = run_cli(*args, env=st.env())
        assert r.returncode == 4, (args, r.stderr)
        assert r.stderr.startswith("error: database postgresql+psycopg://provisioner:***@")
        assert "s3cretpw" not in r.stdout + r.stderr and "Traceback" not in r.stderr
