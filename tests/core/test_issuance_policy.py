"""Issuance policy across batches and signer processes: quota, reused keys, clones.

The quota test runs four real signer processes (each with its own SoftHSM login and its own
database connection), all signing for one batch at once, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlmodel import select

from provisioner import batches
from provisioner.audit import refusals
from provisioner.audit.verify import verify_log
from provisioner.ca.ceremony import init_ca
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Batch, Certificate, Step
from provisioner.errors import BatchNotRunningError, InvalidInputError, PolicyViolationError
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import SigningRequest
from provisioner.settings import Settings
from workers.tasks import request_from_json, request_to_json

PROCS = 4


def _serial(i: int) -> str:
    return f"0123{i:012X}EE"


def _ready_device(ledger: DeviceLedger, device_id: int, i: int) -> SigningRequest:
    """Bring a device to the step before signing, as a station would, with a software key
    standing in for the chip."""
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
        device_id, dev.batch_id, _serial(i), point, challenge,
        r.to_bytes(32, "big") + s.to_bytes(32, "big"),
    )  # fmt: skip


def _signer_process(var_dir: str, db_url: str, reqs: list[dict[str, Any]], out: str) -> None:
    settings = Settings(var_dir=Path(var_dir))
    engine = make_engine(db_url)
    svc = IssuanceService.open(engine, settings, actor=f"signer:{os.getpid()}")
    ok = refused = 0
    try:
        for d in reqs:
            req = request_from_json(d)
            try:
                svc.sign(req)
                ok += 1
            except PolicyViolationError as exc:
                assert "quota" in str(exc), exc
                refused += 1
    finally:
        svc.close()
        engine.dispose()
    Path(out).write_text(f"{ok} {refused}")


@pytest.fixture
def policy_env(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, str]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", database_url=db_url)
    init_ca(settings)
    create_schema(make_engine(db_url))
    return settings, db_url


def test_quota_holds_across_concurrent_signer_processes(
    policy_env: tuple[Settings, str], tmp_path: Path
) -> None:
    settings, db_url = policy_env
    engine = make_engine(db_url)
    count, quota = 12, 5
    batch_id = batches.create_batch(
        engine, settings, station_id="line1", count=count, actor="test", quota=quota
    )
    ledger = DeviceLedger(engine, "station:line1", "line1")
    ids = batches.mark_started(engine, batch_id, actor="test")
    reqs = [_ready_device(ledger, d, i) for i, d in enumerate(ids)]
    ctx = mp.get_context("spawn")
    procs = []
    for n in range(PROCS):
        share = [request_to_json(r) for r in reqs[n::PROCS]]
        out = str(tmp_path / f"out{n}")
        procs.append(
            ctx.Process(target=_signer_process, args=(str(settings.var), db_url, share, out))
        )
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
        assert p.exitcode == 0
    results = [tuple(map(int, (tmp_path / f"out{n}").read_text().split())) for n in range(PROCS)]
    assert sum(ok for ok, _ in results) == quota
    assert sum(refused for _, refused in results) == count - quota
    with transaction(engine) as s:
        assert len(s.exec(select(Certificate)).all()) == quota
        batch = s.get(Batch, batch_id)
        assert batch is not None and batch.issued == quota
        incidents = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "incident.quota_exceeded")
        ).all()
        # Refusals are aggregated (provisioner.audit.refusals): one event per signer
        # process and window, each window counting its refusals exactly.
        windows = [w for w in refusals.pending(s) if w.event_type == "incident.quota_exceeded"]
        assert sorted(w.opened_seq for w in windows) == sorted(e.seq for e in incidents)
        assert sum(w.count for w in windows) == count - quota
        assert verify_log(s, None).ok


def test_quota_must_fit_the_batch(policy_env: tuple[Settings, str]) -> None:
    settings, db_url = policy_env
    engine = make_engine(db_url)
    for bad in (0, 4):
        with pytest.raises(InvalidInputError, match="--quota must be between 1 and the count"):
            batches.create_batch(
                engine, settings, station_id="line1", count=3, actor="t", quota=bad
            )


def test_a_public_key_seen_before_is_refused_with_an_incident(
    policy_env: tuple[Settings, str],
) -> None:
    settings, db_url = policy_env
    engine = make_engine(db_url)
    batch_a = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
    batch_b = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
    ledger = DeviceLedger(engine, "station:line1", "line1")
    (dev_a,) = batches.mark_started(engine, batch_a, actor="t")
    (dev_b,) = batches.mark_started(engine, batch_b, actor="t")
    req = _ready_device(ledger, dev_a, 1)
    svc = IssuanceService.open(engine, settings)
    try:
        svc.sign(req)
    finally:
        svc.close()
    # Another chip (another serial) in another batch presents the same public key.
    ledger.identify(dev_b, _serial(2), "00006002", "test/2")
    with pytest.raises(PolicyViolationError, match="already recorded for device"):
        ledger.record_key(dev_b, req.public_key)
    with transaction(engine) as s:
        ev = s.exec(select(AuditEvent).where(AuditEvent.event_type == "incident.key_reused")).one()
        assert ev.device_id == dev_b and f'"already_device":{dev_a}' in ev.payload
        assert len(s.exec(select(Certificate)).all()) == 1


def test_sign_many_decides_each_request_on_its_own(policy_env: tuple[Settings, str]) -> None:
    settings, db_url = policy_env
    engine = make_engine(db_url)
    batch_id = batches.create_batch(
        engine, settings, station_id="line1", count=3, actor="t", quota=2
    )
    ledger = DeviceLedger(engine, "station:line1", "line1")
    ids = batches.mark_started(engine, batch_id, actor="t")
    reqs = [_ready_device(ledger, d, 10 + i) for i, d in enumerate(ids)]
    svc = IssuanceService.open(engine, settings)
    try:
        out = svc.sign_many(reqs)
        again = svc.sign_many(reqs[:2])  # idempotent: the same certificates come back
    finally:
        svc.close()
    assert [type(o).__name__ for o in out] == [
        "IssuedCertificate",
        "IssuedCertificate",
        "QuotaExhaustedError",  # a PolicyViolationError whose part waits, not rejected
    ]
    assert isinstance(out[2], PolicyViolationError)
    assert again == out[:2]


def test_sign_many_commits_together_and_isolates_bad_requests(
    policy_env: tuple[Settings, str],
) -> None:
    settings, db_url = policy_env
    engine = make_engine(db_url)
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=3, actor="t")
    ledger = DeviceLedger(engine, "station:line1", "line1")
    ids = batches.mark_started(engine, batch_id, actor="t")
    reqs = [_ready_device(ledger, d, 20 + i) for i, d in enumerate(ids)]
    unknown = dataclasses.replace(reqs[0], device_id=9999)
    forged = dataclasses.replace(reqs[1], pop_signature=bytes(64))
    svc = IssuanceService.open(engine, settings)
    try:
        out = svc.sign_many([reqs[0], unknown, forged, reqs[1], reqs[2]])
    finally:
        svc.close()
    assert [type(o).__name__ for o in out] == [
        "IssuedCertificate",
        "NotFoundError",
        "PolicyViolationError",
        "IssuedCertificate",
        "IssuedCertificate",
    ]
    with transaction(engine) as s:
        assert len(s.exec(select(Certificate)).all()) == 3
        assert verify_log(s, None).ok


def test_nothing_is_issued_for_a_cancelled_batch(policy_env: tuple[Settings, str]) -> None:
    """A cancel releases the batch's quota: a sign request already on its way (the chip
    was in a socket) is refused as 'not running', audited, and consumes nothing."""
    settings, db_url = policy_env
    engine = make_engine(db_url)
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=2, actor="t")
    ledger = DeviceLedger(engine, "station:line1", "line1")
    ids = batches.mark_started(engine, batch_id, actor="t")
    reqs = [_ready_device(ledger, d, 40 + i) for i, d in enumerate(ids)]
    svc = IssuanceService.open(engine, settings)
    try:
        svc.sign(reqs[0])
        batches.cancel(engine, batch_id, actor="operator:olga")
        with pytest.raises(BatchNotRunningError, match="is cancelled"):
            svc.sign(reqs[1])
        assert svc.sign(reqs[0]).der  # the certificate issued before is still its own
    finally:
        svc.close()
    with transaction(engine) as s:
        assert len(s.exec(select(Certificate)).all()) == 1
        batch = s.get(Batch, batch_id)
        assert batch is not None and batch.issued == 1
        (incident,) = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "incident.batch_not_running")
        ).all()
        assert incident.device_id == ids[1]
