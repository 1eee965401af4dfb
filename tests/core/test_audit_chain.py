"""The hash chain catches edited, deleted and reordered rows, naming the first bad event."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.audit import chain
from provisioner.db.engine import create_schema, make_engine, transaction


@pytest.fixture
def engine(db_url: str) -> Engine:
    e = make_engine(db_url)
    create_schema(e)
    with transaction(e) as s:
        for i in range(10):
            chain.append(s, "test.event", actor="tester", batch_id=1, payload={"i": i})
    return e


def _verify(engine: Engine) -> chain.VerifyResult:
    with transaction(engine) as s:
        return chain.verify(s)


def test_intact_chain_verifies(engine: Engine) -> None:
    res = _verify(engine)
    assert res.ok and res.events == 10


def test_edited_payload_is_named(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE audit_event SET payload = :p WHERE seq = 4"), {"p": '{"i":99}'})
    res = _verify(engine)
    assert not res.ok and res.first_bad_seq == 4 and "altered" in res.reason


def test_edited_hash_breaks_the_next_link(engine: Engine) -> None:
    # An insider who also recomputes row 4's hash still breaks row 5's prev_hash.
    with transaction(engine) as s:
        ev = s.exec(text("SELECT * FROM audit_event WHERE seq = 4")).one()  # type: ignore[call-overload]
        new_payload = '{"i":99}'
        forged = chain.event_hash(
            seq=4,
            ts=ev.ts,
            actor=ev.actor,
            event_type=ev.event_type,
            station_id=None,
            batch_id=1,
            device_id=None,
            chip_serial=None,
            payload=new_payload,
            prev_hash=ev.prev_hash,
        )
    with engine.begin() as c:
        c.execute(
            text("UPDATE audit_event SET payload = :p, hash = :h WHERE seq = 4"),
            {"p": new_payload, "h": forged},
        )
    res = _verify(engine)
    assert res.first_bad_seq == 5 and "does not link" in res.reason


def test_deleted_row_is_named(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("DELETE FROM audit_event WHERE seq = 7"))
    res = _verify(engine)
    assert res.first_bad_seq == 7 and "missing" in res.reason


def test_reordered_rows_are_caught(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(text("UPDATE audit_event SET seq = 100 WHERE seq = 3"))
        c.execute(text("UPDATE audit_event SET seq = 3 WHERE seq = 6"))
        c.execute(text("UPDATE audit_event SET seq = 6 WHERE seq = 100"))
    res = _verify(engine)
    assert res.first_bad_seq == 3


def test_secret_looking_payload_is_refused(engine: Engine) -> None:
    with transaction(engine) as s, pytest.raises(ValueError, match="secret"):
        chain.append(s, "x", actor="a", payload={"user_pin": "1234"})
