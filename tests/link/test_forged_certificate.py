"""A station writes no certificate its pinned CA chain does not vouch for (issue 20).

A forged answer in place of the signer's (a message on the broker: a certificate signed by
another key under the CA's names, or another chip's genuine certificate replayed) is refused
before any write: the chip's certificate slots stay blank, the device fails with the reason
and its part left in the socket, and ``incident.forged_certificate`` is in the audit trail.
The line's own records (``LocalRecords``) stand in for the broker's answer; a real SoftHSM
signer, real chips through cryptoauthlib and the emulator."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import select

from provisioner import batches, station
from provisioner.audit.verify import verify_log
from provisioner.ca.chain import local_material
from provisioner.chips.certdef import COMP_CERT_SIZE
from provisioner.chips.connector import Connector
from provisioner.chips.library import ZONE_DATA
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent, PartAction, Step
from provisioner.errors import LinkRefusedError
from provisioner.link.gateway import Gateway
from provisioner.link.keys import line_key
from provisioner.link.records import LocalRecords
from provisioner.link.remote import RemoteRecords
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun
from provisioner.station import locator
from tests.link.test_gateway import line as _enrolled_line  # noqa: F401 (fixture `line`)

REGISTRY = "projects/p/locations/l/registries/r"


def _forge(genuine: x509.Certificate) -> bytes:
    """The genuine certificate's every field, signed by a key that is not the CA's."""
    other = ec.generate_private_key(ec.SECP256R1())
    b = (
        x509.CertificateBuilder()
        .subject_name(genuine.subject)
        .issuer_name(genuine.issuer)
        .public_key(genuine.public_key())
        .serial_number(genuine.serial_number)
        .not_valid_before(genuine.not_valid_before_utc)
        .not_valid_after(genuine.not_valid_after_utc)
    )
    for ext in genuine.extensions:
        b = b.add_extension(ext.value, ext.critical)
    return b.sign(other, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class ForgingSigner:
    """The CA signs (and records) the genuine certificate; the station is handed something
    else: ``forged`` (another key's signature) or ``replayed`` (another chip's certificate)."""

    def __init__(self, real: Any, mode: str, replay: IssuedCertificate | None = None) -> None:
        self.real, self.mode, self.replay = real, mode, replay

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        genuine = self.real.sign(request)
        if self.mode == "replayed":
            assert self.replay is not None
            return self.replay
        der = _forge(x509.load_der_x509_certificate(genuine.der))
        return IssuedCertificate(der, genuine.serial_number, hashlib.sha256(der).hexdigest())


def _settings(env: dict[str, Any]) -> Settings:
    st = StationSettings(sockets=1, feed="manual")
    s: Settings = env["settings"].model_copy(update={"stations": {"line1": st}})
    return s


def _run(env: dict[str, Any], settings: Settings, signer: Any) -> SocketRun:
    records = LocalRecords(env["engine"], "line1", 0, signer, registry=REGISTRY)
    return SocketRun(settings, "line1", 0, records, holder="line1:0:test")


def _incidents(env: dict[str, Any]) -> list[AuditEvent]:
    with transaction(env["engine"]) as s:
        assert verify_log(s, None).ok
        q = select(AuditEvent).where(AuditEvent.event_type == "incident.forged_certificate")
        return list(s.exec(q).all())


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("forged", "not signed by the intermediate"), ("replayed", "another public key")],
)
def test_a_forged_result_is_refused_before_any_write(
    env: dict[str, Any], mode: str, reason: str
) -> None:
    settings = _settings(env)
    first, second = batches.mark_started(
        env["engine"],
        batches.create_batch(env["engine"], settings, station_id="line1", count=2, actor="t"),
        actor="t",
    )
    # A genuine device first: the replay needs a real certificate of another chip, and it
    # shows the check lets the CA's own certificates through.
    station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    assert _run(env, settings, env["signer"]).run(first).kind == "done"
    replay = env["ledger"].certificate(first)
    station.remove_chip(env["engine"], settings, "line1", 0, actor="t")
    serial = station.insert_chip(env["engine"], settings, "line1", 0, actor="t")

    out = _run(env, settings, ForgingSigner(env["signer"], mode, replay)).run(second)

    assert out.kind == "failed" and reason in out.detail
    dev = env["ledger"].load(second)
    assert dev.step == Step.CERT_ISSUED  # issued (the CA's own) but never written
    assert dev.action == PartAction.WAIT.value and reason in (dev.error or "")
    with Connector(settings).open(locator(settings, "line1", 0)) as chip:
        assert chip.identity().serial_hex == serial
        assert not chip.has_certificate()
        signer_slot = chip.read_zone(
            ZONE_DATA, settings.chip.profile().signer_cert_slot, 0, COMP_CERT_SIZE
        )
        assert signer_slot in (bytes(COMP_CERT_SIZE), b"\xff" * COMP_CERT_SIZE)
    incidents = _incidents(env)
    assert [(e.device_id, e.chip_serial) for e in incidents] == [(second, serial)]
    assert reason in incidents[0].payload


def test_a_station_pc_reports_the_forgery_through_the_gateway(
    _enrolled_line: dict[str, Any],  # noqa: F811 (the imported fixture)
) -> None:
    """The same on a station PC: the line's answer over the link carries the forged
    certificate; the station refuses it and the gateway records the incident it reports."""
    line = _enrolled_line
    settings, engine = line["settings"], line["engine"]
    gw = Gateway(
        engine,
        "line1",
        line_key(settings),
        ForgingSigner(line["signer"], "forged"),
        registry=REGISTRY,
        chain_material=lambda: local_material(settings).as_json(),
    )
    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    remote = RemoteRecords(
        lambda req, _t: gw.handle(req),
        line["parties"]["line1"].key,
        line_cert,
        0,
        timeout_s=5,
        sign_timeout_s=5,
    )
    bid = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
    (dev_id,) = batches.mark_started(engine, bid, actor="t")
    out = SocketRun(settings, "line1", 0, remote, holder="line1:0:test").run(dev_id)
    assert out.kind == "failed" and "not signed by the intermediate" in out.detail
    with transaction(engine) as s:
        q = select(AuditEvent).where(AuditEvent.event_type == "incident.forged_certificate")
        events = list(s.exec(q).all())
    assert [(e.device_id, e.station_id) for e in events] == [(dev_id, "line1")]
    # A station cannot make up incidents the line does not know.
    with pytest.raises(LinkRefusedError):
        remote.call("fail", {"device": dev_id, "error": "x", "action": "wait", "incident": "x"})
