"""The line's gateway for one station, with real parts but no broker: a station's
requests (signed with its HSM-issued certificate) handed to the gateway in process, real
emulated chips through cryptoauthlib, the real SoftHSM signer, the real database.

What a station can do with its own credentials, and what it cannot: each refusal is
answered, audited as ``link.refused``, and changes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import col, select

from provisioner import batches
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.chain import local_material
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Certificate, Device, Step
from provisioner.enrollment.service import init_line_identity, revoke_station
from provisioner.errors import LinkRefusedError
from provisioner.issuance import IssuanceService
from provisioner.link.envelope import seal
from provisioner.link.gateway import Gateway
from provisioner.link.keys import SigningKey, line_key
from provisioner.link.remote import RemoteRecords
from provisioner.link.wire import REQUEST_TASK
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun
from tests.link.stations import enroll

REGISTRY = "projects/p/locations/l/registries/r"


@dataclass
class Party:
    """One enrolled station as its PC holds it, and the line's gateway for it."""

    key: SigningKey
    gateway: Gateway
    remote: RemoteRecords
    sent: list[dict[str, Any]]


@pytest.fixture
def line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var",
        stations={"line1": StationSettings(sockets=2), "line2": StationSettings(sockets=2)},
    )
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    init_line_identity(settings)
    keys = {sid: enroll(settings, engine, sid) for sid in ("line1", "line2")}
    ca = load_ca(settings)  # after the enrollments: they open and close the token themselves
    signer = IssuanceService(engine, ca, settings.profile)
    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    parties: dict[str, Party] = {}
    for sid, key in keys.items():
        verified: list[int] = []
        gw = Gateway(
            engine,
            sid,
            line_key(settings),
            signer,
            registry=REGISTRY,
            on_verified=verified.append,
            chain_material=lambda: local_material(settings).as_json(),
        )
        sent: list[dict[str, Any]] = []

        def send(req: dict[str, Any], _t: float, gw: Gateway = gw, sent: list = sent) -> object:
            sent.append(req)
            return gw.handle(req)

        remote = RemoteRecords(send, key, line_cert, 0, timeout_s=5, sign_timeout_s=5)
        parties[sid] = Party(key, gw, remote, sent)
    yield {"settings": settings, "engine": engine, "parties": parties, "signer": signer}
    ca.close()


def _batch(line: dict[str, Any], station: str, count: int = 1) -> list[int]:
    bid = batches.create_batch(
        line["engine"], line["settings"], station_id=station, count=count, actor="t"
    )
    return batches.mark_started(line["engine"], bid, actor="t")


def _refusals(line: dict[str, Any]) -> list[dict[str, Any]]:
    with transaction(line["engine"]) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.event_type == "link.refused")).all()
        return [_payload(r.payload) | {"station": r.station_id} for r in rows]


def _payload(raw: object) -> dict[str, Any]:
    import json

    data = json.loads(raw) if isinstance(raw, str | bytes) else raw
    assert isinstance(data, dict)
    return data


def _refused(line: dict[str, Any], reason: str, fn: Callable[[], object]) -> None:
    before = len(_refusals(line))
    with pytest.raises(LinkRefusedError) as info:
        fn()
    assert info.value.reason == reason, info.value
    after = _refusals(line)
    assert len(after) == before + 1 and after[-1]["reason"] == reason


def _device(line: dict[str, Any], device_id: int) -> Device:
    with transaction(line["engine"]) as s:
        dev = s.get(Device, device_id)
        assert dev is not None
        return dev


def _run(line: dict[str, Any], station: str, device_id: int) -> str:
    p: Party = line["parties"][station]
    run = SocketRun(line["settings"], station, 0, p.remote, holder=f"{station}:0:{os.getpid()}")
    return run.run(device_id).kind


# --- what a station can do ----------------------------------------------------------------


def test_a_device_goes_through_the_gateway_step_by_step(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    assert _run(line, "line1", dev_id) == "done"
    dev = _device(line, dev_id)
    assert dev.step == Step.CERT_VERIFIED and dev.pop_challenge is None
    ops = [r["body"]["op"] for r in line["parties"]["line1"].sent]
    for op in (
        "claim",
        "identify",
        "record_key",
        "challenge",
        "record_pop",
        "sign",
        "chip_chain",
        "record_written",
        "record_verified",
        "release",
    ):
        assert op in ops
    assert _refusals(line) == []
    with transaction(line["engine"]) as s:
        assert verify_log(s, load_audit_key(line["settings"])).ok


# --- what it cannot ---------------------------------------------------------------------


def test_a_station_cannot_touch_another_stations_device(line: dict[str, Any]) -> None:
    (theirs,) = _batch(line, "line2")
    remote = line["parties"]["line1"].remote
    _refused(line, "not_yours", lambda: remote.load(theirs))
    _refused(line, "not_yours", lambda: remote.identify(theirs, "0123" + "AB" * 7, "00006002", "x"))
    _refused(line, "not_yours", lambda: remote.fail(theirs, "sabotage", remote_action()))
    assert _device(line, theirs).step == Step.PENDING and _device(line, theirs).error is None


def remote_action() -> Any:
    from provisioner.db.models import PartAction

    return PartAction.REJECT


def test_a_station_cannot_send_on_another_stations_queue(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    p1, p2 = line["parties"]["line1"], line["parties"]["line2"]
    msg = seal(
        p1.key.key,
        kid=p1.key.kid,
        task=REQUEST_TASK,
        sender=p1.key.party,
        recipient="line",
        body={"op": "load", "socket": 0, "args": {"device": dev_id}},
        ttl_s=60,
    )
    before = len(_refusals(line))
    answer = p2.gateway.handle(msg)
    assert answer["body"]["reason"] == "wrong_sender"
    assert _refusals(line)[before]["station"] == "line2"


def test_steps_are_recorded_in_order_only(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    _refused(line, "out_of_order", lambda: remote.record_key(dev_id, b"\x04" + b"\x01" * 64))
    _refused(line, "out_of_order", lambda: remote.record_written(dev_id, "00" * 32))
    _refused(line, "out_of_order", lambda: remote.record_verified(dev_id, b"\x30\x00"))
    _refused(line, "out_of_order", lambda: remote.challenge(dev_id))
    assert _device(line, dev_id).step == Step.PENDING


def test_no_certificate_without_the_chips_proof(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    forged = ec.generate_private_key(ec.SECP256R1())  # a key the station holds in software
    point = forged.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    remote.identify(dev_id, "0123" + "CD" * 7, "00006002", "emulated:line1/0")
    remote.record_key(dev_id, point)
    challenge = remote.challenge(dev_id)
    # a proof over another challenge (made up, or the previous one: replayed)
    stale = os.urandom(32)
    sig = _raw_sign(forged, stale)
    _refused(line, "bad_proof", lambda: remote.record_pop(dev_id, stale, sig))
    # a signature that does not verify with the recorded key
    _refused(line, "bad_proof", lambda: remote.record_pop(dev_id, challenge, b"\x11" * 64))
    assert _device(line, dev_id).step == Step.KEY_GENERATED
    # the right proof passes (the key is the station's own here: the line cannot tell a
    # software key from a chip's, which is why the key's record must come from the chip
    # the station identified), then a replayed challenge cannot buy a second certificate
    remote.record_pop(dev_id, challenge, _raw_sign(forged, challenge))
    newer = remote.challenge(dev_id)  # replaces the one the proof answered
    request = _request(dev_id, point, challenge, _raw_sign(forged, challenge))
    _refused(line, "bad_proof", lambda: remote.sign(request))
    assert newer != challenge
    with transaction(line["engine"]) as s:
        assert s.exec(select(Certificate)).all() == []


def _raw_sign(key: ec.EllipticCurvePrivateKey, challenge: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(
        key.sign(hashlib.sha256(challenge).digest(), ec.ECDSA(_Prehashed()))
    )
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _Prehashed() -> Any:
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    return Prehashed(hashes.SHA256())


def _request(dev_id: int, point: bytes, challenge: bytes, sig: bytes) -> Any:
    from provisioner.ports import SigningRequest

    return SigningRequest(dev_id, 1, "0123" + "CD" * 7, point, challenge, sig)


def test_forged_replayed_and_relabelled_messages_are_refused(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    p = line["parties"]["line1"]
    body = {"op": "load", "socket": 0, "args": {"device": dev_id}}
    # forged: the station's key id, someone else's key
    forged = seal(
        ec.generate_private_key(ec.SECP256R1()),
        kid=p.key.kid,
        task=REQUEST_TASK,
        sender=p.key.party,
        recipient="line",
        body=body,
        ttl_s=60,
    )
    # replayed: a genuine message, twice
    genuine = seal(
        p.key.key,
        kid=p.key.kid,
        task=REQUEST_TASK,
        sender=p.key.party,
        recipient="line",
        body=body,
        ttl_s=60,
    )
    for msg, task, reason in [
        (forged, REQUEST_TASK, "bad_signature"),
        (genuine, REQUEST_TASK, None),
        (genuine, REQUEST_TASK, "replayed"),
        (dict(genuine, nonce="ab" * 16), REQUEST_TASK, "bad_signature"),
        # relabelled: delivered under another task's name
        (
            seal(
                p.key.key,
                kid=p.key.kid,
                task=REQUEST_TASK,
                sender=p.key.party,
                recipient="line",
                body=body,
                ttl_s=60,
            ),
            "provisioner.upload_device",
            "wrong_task",
        ),
        # an operation the line has not got (appending an audit event, say)
        (
            seal(
                p.key.key,
                kid=p.key.kid,
                task=REQUEST_TASK,
                sender=p.key.party,
                recipient="line",
                body={"op": "append_audit", "socket": 0, "args": {}},
                ttl_s=60,
            ),
            REQUEST_TASK,
            "bad_request",
        ),
    ]:
        before = len(_refusals(line))
        answer = p.gateway.handle(msg, task=task)
        assert answer["body"].get("reason") == reason, (reason, answer["body"])
        assert len(_refusals(line)) == before + (reason is not None)


def test_a_revoked_station_is_refused_at_its_next_message(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    assert remote.load(dev_id).id == dev_id
    revoke_station(line["settings"], line["engine"], "line1", "admin")
    _refused(line, "revoked", lambda: remote.load(dev_id))


def test_a_station_believes_only_its_line(line: dict[str, Any]) -> None:
    (dev_id,) = _batch(line, "line1")
    p = line["parties"]["line1"]
    impostor = SigningKey("line", ec.generate_private_key(ec.SECP256R1()), p.gateway.key.kid)

    def forged_answer(req: dict[str, Any], _t: float) -> object:
        return seal(
            impostor.key,
            kid=impostor.kid,
            task="provisioner.station_reply",
            sender="line",
            recipient=p.key.party,
            body={"in_reply_to": req["nonce"], "result": None},
            ttl_s=60,
        )

    def stale_answer(req: dict[str, Any], _t: float) -> object:
        return p.gateway.handle(
            dict(
                seal(
                    p.key.key,
                    kid=p.key.kid,
                    task=REQUEST_TASK,
                    sender=p.key.party,
                    recipient="line",
                    body=req["body"],
                    ttl_s=60,
                )
            )
        )

    line_cert = x509.load_pem_x509_certificate(
        (line["settings"].line_identity_dir / "line.crt").read_bytes()
    )
    for send, reason in [(forged_answer, "bad_signature"), (stale_answer, "wrong_reply")]:
        remote = RemoteRecords(send, p.key, line_cert, 0, timeout_s=5, sign_timeout_s=5)
        with pytest.raises(LinkRefusedError) as info:
            remote.load(dev_id)
        assert info.value.reason == reason
    assert col  # (imported for queries above)


def test_a_batch_waits_for_no_station_that_cannot_log_in(line: dict[str, Any]) -> None:
    """`batch start` checks the station has a current certificate (a revoked or never
    enrolled one could not even reach the broker) and says what to do."""
    from provisioner.errors import ServiceUnavailableError
    from provisioner.preflight import check_station

    check_station(line["settings"], line["engine"], "line1")
    revoke_station(line["settings"], line["engine"], "line1", "admin")
    for sid in ("line1", "line9"):
        with pytest.raises(ServiceUnavailableError, match=f"station add {sid}"):
            check_station(line["settings"], line["engine"], sid)
