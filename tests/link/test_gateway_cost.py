"""What one station request costs the line's gateway, counted (not timed): the nonce, the
sender's revocation and the device's check are one transaction, and the socket's live row
is set in the transaction that reads what it shows. And what those cheaper paths still do:
a replay is refused, a revoked station is refused, the socket row and the upload say what
the ORM versions said.

Through the real gateway in process (built like ``tests/link/test_gateway.py``'s: signed
requests and answers, real emulated chips, the real database and signer)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import select

from provisioner import batches, socket_state
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.chain import local_material
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import Device, LinkNonce, RegistryUpload, Step
from provisioner.enrollment.service import init_line_identity, revoke_station
from provisioner.errors import LinkRefusedError
from provisioner.issuance import IssuanceService
from provisioner.link import wire
from provisioner.link.envelope import seal
from provisioner.link.gateway import Gateway
from provisioner.link.keys import line_key
from provisioner.link.remote import RemoteRecords
from provisioner.link.wire import REQUEST_TASK
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun
from tests.link.stations import enroll


@dataclass
class Party:
    """The enrolled station as its PC holds it, and the line's gateway for it."""

    gateway: Gateway
    remote: RemoteRecords
    sent: list[dict[str, Any]]


@pytest.fixture
def line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str) -> Iterator[dict[str, Any]]:
    """One enrolled station ``line1`` (as ``tests/link/test_gateway.py`` builds it), on
    SQLite and on PostgreSQL (the gateway's Core statements run on both)."""
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url=db_url,
        stations={"line1": StationSettings(sockets=1)},
    )
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    init_line_identity(settings)
    skey = enroll(settings, engine, "line1")
    ca = load_ca(settings)
    gw = Gateway(
        engine,
        "line1",
        line_key(settings),
        IssuanceService(engine, ca, settings.profile),
        registry="projects/p/locations/l/registries/r",
        chain_material=lambda: local_material(settings).as_json(),
    )
    sent: list[dict[str, Any]] = []

    def send(req: dict[str, Any], _t: float) -> object:
        sent.append(req)
        return gw.handle(req)

    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    remote = RemoteRecords(send, skey, line_cert, 0, timeout_s=5, sign_timeout_s=5)
    yield {"settings": settings, "engine": engine, "parties": {"line1": Party(gw, remote, sent)}}
    ca.close()


def _batch(line: dict[str, Any], station: str, count: int = 1) -> list[int]:
    bid = batches.create_batch(
        line["engine"], line["settings"], station_id=station, count=count, actor="t"
    )
    return batches.mark_started(line["engine"], bid, actor="t")


def _device(line: dict[str, Any], device_id: int) -> Device:
    with transaction(line["engine"]) as s:
        dev = s.get(Device, device_id)
        assert dev is not None
        return dev


def _run(line: dict[str, Any], station: str, device_id: int) -> str:
    p: Party = line["parties"][station]
    run = SocketRun(line["settings"], station, 0, p.remote, holder=f"{station}:0:{os.getpid()}")
    return run.run(device_id).kind


@contextmanager
def _transactions() -> Iterator[list[str]]:
    """Every database transaction begun meanwhile, on any engine (the gateway's reader
    included), by the URL's database name."""
    begun: list[str] = []

    def on_begin(conn: Any) -> None:
        begun.append(str(conn.engine.url.database))

    event.listen(Engine, "begin", on_begin)
    try:
        yield begun
    finally:
        event.remove(Engine, "begin", on_begin)


def _nonces(line: dict[str, Any]) -> int:
    with transaction(line["engine"]) as s:
        return len(s.exec(select(LinkNonce)).all())


def test_a_read_only_request_is_one_transaction(line: dict[str, Any]) -> None:
    """``load`` (a third of the requests that only read): the nonce spent, the sender's
    certificate checked unrevoked and the device read with its batch, together. Before:
    one transaction for the nonce and another for the check."""
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    remote.load(dev_id)  # the station certificate's key is read once, then kept
    with _transactions() as begun:
        dev = remote.load(dev_id)
    assert dev.step == Step.PENDING and dev.id == dev_id
    assert len(begun) == 1, begun


def test_gate_and_show_are_one_transaction_with_their_nonce(line: dict[str, Any]) -> None:
    """The gate reads the batch and marks the socket busy, ``show`` reads the device's
    serial and sets the row, each in the request's nonce transaction: one commit per
    request. Before: gate 3 transactions in all, show 4."""
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    remote.load(dev_id)
    with _transactions() as begun:
        assert remote.gate(dev_id, Step.IDENTIFIED, announce=True) is True
    assert len(begun) == 1, begun
    with _transactions() as begun:
        remote.show("idle", dev_id, "waiting")
    assert len(begun) == 1, begun


def test_a_replayed_gate_writes_nothing_and_a_refused_one_spends_its_nonce(
    line: dict[str, Any],
) -> None:
    """The socket row and the nonce commit together: a replayed gate is refused and its
    row write rolled back with it; a gate refused after its nonce was taken (bad step)
    still spends the nonce (a replay of it is ``replayed``), like any refused request."""
    (dev_id,) = _batch(line, "line1")
    p: Party = line["parties"]["line1"]
    engine = line["engine"]
    assert p.remote.gate(dev_id, Step.IDENTIFIED, announce=True)
    gate_msg = p.sent[-1]
    p.remote.show("idle", dev_id, "between steps")
    again = p.gateway.handle(gate_msg)
    assert again["body"]["reason"] == "replayed"
    (row,) = socket_state.read(engine, "line1")
    assert (row.state, row.detail) == ("idle", "between steps")
    before = _nonces(line)
    with pytest.raises(LinkRefusedError) as info:
        p.remote.call("gate", {"device": dev_id, "step": 12345, "announce": True})
    assert info.value.reason == "bad_request"
    assert _nonces(line) == before + 1
    assert p.gateway.handle(p.sent[-1])["body"]["reason"] == "replayed"
    (row,) = socket_state.read(engine, "line1")
    assert (row.state, row.detail) == ("idle", "between steps")


def test_the_socket_row_says_what_it_said(line: dict[str, Any]) -> None:
    """The Core writes of the socket's row: made when the socket has none, updated after,
    with the device's serial once it is known (what ``station status`` shows)."""
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    engine = line["engine"]
    assert socket_state.read(engine, "line1") == []
    assert remote.gate(dev_id, Step.IDENTIFIED, announce=True)
    (row,) = socket_state.read(engine, "line1")
    assert (row.socket, row.state, row.device_id, row.chip_serial, row.detail) == (
        0,
        "busy",
        dev_id,
        None,
        "step identified",
    )
    serial = "0123" + "EE" * 7
    remote.identify(dev_id, serial, "00006002", "emulated:line1/0")
    remote.show("insert_chip", dev_id, "put a chip in")
    (row,) = socket_state.read(engine, "line1")
    assert (row.state, row.device_id, row.chip_serial, row.detail) == (
        "insert_chip",
        dev_id,
        serial,
        "put a chip in",
    )
    assert remote.gate(dev_id, Step.KEY_GENERATED, announce=False)  # reads only
    (after,) = socket_state.read(engine, "line1")
    assert (after.state, after.detail, after.updated_at) == (row.state, row.detail, row.updated_at)


def test_the_load_answer_is_the_device_as_recorded(line: dict[str, Any]) -> None:
    """The check's row (not an ORM object) answers ``load`` with the same fields."""
    (dev_id,) = _batch(line, "line1")
    remote = line["parties"]["line1"].remote
    remote.identify(dev_id, "0123" + "AA" * 7, "00006002", "emulated:line1/0")
    answer = remote.call("load", {"device": dev_id})
    expected = wire.device_to_json(_device(line, dev_id))
    assert {k: answer[k] for k in expected} == expected
    assert answer["mode"] == "issue" and answer["part"] is None


def test_a_replay_and_a_revoked_station_are_still_refused(line: dict[str, Any]) -> None:
    """The nonce is still spent once (a replayed request refused and audited, nothing
    read for it), and revocation is still read with each nonce: a revoked station's next
    request spends no nonce."""
    (dev_id,) = _batch(line, "line1")
    p: Party = line["parties"]["line1"]
    p.remote.load(dev_id)
    again = p.gateway.handle(p.sent[-1])
    assert again["body"]["reason"] == "replayed"
    before = _nonces(line)
    revoke_station(line["settings"], line["engine"], "line1", actor="admin")
    with pytest.raises(LinkRefusedError) as info:
        p.remote.load(dev_id)
    assert info.value.reason == "revoked"
    assert _nonces(line) == before


def test_a_verified_device_is_queued_for_its_serials_registry_id(line: dict[str, Any]) -> None:
    """record_verified no longer loads the device first: the upload's registry id comes
    from the serial read in the upload's own transaction."""
    (dev_id,) = _batch(line, "line1")
    assert _run(line, "line1", dev_id) == "done"
    dev = _device(line, dev_id)
    assert dev.step == Step.CERT_VERIFIED and dev.chip_serial
    with transaction(line["engine"]) as s:
        upload = s.exec(select(RegistryUpload).where(RegistryUpload.device_id == dev_id)).one()
    assert upload.registry_device_id == "sn" + dev.chip_serial.lower()


@pytest.mark.parametrize("op", [["load"], {"op": "load"}, None, "load"])
def test_a_malformed_request_is_refused_not_read(line: dict[str, Any], op: object) -> None:
    """The device is read with the nonce only for a device operation with a well-formed
    device id: any other operation or id is answered ``bad_request`` (audited), as before."""
    (dev_id,) = _batch(line, "line1")
    p: Party = line["parties"]["line1"]
    msg = seal(
        p.remote.key.key,
        kid=p.remote.key.kid,
        task=REQUEST_TASK,
        sender=p.remote.key.party,
        recipient="line",
        body={"op": op, "socket": 0, "args": {"device": dev_id if op != "load" else [dev_id]}},
        ttl_s=60,
    )
    answer = p.gateway.handle(msg)
    assert answer["body"]["reason"] == "bad_request", answer["body"]
