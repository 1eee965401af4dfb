"""The preprovisioned batch mode with the line's gateway between the station and the
records (as on a station PC, without the broker): the station's requests are signed with
its HSM-issued certificate and handed to the gateway in process; real emulated parts
through cryptoauthlib, the real database and the real SoftHSM signer (which must stay
unused). The station is the least trusted party: the line verifies the part's chain again
and refuses what a station may not ask in this mode; each refusal is audited as
``link.refused`` and changes nothing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import func, select

from provisioner import batches
from provisioner.audit.checkpointer import load_audit_key
from provisioner.audit.verify import verify_log
from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.chain import local_material
from provisioner.ca.manufacturer_chain import load_root
from provisioner.chips.connector import Connector
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.chips.emulator.tray import broken_chain, trust_and_go
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Batch, Certificate, FactoryCertificate, Step
from provisioner.enrollment.service import init_line_identity
from provisioner.errors import LinkRefusedError
from provisioner.issuance import IssuanceService
from provisioner.link.gateway import Gateway
from provisioner.link.keys import line_key
from provisioner.link.remote import RemoteRecords
from provisioner.ports import SigningRequest
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun
from tests.link.stations import enroll

REGISTRY = "projects/p/locations/l/registries/r"


@pytest.fixture
def link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, manufacturer: EmulatedManufacturer
) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(
        var_dir=tmp_path / "var",
        stations={"line1": StationSettings(sockets=2, feed="manual")},
    )
    settings.manufacturer_root_file.parent.mkdir(parents=True)
    settings.manufacturer_root_file.write_bytes(manufacturer.root_pem())
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    init_line_identity(settings)
    key = enroll(settings, engine, "line1")
    ca = load_ca(settings)
    signer = IssuanceService(engine, ca, settings.profile)
    verified: list[int] = []
    gateway = Gateway(
        engine,
        "line1",
        line_key(settings),
        signer,
        registry=REGISTRY,
        on_verified=verified.append,
        chain_material=lambda: local_material(settings).as_json(),
        manufacturer_root=lambda: load_root(settings.manufacturer_root_file),
    )
    sent: list[dict[str, Any]] = []

    def send(request: dict[str, Any], _timeout: float) -> object:
        sent.append(request)
        return gateway.handle(request)

    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    remote = RemoteRecords(send, key, line_cert, 0, timeout_s=5, sign_timeout_s=5)
    yield {
        "settings": settings,
        "engine": engine,
        "remote": remote,
        "sent": sent,
        "verified": verified,
        "jig": Connector(settings).jig("line1"),
    }
    ca.close()


def _device(link: dict[str, Any], mode: str = "preprovisioned") -> int:
    part = "trust-and-go" if mode == "preprovisioned" else None
    bid = batches.create_batch(
        link["engine"],
        link["settings"],
        station_id="line1",
        count=1,
        actor="t",
        mode=mode,
        part=part,
    )
    (device_id,) = batches.mark_started(link["engine"], bid, actor="t")
    return device_id


def _run(link: dict[str, Any], device_id: int) -> str:
    run = SocketRun(link["settings"], "line1", 0, link["remote"], holder=f"line1:0:{os.getpid()}")
    return run.run(device_id).kind


def _refusals(link: dict[str, Any]) -> list[str]:
    with transaction(link["engine"]) as s:
        rows = s.exec(select(AuditEvent).where(AuditEvent.event_type == "link.refused")).all()
        return [str(r.payload) for r in rows]


def _count(link: dict[str, Any], table: Any) -> int:
    with transaction(link["engine"]) as s:
        return int(s.exec(select(func.count()).select_from(table)).one())


def test_a_trust_and_go_part_goes_through_the_gateway(
    link: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    device_id = _device(link)
    link["jig"].insert_chip(0, trust_and_go(manufacturer))

    assert _run(link, device_id) == "done"

    ops = [r["body"]["op"] for r in link["sent"]]
    assert "batch_mode" not in ops  # the mode comes with the device's load answer
    for op in ("identify", "manufacturer_root", "record_factory", "challenge"):
        assert op in ops
    assert "record_pop" in ops and "accept_factory" in ops
    assert not {"sign", "record_key", "record_written", "record_verified"} & set(ops)
    assert link["verified"] == [device_id]  # the gateway queued the upload
    with transaction(link["engine"]) as s:
        row = s.exec(select(FactoryCertificate)).one()
        batch = s.exec(select(Batch)).one()
        assert s.get(type(row), row.id) is not None
        assert verify_log(s, load_audit_key(link["settings"])).ok
    assert row.signer_der == manufacturer.signer_der()
    assert _count(link, Certificate) == 0 and batch.issued == 0
    assert _refusals(link) == []


def test_the_line_refuses_a_chain_a_station_vouches_for(
    link: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    """A station that skips its own check (or lies) still cannot record a part whose chain
    does not verify: the line verifies again."""
    device_id = _device(link)
    link["jig"].insert_chip(0, broken_chain(manufacturer, broken="root"))
    remote: RemoteRecords = link["remote"]
    with Connector(link["settings"]).open("emulated:line1/0", address=0x6A) as chip:
        ident = chip.identity()
        remote.identify(device_id, ident.serial_hex, ident.revision.hex(), chip.locator)
        certs = chip.read_factory_certificates(manufacturer.root_public_key())
    with pytest.raises(LinkRefusedError, match="not signed by the trusted manufacturer root"):
        remote.record_factory_certificates(
            device_id, certs.kind, certs.device_der, certs.signer_der
        )
    assert any("bad_certificate" in r for r in _refusals(link))
    assert remote.load(device_id).step == Step.IDENTIFIED
    assert _count(link, FactoryCertificate) == 0


def test_a_station_cannot_mix_the_modes(
    link: dict[str, Any], manufacturer: EmulatedManufacturer
) -> None:
    """No certificate from our CA for a device of a preprovisioned batch, no part's own
    certificate for a device of an issue batch: refused as ``wrong_mode``."""
    remote: RemoteRecords = link["remote"]
    part_device = _device(link)
    remote.identify(part_device, "0123AABBCCDDEEFF01", "00006002", "emulated:line1/0")
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    with pytest.raises(LinkRefusedError, match="mode `preprovisioned`"):
        remote.record_key(part_device, point)
    with pytest.raises(LinkRefusedError):
        remote.sign(
            SigningRequest(part_device, 1, "0123AABBCCDDEEFF01", point, b"c" * 32, b"s" * 64)
        )

    issue_device = _device(link, mode="issue")
    remote.identify(issue_device, "0123AABBCCDDEEFF02", "00006002", "emulated:line1/1")
    signer = manufacturer.signer_der()
    with pytest.raises(LinkRefusedError, match="mode `issue`"):
        remote.record_factory_certificates(issue_device, "tngtls", signer, signer)
    assert sum("wrong_mode" in r for r in _refusals(link)) == 2
    assert _count(link, Certificate) == 0 and _count(link, FactoryCertificate) == 0
