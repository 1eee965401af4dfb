"""The grouped signing path (issue 19): sign_many decides every request, then writes the
group with a fixed number of statements; the audit chain it writes is the one
``chain.append`` writes, event for event; a group never fails because another signer
recorded one of its devices in between. On SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlalchemy import event, insert, select
from sqlalchemy.engine import Engine
from sqlmodel import select as sm_select

from provisioner import batches
from provisioner.audit import chain
from provisioner.audit.verify import verify_log
from provisioner.ca.ceremony import init_ca
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, AuditNode, Batch, Certificate, Device, Step
from provisioner.errors import PolicyViolationError
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings


def _serial(i: int) -> str:
    return f"0123{i:012X}EE"


def _ready(ledger: DeviceLedger, device_id: int, i: int) -> SigningRequest:
    """A device at the step before signing, as a station leaves it (software key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ledger.identify(device_id, _serial(i), "00006002", f"test/{i}")
    dev = ledger.record_key(device_id, point)
    challenge = os.urandom(32)
    r, s = decode_dss_signature(key.sign(challenge, ec.ECDSA(hashes.SHA256())))
    ledger.advance(device_id, Step.POP_VERIFIED, "device.pop_verified")
    return SigningRequest(
        device_id,
        dev.batch_id,
        _serial(i),
        point,
        challenge,
        r.to_bytes(32, "big") + s.to_bytes(32, "big"),
    )


@dataclasses.dataclass
class Env:
    settings: Settings
    engine: Engine
    svc: IssuanceService

    def requests(self, n: int, base: int, quota: int | None = None) -> list[SigningRequest]:
        batch_id = batches.create_batch(
            self.engine, self.settings, station_id="line1", count=n, actor="t", quota=quota
        )
        ledger = DeviceLedger(self.engine, "station:line1", "line1")
        ids = batches.mark_started(self.engine, batch_id, actor="t")
        return [_ready(ledger, d, base + i) for i, d in enumerate(ids)]


@pytest.fixture
def env(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", database_url=db_url)
    init_ca(settings)
    engine = make_engine(db_url)
    create_schema(engine)
    svc = IssuanceService.open(engine, settings)
    yield Env(settings, engine, svc)
    svc.close()
    engine.dispose()


def _statements(engine: Engine) -> list[str]:
    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    return seen


def test_a_group_costs_the_same_statements_whatever_its_size(env: Env) -> None:
    """The point of grouping: 5 and 40 certificates take the same number of statements
    (before issue 19 each request ran its own ~11, so 40 took eight times 5's)."""
    small, large = env.requests(5, 100), env.requests(40, 200)
    env.svc.sign_many(small[:1])  # first use: the template, the schema check
    seen = _statements(env.engine)
    out_small = env.svc.sign_many(small[1:])
    n_small = len(seen)
    seen.clear()
    out_large = env.svc.sign_many(large)
    n_large = len(seen)
    assert all(isinstance(o, IssuedCertificate) for o in [*out_small, *out_large])
    # Equal but for the Merkle siblings' read, which a group needs only when one of its
    # leaves completes a subtree begun before it.
    assert n_large <= n_small + 1, (n_small, n_large)
    with transaction(env.engine) as s:
        assert verify_log(s, None).ok
        steps = s.exec(sm_select(Device.step).where(Device.batch_id == large[0].batch_id)).all()
        assert set(steps) == {Step.CERT_ISSUED}


def test_refused_requests_in_a_group_undo_nothing_of_the_others(env: Env) -> None:
    """Clone, reused key, unknown device, quota and a duplicate in one group: each gets its
    own answer, the good ones are issued and recorded, the log verifies."""
    reqs = env.requests(4, 300, quota=3)
    other = env.requests(1, 400)[0]
    clone = dataclasses.replace(other, chip_serial_hex=reqs[0].chip_serial_hex)  # mismatch
    unknown = dataclasses.replace(reqs[1], device_id=987654)
    group = [reqs[0], clone, reqs[1], unknown, reqs[0], reqs[2], reqs[3], other]
    out = env.svc.sign_many(group)
    kinds = [type(o).__name__ for o in out]
    assert kinds == [
        "IssuedCertificate",
        "PolicyViolationError",  # request_mismatch: the serial is another device's
        "IssuedCertificate",
        "NotFoundError",
        "IssuedCertificate",  # the duplicate: the same certificate
        "IssuedCertificate",
        "QuotaExhaustedError",  # quota 3: the fourth of its batch waits
        "IssuedCertificate",
    ]
    assert out[4] == out[0]
    assert isinstance(out[6], PolicyViolationError)
    with transaction(env.engine) as s:
        certs = s.exec(sm_select(Certificate.device_id)).all()
        assert sorted(certs) == sorted(
            {reqs[0].device_id, reqs[1].device_id, reqs[2].device_id, other.device_id}
        )
        batch = s.get(Batch, reqs[0].batch_id)
        assert batch is not None and batch.issued == 3
        types = list(s.exec(sm_select(AuditEvent.event_type)).all())
        assert types.count("device.cert_issued") == 4
        assert "incident.quota_exceeded" in types and "incident.clone_refused" in types
        assert verify_log(s, None).ok
    again = env.svc.sign_many([reqs[2], reqs[0]])  # idempotent
    assert again == [out[5], out[0]]


# PostgreSQL only: on SQLite the group's BEGIN IMMEDIATE keeps every other writer out, so
# the race cannot happen there.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_device_recorded_by_another_signer_meanwhile_comes_back_as_its_certificate(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another signer process commits a certificate for one of the group's devices after
    this group read the records: the unique constraint refuses our row, the group is
    decided again and the others are still issued (before: the whole call failed)."""
    assert env.engine.dialect.name == "postgresql"
    reqs = env.requests(3, 500)
    raced = reqs[1].device_id
    issue = env.svc.issuer.issue
    done: list[int] = []

    def racing_issue(req: SigningRequest, serial: int, now: datetime) -> Any:
        if req.device_id == raced and not done:  # between its lookup and its record
            done.append(1)
            with env.engine.begin() as c:  # the other signer's transaction, committed
                c.execute(
                    insert(Certificate),
                    [
                        {
                            "device_id": raced,
                            "serial_number": "abc123",
                            "fingerprint_sha256": "11" * 32,
                            "der": b"\x30\x03\x02\x01\x01",
                            "not_before": now,
                            "not_after": now,
                            "issuer_fingerprint_sha256": "22" * 32,
                            "created_at": now,
                        }
                    ],
                )
        return issue(req, serial, now)

    monkeypatch.setattr(env.svc.issuer, "issue", racing_issue)
    out = env.svc.sign_many(reqs)
    assert all(isinstance(o, IssuedCertificate) for o in out), out
    assert isinstance(out[1], IssuedCertificate) and out[1].fingerprint_sha256 == "11" * 32
    with transaction(env.engine) as s:
        assert len(s.exec(sm_select(Certificate.id)).all()) == 3
        batch = s.get(Batch, reqs[0].batch_id)
        assert batch is not None and batch.issued == 2  # the raced one was not ours
        assert verify_log(s, None).ok


@pytest.mark.parametrize("sizes", [(1, 1, 1, 1, 1, 1, 1), (3, 5, 1, 8, 2), (16, 1, 15)])
def test_append_many_writes_what_append_writes(
    db_url: str,
    sizes: tuple[int, ...],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Events and Merkle nodes byte for byte as one ``append`` per event, across groups
    that start and end anywhere in the tree (the same clock for both logs)."""

    class Clock(datetime):
        ticks = 0

        @classmethod
        def now(cls, tz: Any = None) -> Clock:
            cls.ticks += 1
            return cls(2026, 12, 2, 5, 0, 0, cls.ticks, tzinfo=UTC)

    monkeypatch.setattr(chain, "datetime", Clock)
    events: list[dict[str, Any]] = [
        {
            "event_type": "device.cert_issued",
            "actor": "signer",
            "socket": i % 4,
            "batch_id": 7,
            "device_id": 1000 + i,
            "chip_serial": _serial(i),
            "payload": {"serial_number": f"{i:x}", "note": "é", "n": i},
        }
        for i in range(sum(sizes))
    ]

    def build(url: str, grouped: bool) -> tuple[list[Any], list[Any]]:
        Clock.ticks = 0
        engine = make_engine(url)
        create_schema(engine)
        at = 0
        for n in sizes:
            with transaction(engine) as s:
                if grouped:
                    chain.append_many(s, events[at : at + n])
                else:
                    for e in events[at : at + n]:
                        chain.append(s, **e)
            at += n
        with transaction(engine) as s:
            assert verify_log(s, None).ok
            evs = s.connection().execute(select(AuditEvent.__table__)).all()  # type: ignore[attr-defined]
            nodes = (
                s.connection()
                .execute(
                    select(AuditNode.__table__).order_by("level", "idx")  # type: ignore[attr-defined]
                )
                .all()
            )
        engine.dispose()
        return [tuple(e) for e in evs], [tuple(n) for n in nodes]

    if db_url.startswith("sqlite"):
        many = db_url.replace("p.db", "q.db")
    else:
        from tests import pg

        many = pg.create_database(request.getfixturevalue("postgres_url"))
    one = db_url
    assert build(many, grouped=True) == build(one, grouped=False)
