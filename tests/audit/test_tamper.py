"""Tampering with the audit log directly in the database, as an insider would, on SQLite
and PostgreSQL: every kind the issue names is caught by ``verify_log`` and the first bad
position is named. The insider first drops the append-only triggers (which otherwise
refuse the change — tested here too)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError

from provisioner.audit import chain, merkle, triggers
from provisioner.audit.checkpointer import Checkpointer
from provisioner.audit.entry import ENTRY_VERSION, Entry
from provisioner.audit.verify import AuditKey, VerifyResult, verify_log
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.settings import Settings

ORIGIN = "test.invalid/audit"


@dataclass
class Log:
    engine: Engine
    key: AuditKey
    signer: ec.EllipticCurvePrivateKey
    notes: dict[int, str]  # size -> signed note, as an auditor would have kept them
    ranges: bool  # scan in ranges of 4 events in 2 processes (as a big log is scanned)

    def verify(self, kept: list[str] | None = None, key: bool = True) -> VerifyResult:
        opts = {"workers": 2, "chunk": 4} if self.ranges else {"workers": 1}
        with transaction(self.engine) as s:
            return verify_log(s, self.key if key else None, kept or [], **opts)


def _append(engine: Engine, start: int, n: int) -> None:
    with transaction(engine) as s:
        for i in range(start, start + n):
            chain.append(
                s,
                "test.event",
                actor="operator:alice",
                station_id="line1",
                socket=i % 4,
                batch_id=1,
                chip_serial=f"0123{i:012X}EE",
                payload={"i": i},
            )


@pytest.fixture(params=["one pass", "ranges"])
def log(db_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Log:
    engine = make_engine(db_url)
    create_schema(engine)
    settings = Settings(var_dir=tmp_path / "var", audit={"origin": ORIGIN})
    key = ec.generate_private_key(ec.SECP256R1())
    cp = Checkpointer(engine, settings, key)
    notes = {}
    _append(engine, 1, 10)
    notes[10] = cp.write("test").note  # type: ignore[union-attr]
    _append(engine, 11, 10)
    notes[20] = cp.write("test").note  # type: ignore[union-attr]
    key_ = AuditKey(key.public_key(), ORIGIN, ORIGIN)
    return Log(engine, key_, key, notes, request.param == "ranges")


@contextmanager
def insider(engine: Engine) -> Iterator[Connection]:
    """Drop the append-only triggers, tamper, put them back (as if nothing happened)."""
    with engine.begin() as c:
        triggers.drop(c)
        yield c
        triggers.install(c)


def _rows(c: Connection, from_seq: int) -> list[tuple[object, ...]]:
    return list(
        c.exec_driver_sql(
            "SELECT seq, ts, actor, role, event_type, station_id, socket, batch_id, "
            f"device_id, chip_serial, payload FROM audit_event WHERE seq >= {from_seq} "
            "ORDER BY seq"
        )
    )


def _relink(c: Connection, from_seq: int) -> None:
    """Recompute prev_hash and hash from ``from_seq`` on: a careful insider's chain."""
    prev = (
        chain.GENESIS_HASH
        if from_seq == 1
        else c.exec_driver_sql(f"SELECT hash FROM audit_event WHERE seq = {from_seq - 1}").one()[0]
    )
    for row in _rows(c, from_seq):
        link = chain.link_hash(prev, Entry(*row).encode())  # type: ignore[arg-type]
        c.execute(
            text("UPDATE audit_event SET prev_hash = :p, hash = :h WHERE seq = :s"),
            {"p": prev, "h": link, "s": row[0]},
        )
        prev = link


def _rebuild_nodes(c: Connection) -> None:
    """Recompute the whole stored tree from the (tampered) events."""
    c.exec_driver_sql("DELETE FROM audit_node")
    frontier = merkle.Frontier()
    for row in _rows(c, 1):
        frontier, nodes = frontier.append(merkle.leaf_hash(Entry(*row).encode()))  # type: ignore[arg-type]
        for (lv, ix), h in nodes:
            c.execute(
                text("INSERT INTO audit_node (level, idx, hash) VALUES (:l, :i, :h)"),
                {"l": lv, "i": ix, "h": h},
            )


def test_intact_log_verifies_with_both_checkpoints(log: Log) -> None:
    res = log.verify(list(log.notes.values()))
    assert res.ok, res.reason
    assert (res.events, res.checkpoints, res.warnings) == (20, 2, ())


def test_without_the_key_signatures_are_reported_unchecked(log: Log) -> None:
    res = log.verify(key=False)
    assert res.ok and res.checkpoints == 2
    assert any("NOT checked" in w for w in res.warnings)


@pytest.mark.parametrize("table", triggers.APPEND_ONLY_TABLES)
def test_triggers_refuse_update_and_delete(log: Log, table: str) -> None:
    column = {"audit_event": "actor", "audit_node": "level", "audit_checkpoint": "reason"}[table]
    value = "'x'" if column != "level" else "level"
    for sql in (f"UPDATE {table} SET {column} = {value}", f"DELETE FROM {table}"):
        with pytest.raises(DatabaseError, match="append-only"), log.engine.begin() as c:
            c.exec_driver_sql(sql)
    if log.engine.dialect.name == "postgresql":
        with pytest.raises(DatabaseError, match="append-only"), log.engine.begin() as c:
            c.exec_driver_sql(f"TRUNCATE {table} CASCADE")
    assert log.verify().ok


def test_edited_row_is_named(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET payload = '{\"i\":99}' WHERE seq = 4")
    res = log.verify()
    assert (res.ok, res.first_bad_seq) == (False, 4)
    assert "event 4 (test.event) was altered" in res.reason


def test_edit_with_a_recomputed_chain_is_caught_by_the_checkpoint(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET actor = 'operator:mallory' WHERE seq = 4")
        _relink(c, 4)
    res = log.verify()
    assert not res.ok
    assert "do not match the checkpoint signed at size 10" in res.reason
    assert res.first_bad_seq == 4  # the stored leaf node still has the original event


def test_edit_with_chain_and_tree_rebuilt_is_still_caught(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET chip_serial = 'FFFF' WHERE seq = 14")
        _relink(c, 14)
        _rebuild_nodes(c)
    res = log.verify()
    assert not res.ok
    # Checkpoint 10 still matches; 11..20 no longer match the one signed at 20.
    assert "events 11..20 do not match the checkpoint signed at size 20" in res.reason


def test_re_signed_checkpoints_need_the_hsm_key(log: Log) -> None:
    """The insider rewrites everything and signs new checkpoints with a key of their own."""
    with insider(log.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET chip_serial = 'FFFF' WHERE seq = 3")
        _relink(c, 3)
        _rebuild_nodes(c)
        c.exec_driver_sql("DELETE FROM audit_checkpoint")
    forged = ec.generate_private_key(ec.SECP256R1())
    settings = Settings(audit={"origin": ORIGIN})
    Checkpointer(log.engine, settings, forged).write("forged")
    res = log.verify()
    assert not res.ok and "does not verify" in res.reason


def test_deleted_row_is_named(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_event WHERE seq = 7")
    res = log.verify()
    assert (res.ok, res.first_bad_seq) == (False, 7)
    assert "event 7 is missing (next is 8)" in res.reason


def test_reordered_rows_are_named(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("UPDATE audit_event SET seq = -5 WHERE seq = 5")
        c.exec_driver_sql("UPDATE audit_event SET seq = 5 WHERE seq = 6")
        c.exec_driver_sql("UPDATE audit_event SET seq = 6 WHERE seq = -5")
    res = log.verify()
    assert (res.ok, res.first_bad_seq) == (False, 5)
    assert "does not link" in res.reason or "altered" in res.reason


def test_truncation_behind_the_latest_checkpoint(log: Log) -> None:
    with insider(log.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_event WHERE seq > 15")
    res = log.verify()
    assert (res.ok, res.first_bad_seq) == (False, 16)
    assert "truncated: a signed checkpoint covers 20 events, only 15 are present" in res.reason


def test_truncation_hiding_its_checkpoint_is_caught_by_a_kept_one(log: Log) -> None:
    """Events 16..20 and the checkpoint that covered them are gone, nodes rebuilt: the
    database alone looks consistent, the checkpoint an auditor kept does not."""
    with insider(log.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_event WHERE seq > 15")
        c.exec_driver_sql("DELETE FROM audit_checkpoint WHERE size = 20")
        _rebuild_nodes(c)
    assert log.verify().ok
    res = log.verify([log.notes[20]])
    assert (res.ok, res.first_bad_seq) == (False, 16)
    assert "truncated" in res.reason


def test_a_forked_log_differs_from_a_kept_checkpoint(log: Log) -> None:
    """The insider rewrites events 11..20 and re-signs nothing, deleting checkpoint 20:
    the auditor's copy of checkpoint 20 disagrees."""
    with insider(log.engine) as c:
        c.exec_driver_sql("DELETE FROM audit_checkpoint WHERE size = 20")
        c.exec_driver_sql("UPDATE audit_event SET payload = '{}' WHERE seq = 12")
        _relink(c, 12)
        _rebuild_nodes(c)
    assert log.verify().ok  # nothing in the database betrays it ...
    res = log.verify([log.notes[20]])  # ... the kept checkpoint does
    assert not res.ok and "do not match the checkpoint signed at size 20" in res.reason


def test_a_rewritten_stored_tree_is_reported(log: Log) -> None:
    """Events untouched, one stored node changed: proofs would fail, so verify says so."""
    with insider(log.engine) as c:
        c.execute(
            text("UPDATE audit_node SET hash = :h WHERE level = 0 AND idx = 17"),
            {"h": b"\x00" * 32},
        )
    res = log.verify()
    assert not res.ok and res.first_bad_seq == 18
    assert "stored Merkle nodes do not match" in res.reason


def test_verify_uses_the_same_encoding_as_append(log: Log) -> None:
    """The fast path of verify must hash exactly what Entry.encode hashes."""
    with log.engine.connect() as c:
        row = _rows(c, 3)[0]
    encoded = Entry(*row).encode()  # type: ignore[arg-type]
    assert encoded.startswith(f"[{ENTRY_VERSION},3,".encode())
