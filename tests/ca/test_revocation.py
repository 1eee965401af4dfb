"""Revocation and CRLs: signed in SoftHSM, checked by openssl, served by the API process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlmodel import select

from provisioner import batches
from provisioner.audit.verify import verify_log
from provisioner.ca import revocation
from provisioner.ca.ceremony import init_ca, load_ca, rotate
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent, Revocation
from provisioner.errors import InvalidInputError, NotFoundError
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import IssuedCertificate
from provisioner.settings import Settings
from tests.conftest import Station, free_port
from tests.core.test_issuance_policy import _ready_device
from tests.e2e.test_end_to_end import cli


@pytest.fixture
def issued(
    ca_settings: Settings,
) -> Iterator[tuple[Settings, object, list[IssuedCertificate], list[str]]]:
    """Three device certificates issued by the SoftHSM CA."""
    init_ca(ca_settings)
    engine = make_engine(ca_settings.db_url)
    create_schema(engine)
    batch_id = batches.create_batch(engine, ca_settings, station_id="line1", count=3, actor="t")
    ledger = DeviceLedger(engine, "station:line1", "line1")
    ids = batches.mark_started(engine, batch_id, actor="t")
    reqs = [_ready_device(ledger, d, 40 + i) for i, d in enumerate(ids)]
    svc = IssuanceService.open(engine, ca_settings)
    try:
        certs = [svc.sign(r) for r in reqs]
    finally:
        svc.close()
    yield ca_settings, engine, certs, [r.chip_serial_hex for r in reqs]


def _publish(settings: Settings, engine: object) -> list[revocation.PublishedCrl]:
    ca = load_ca(settings)
    try:
        return revocation.publish(settings, engine, ca, "admin:test")  # type: ignore[arg-type]
    finally:
        ca.close()


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True)


def test_revoke_by_each_kind_of_name_and_publish(issued: tuple, tmp_path: Path) -> None:
    settings, engine, certs, serials = issued
    first = _publish(settings, engine)
    assert [(p.name, p.number, p.entries) for p in first] == [("intermediate-ca", 1, 0)]
    by_device = revocation.revoke(engine, "1", "key_compromise", "admin:t")
    by_chip = revocation.revoke(engine, serials[1].lower(), "cessation_of_operation", "admin:t")
    hex_serial = format(certs[2].serial_number, "X")
    by_cert = revocation.revoke(engine, "0x" + hex_serial, "unspecified", "admin:t")
    assert not (by_device.already or by_chip.already or by_cert.already)
    again = revocation.revoke(engine, "1", "superseded", "admin:t")
    assert again.already and again.reason == "key_compromise"  # unchanged
    (crl_info,) = _publish(settings, engine)
    assert crl_info.number == 2 and crl_info.entries == 3
    crl = x509.load_der_x509_crl(crl_info.path.read_bytes())
    inter = x509.load_pem_x509_certificate((settings.ca_dir / "intermediate.pem").read_bytes())
    assert crl.is_signature_valid(inter.public_key())  # type: ignore[arg-type]
    reasons = {}
    for entry in crl:
        try:
            reasons[entry.serial_number] = entry.extensions.get_extension_for_class(
                x509.CRLReason
            ).value.reason
        except x509.ExtensionNotFound:
            reasons[entry.serial_number] = None
    assert reasons == {
        certs[0].serial_number: x509.ReasonFlags.key_compromise,
        certs[1].serial_number: x509.ReasonFlags.cessation_of_operation,
        certs[2].serial_number: None,  # "unspecified" carries no reason code (RFC 5280)
    }
    with transaction(engine) as s:
        kinds = [e.event_type for e in s.exec(select(AuditEvent).order_by(AuditEvent.seq))]
        assert len(s.exec(select(Revocation)).all()) == 3
        assert verify_log(s, None).ok
    assert kinds.count("ca.certificate_revoked") == 3 and kinds.count("ca.crl_published") == 2

    # openssl agrees: the CRL verifies, a revoked device fails, a good one passes.
    crl_pem = tmp_path / "crl.pem"
    crl_pem.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    chain_pem = tmp_path / "chain.pem"
    chain_pem.write_bytes(
        (settings.ca_dir / "root.pem").read_bytes()
        + (settings.ca_dir / "intermediate.pem").read_bytes()
    )
    checked = _openssl("crl", "-in", str(crl_pem), "-CAfile", str(chain_pem), "-noout")
    assert checked.returncode == 0 and "verify OK" in checked.stderr + checked.stdout, checked
    revoked_pem = tmp_path / "revoked.pem"
    revoked_pem.write_bytes(
        x509.load_der_x509_certificate(certs[0].der).public_bytes(serialization.Encoding.PEM)
    )
    denied = _openssl(
        "verify", "-crl_check", "-CAfile", str(chain_pem), "-CRLfile", str(crl_pem),
        str(revoked_pem),
    )  # fmt: skip
    assert denied.returncode != 0 and "certificate revoked" in denied.stdout + denied.stderr


def test_unknown_targets_and_reasons_are_refused(issued: tuple) -> None:
    _, engine, _, _ = issued
    with pytest.raises(NotFoundError, match="no certificate for '999'"):
        revocation.revoke(engine, "999", "superseded", "admin:t")
    with pytest.raises(NotFoundError):
        revocation.revoke(engine, "0123FFFFFFFFFFFFEE", "superseded", "admin:t")
    with pytest.raises(InvalidInputError, match="unknown revocation reason 'stolen'"):
        revocation.revoke(engine, "1", "stolen", "admin:t")
    with transaction(engine) as s:
        assert s.exec(select(Revocation)).all() == []


def test_rotated_intermediates_keep_their_own_crl(issued: tuple) -> None:
    settings, engine, _, _ = issued
    revocation.revoke(engine, "2", "superseded", "admin:t")
    rotate(settings)
    published = {p.name: p for p in _publish(settings, engine)}
    assert set(published) == {"intermediate-ca", "intermediate-ca-2"}
    assert published["intermediate-ca"].entries == 1
    assert published["intermediate-ca-2"].entries == 0
    old = x509.load_pem_x509_certificate(
        (settings.ca_dir / "intermediates" / "intermediate-ca.pem").read_bytes()
    )
    crl = x509.load_der_x509_crl(published["intermediate-ca"].path.read_bytes())
    assert crl.is_signature_valid(old.public_key())  # type: ignore[arg-type]


def _cli(station: Station, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(station, *args, check=False)


def test_cli_revoke_and_the_api_serves_the_crl(station: Station) -> None:
    assert _cli(station, "ca", "init").returncode == 0
    settings = station.settings
    engine = make_engine(settings.db_url)
    create_schema(engine)
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=1, actor="t")
    (dev,) = batches.mark_started(engine, batch_id, actor="t")
    req = _ready_device(DeviceLedger(engine, "station:line1", "line1"), dev, 77)
    os.environ["SOFTHSM2_CONF"] = str(settings.softhsm_conf)
    svc = IssuanceService.open(engine, settings)
    try:
        cert = svc.sign(req)
    finally:
        svc.close()
    bad = _cli(station, "ca", "revoke", str(dev), "--reason", "lost")
    assert bad.returncode != 0 and "unknown revocation reason" in bad.stderr
    done = _cli(
        station, "ca", "revoke", req.chip_serial_hex, "--reason", "key_compromise", "--json"
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["serial_number"] == format(cert.serial_number, "x")
    assert out["crls"][0]["entries"] == 1
    url = out["crls"][0]["url"]
    assert url == f"{settings.api_url}/crl/intermediate-ca.crl"
    pin = settings.pin_file.read_text().strip()
    assert pin not in done.stdout + done.stderr

    port = settings.api.listen_port
    api = subprocess.Popen(
        [sys.executable, "-m", "provisioner.api"],
        env=station.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        served = httpx.get(url, timeout=5)
        assert served.status_code == 200
        assert served.headers["content-type"] == "application/pkix-crl"
        assert served.content == (settings.ca_dir / "crl" / "intermediate-ca.crl").read_bytes()
        crl = x509.load_der_x509_crl(served.content)
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        root = httpx.get(base + "/ca/root.pem", timeout=5)
        assert root.status_code == 200 and b"BEGIN CERTIFICATE" in root.content
        for path in ("/crl/nope.crl", "/crl/..%2F..%2Fhsm%2Ffactory.pin", "/ca/..%2Fhsm.pem"):
            r = httpx.get(base + path, timeout=5)
            assert r.status_code == 404, path
            assert pin.encode() not in r.content
    finally:
        api.terminate()
        api.wait(10)
    assert free_port()  # the port helper still works after the server stopped
