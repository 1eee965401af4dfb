"""Every refusal by the signer and its policy leaves an audit event, and neither refusals nor
403s can flood the trail: one event per (actor, event type, reason) and window, with an
exact count carried into the trail when the window closes (issue 20)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from provisioner import batches
from provisioner.api.app import create_app
from provisioner.audit import refusals
from provisioner.audit.verify import verify_log
from provisioner.auth import users
from provisioner.ca.ceremony import init_ca
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Certificate, Step
from provisioner.errors import NotFoundError, PermissionDeniedError, PolicyViolationError
from provisioner.issuance import REASONS, IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import SigningRequest
from provisioner.settings import Settings
from tests.conftest import chip_request
from workers import runtime, tasks
from workers.queues import SIGN_TASK

T0 = datetime(2027, 1, 15, 12, 0, 0, tzinfo=UTC)


def _events(engine: Engine, *types: str) -> list[AuditEvent]:
    with Session(engine) as s:
        return list(
            s.exec(
                select(AuditEvent)
                .where(col(AuditEvent.event_type).in_(types))
                .order_by(col(AuditEvent.seq))
            ).all()
        )


def _payload(ev: AuditEvent) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(ev.payload)
    return out


# --- the signer: every refusal audited --------------------------------------------------


@dataclasses.dataclass
class Line:
    settings: Settings
    engine: Engine
    svc: IssuanceService
    ledger: DeviceLedger
    batch_id: int
    ids: list[int]


@pytest.fixture
def line(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Line]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", database_url=db_url)
    init_ca(settings)
    engine = make_engine(db_url)
    create_schema(engine)
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=3, actor="t")
    ids = batches.mark_started(engine, batch_id, actor="t")
    svc = IssuanceService.open(engine, settings)
    try:
        yield Line(
            settings, engine, svc, DeviceLedger(engine, "station:line1", "line1"), batch_id, ids
        )
    finally:
        svc.close()
        engine.dispose()


def _ready(line: Line, i: int, key: ec.EllipticCurvePrivateKey | None = None) -> SigningRequest:
    """Device ``ids[i]`` brought to the step before signing, as its station would."""
    req = chip_request(line.ids[i], line.batch_id, serial=f"0123{i:012X}EE", key=key)
    line.ledger.identify(req.device_id, req.chip_serial_hex, "00006002", f"test/{i}")
    line.ledger.record_key(req.device_id, req.public_key)
    line.ledger.advance(req.device_id, Step.POP_VERIFIED, "device.pop_verified")
    return req


def _forged(line: Line, kind: str) -> tuple[SigningRequest, type[Exception]]:
    """A request the signer must refuse for ``kind`` (a reason code), and its error type."""
    req = _ready(line, 0)
    other = chip_request(line.ids[0], line.batch_id, serial=req.chip_serial_hex)
    if kind == "bad_pop":
        return dataclasses.replace(req, pop_signature=bytes(64)), PolicyViolationError
    if kind == "malformed_serial":
        return dataclasses.replace(req, chip_serial_hex="0123' OR 1=1 --"), PolicyViolationError
    if kind == "bad_public_key":
        return dataclasses.replace(req, public_key=b"\x04" + bytes(64)), PolicyViolationError
    if kind == "unknown_device":
        return dataclasses.replace(req, device_id=987654), NotFoundError
    if kind == "malformed_request":
        return dataclasses.replace(req, device_id=2**70), PolicyViolationError
    if kind == "request_mismatch":  # another chip's key and proof, sent for this device
        return other, PolicyViolationError
    if kind == "certified_for_another_key":
        line.svc.sign(req)
        return other, PolicyViolationError
    raise AssertionError(kind)


CASES = {
    "bad_pop": "sign.refused",
    "malformed_serial": "sign.refused",
    "bad_public_key": "sign.refused",
    "unknown_device": "sign.refused",
    "malformed_request": "sign.refused",
    "request_mismatch": "incident.clone_refused",
    "certified_for_another_key": "incident.clone_refused",
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_each_refusal_of_the_signer_is_audited(line: Line, kind: str) -> None:
    req, error = _forged(line, kind)
    before = len(_events(line.engine, *set(CASES.values())))
    with pytest.raises(error):
        line.svc.sign(req)
    (ev,) = _events(line.engine, *set(CASES.values()))[before:]
    payload = _payload(ev)
    assert (ev.event_type, payload["reason"]) == (CASES[kind], kind)
    assert kind in REASONS and len(payload["detail"]) <= 200
    assert ev.actor == "signer" and payload["window_s"] == refusals.WINDOW_S
    if CASES[kind].startswith("incident."):  # a known device: the columns name it
        assert (ev.device_id, ev.batch_id) == (line.ids[0], line.batch_id)
    else:  # only claims: kept in the payload, not in the columns a query searches
        assert ev.device_id is None and ev.chip_serial is None
    with transaction(line.engine) as s:
        assert len(s.exec(select(Certificate)).all()) == (kind == "certified_for_another_key")
        assert verify_log(s, None).ok


def test_sign_many_audits_the_requests_it_refuses(line: Line) -> None:
    good = _ready(line, 0)
    forged = dataclasses.replace(_ready(line, 1), pop_signature=bytes(64))
    unknown = dataclasses.replace(_ready(line, 2), device_id=987654)
    out = line.svc.sign_many([good, forged, unknown])
    assert [type(o).__name__ for o in out] == [
        "IssuedCertificate",
        "PolicyViolationError",
        "NotFoundError",
    ]
    reasons = [_payload(e)["reason"] for e in _events(line.engine, "sign.refused")]
    assert reasons == ["bad_pop", "unknown_device"]


def test_a_malformed_sign_task_is_audited_not_raised(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message on the hsm queue that is not even a request (what anyone with access to
    the broker can send) is answered with a refusal and audited."""
    app = Celery("test")
    tasks.register(app)
    monkeypatch.setattr(
        runtime._Process, "runtime", runtime.WorkerRuntime(line.settings, signer=line.svc)
    )
    answer = app.tasks[SIGN_TASK]({"device_id": "1", "public_key": "zz"})
    assert answer["kind"] == "PolicyViolationError" and "malformed" in answer["error"]
    (ev,) = _events(line.engine, "sign.refused")
    assert _payload(ev)["reason"] == "malformed_request"


def test_forged_requests_flooding_the_signer_append_one_event(line: Line) -> None:
    req = dataclasses.replace(_ready(line, 0), pop_signature=bytes(64))
    n = 40
    for _ in range(n):
        with pytest.raises(PolicyViolationError):
            line.svc.sign(req)
    (ev,) = _events(line.engine, "sign.refused")
    with Session(line.engine) as s:
        (window,) = refusals.pending(s)
    assert (window.opened_seq, window.count) == (ev.seq, n)


# --- the aggregation itself ------------------------------------------------------------


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    create_schema(engine)
    return engine


def _deny(engine: Engine, when: datetime, actor: str = "operator:olga", action: str = "x") -> bool:
    with transaction(engine) as s:
        ev = refusals.record(
            s,
            "auth.denied",
            actor=actor,
            reason=action,
            payload={"action": action, "via": "cli"},
            now=when,
        )
    return ev is not None


def test_a_window_opens_with_an_event_and_the_next_one_carries_its_count(
    engine: Engine,
) -> None:
    assert _deny(engine, T0)  # visible at once
    assert not any(_deny(engine, T0 + timedelta(seconds=s)) for s in (1, 30, 59.9))
    assert _deny(engine, T0, action="y")  # another reason: its own window
    assert _deny(engine, T0, actor="monitor:mo")  # another actor: its own window
    assert _deny(engine, T0 + timedelta(seconds=60))  # the window has closed
    first, _, _, second = _events(engine, "auth.denied")
    assert "previous_count" not in _payload(first)
    assert _payload(second)["previous_count"] == 4
    assert _payload(second)["previous_seq"] == first.seq
    with transaction(engine) as s:
        assert verify_log(s, None).ok


def test_a_closed_window_writes_its_count_once(engine: Engine) -> None:
    for second in range(5):
        _deny(engine, T0 + timedelta(seconds=second))
    _deny(engine, T0, action="once")
    assert refusals.close_windows(engine, T0 + timedelta(seconds=30)) == 0  # still open
    assert refusals.close_windows(engine, T0 + timedelta(seconds=61)) == 1
    assert refusals.close_windows(engine, T0 + timedelta(seconds=62)) == 0  # idempotent
    (counted,) = _events(engine, refusals.COUNTED)
    opened = _events(engine, "auth.denied")[0]
    assert counted.actor == "operator:olga" and counted.role == "operator"
    assert _payload(counted) == {
        "event_type": "auth.denied",
        "reason": "x",
        "count": 5,
        "opened_seq": opened.seq,
        "window_s": refusals.WINDOW_S,
    }
    with Session(engine) as s:
        assert refusals.pending(s) == []  # the single "once" needed no event
    _deny(engine, T0 + timedelta(seconds=70))
    assert "previous_count" not in _payload(_events(engine, "auth.denied")[-1])


def test_repeated_403s_append_one_event_with_an_exact_count(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    users.add_user(engine, "root", "admin", "admin:root")
    token = users.add_user(engine, "olga", "operator", "admin:root")
    client = TestClient(create_app(settings))
    auth = {"Authorization": f"Bearer {token}"}
    n = 60
    for i in range(n):
        r = client.post(f"/users/u{i}/revoke", headers=auth)
        assert r.status_code == 403
    (ev,) = _events(engine, "auth.denied")
    assert ev.actor == "operator:olga"
    assert _payload(ev)["action"] == "users.manage" and _payload(ev)["via"].startswith("api ")
    # the count is exact, and reaches the trail when the window closes
    later = datetime.now(UTC) + timedelta(seconds=refusals.WINDOW_S + 1)
    assert refusals.close_windows(engine, later) == 1
    (counted,) = _events(engine, refusals.COUNTED)
    assert _payload(counted)["count"] == n


def _deny_many(db_url: str, n: int) -> None:
    engine = make_engine(db_url)
    who = users.Principal("olga", "operator")
    for _ in range(n):
        with pytest.raises(PermissionDeniedError):
            users.authorize(engine, who, "users.manage", via="cli")
    engine.dispose()


def test_counts_are_exact_across_processes(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    procs, n = 3, 20
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_deny_many, args=(db_url, n)) for _ in range(procs)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
        assert p.exitcode == 0
    assert len(_events(engine, "auth.denied")) == 1
    with Session(engine) as s:
        (window,) = refusals.pending(s)
    assert window.count == procs * n
