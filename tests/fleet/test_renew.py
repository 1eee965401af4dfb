"""Renewal over mTLS on a real TLS server: the device presents its identity certificate,
gets a new one (same key, or a new CSR), the old one is revoked as superseded and the
registry credential replaced; revoked, foreign, missing or too-early certificates are
refused and audited. Then ``fleet revoke``: device, certificates, registry block, CRL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text

from provisioner.ca.ceremony import store_of
from provisioner.ca.revocation import crl_path
from provisioner.fleet import service
from tests.fleet.conftest import Fleet, MakeFleet, csr_for
from tests.fleet.test_flow import events


def _enrolled(
    fleet: Fleet, tmp: Path, name: str
) -> tuple[str, str, tuple[Path, Path], ec.EllipticCurvePrivateKey]:
    """A device with its identity: (device id, device token, (cert file, key file), key)."""
    device = fleet.device()
    enrolled = device.enroll(fleet.token()).json()
    key = ec.generate_private_key(ec.SECP256R1())
    r = device.identity_csr(enrolled["device_token"], csr_for(key))
    assert r.status_code == 200, r.text
    cert_file, key_file = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_file.write_text(r.json()["device_certificate_pem"])
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return enrolled["device_id"], enrolled["device_token"], (cert_file, key_file), key


def _revoked(fleet: Fleet) -> dict[str, str | None]:
    with fleet.engine.connect() as c:
        return dict(c.execute(text("SELECT serial_number, reason FROM identity_certificate")).all())


def _serial(pem: str) -> str:
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


def test_renewal_over_mtls_same_key_then_new_csr(make_fleet: MakeFleet, tmp_path: Path) -> None:
    # every certificate is inside its renewal window from the start
    fleet = make_fleet(identity_validity_days=10, renew_window_days=30)
    device_id, _, files, key = _enrolled(fleet, tmp_path, "first")
    first = _serial(files[0].read_text())

    r = fleet.device(client_cert=files).renew()  # empty body: same key
    assert r.status_code == 200, r.text
    second_pem = r.json()["device_certificate_pem"]
    second = x509.load_pem_x509_certificate(second_pem.encode())
    assert second.public_key() == key.public_key()
    assert _revoked(fleet) == {first: "superseded", _serial(second_pem): None}
    creds = fleet.registry_device(device_id)["credentials"]
    assert [c["publicKey"]["key"] for c in creds] == [second_pem]  # replaced, not added
    (renewed,) = events(fleet.engine, "fleet.renewed")
    assert renewed == {
        "actor": f"device:{device_id}",
        "device": device_id,
        "superseded": first,
        "serial": _serial(second_pem),
    }

    # the superseded certificate renews nothing
    r = fleet.device(client_cert=files).renew()
    assert r.status_code == 403, r.text
    assert events(fleet.engine, "fleet.renew_refused")[-1]["reason"] == "certificate_revoked"

    # a new key by CSR, authenticated with the current certificate
    files[0].write_text(second_pem)
    new_key = ec.generate_private_key(ec.SECP256R1())
    r = fleet.device(client_cert=files).renew(csr_for(new_key))
    assert r.status_code == 200, r.text
    third = x509.load_pem_x509_certificate(r.json()["device_certificate_pem"].encode())
    assert third.public_key() == new_key.public_key()
    assert _revoked(fleet)[_serial(second_pem)] == "superseded"

    # no client certificate: 401
    r = fleet.device().renew()
    assert r.status_code == 401, r.text
    reasons = [e["reason"] for e in events(fleet.engine, "fleet.renew_refused")]
    assert reasons == ["certificate_revoked", "no_client_certificate"]


def test_renewal_outside_the_window_is_refused(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(identity_validity_days=365, renew_window_days=30)
    _, _, files, _ = _enrolled(fleet, tmp_path, "early")
    r = fleet.device(client_cert=files).renew()
    assert r.status_code == 403, r.text
    assert "too early" in r.json()["error"]["message"]
    # 340 days on, the same certificate renews (unit level: the clock is an argument)
    cert = x509.load_pem_x509_certificate(files[0].read_bytes())
    later = cert.not_valid_before_utc + timedelta(days=340)
    answer = service.renew(fleet.settings, fleet.engine, cert, None, now=later, ca=fleet.keeper)
    assert answer.device_id == cert.subject.rfc4514_string().split("CN=")[1].split(",")[0]
    reasons = [e["reason"] for e in events(fleet.engine, "fleet.renew_refused")]
    assert reasons == ["outside_renew_window"]


def test_fleet_revoke_cuts_the_device_off(make_fleet: MakeFleet, tmp_path: Path) -> None:
    fleet = make_fleet(identity_validity_days=10, renew_window_days=30)
    device_id, device_token, files, _ = _enrolled(fleet, tmp_path, "gone")
    other_id, _, _, _ = _enrolled(fleet, tmp_path, "stays")
    serial = _serial(files[0].read_text())

    done = service.revoke_device(
        fleet.settings, fleet.engine, device_id, "admin:ada", "key_compromise", ca=fleet.keeper
    )
    assert done.serials == [serial] and not done.already
    assert done.registry_blocked and done.registry_error is None and done.crl_error is None
    assert fleet.registry_device(device_id).get("blocked") is True
    assert fleet.registry_device(other_id).get("blocked") in (None, False)
    assert _revoked(fleet)[serial] == "key_compromise"
    # in the published CRL of the issuing intermediate, with its reason
    ca_name = store_of(fleet.settings).current_name(fleet.settings.hsm.ca_key_label)
    crl = x509.load_der_x509_crl(crl_path(fleet.settings, ca_name).read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(int(serial, 16))
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    (ev,) = events(fleet.engine, "fleet.device_revoked")
    assert ev["serials"] == [serial] and ev["reason"] == "key_compromise"

    # no identity, no renewal any more
    r = fleet.device().identity_csr(device_token, csr_for(ec.generate_private_key(ec.SECP256R1())))
    assert r.status_code == 403, r.text
    r = fleet.device(client_cert=files).renew()
    assert r.status_code == 403, r.text
    # again: idempotent, nothing new to revoke
    again = service.revoke_device(
        fleet.settings, fleet.engine, device_id, "admin:ada", ca=fleet.keeper
    )
    assert again.already and again.serials == []


def test_revoke_unknown_device_or_reason(make_fleet: MakeFleet) -> None:
    from provisioner.errors import InvalidInputError, NotFoundError

    fleet = make_fleet()
    with pytest.raises(NotFoundError):
        service.revoke_device(fleet.settings, fleet.engine, "fd-nope", "admin:ada", ca=fleet.keeper)
    with pytest.raises(InvalidInputError):
        service.revoke_device(fleet.settings, fleet.engine, "fd-nope", "admin:ada", "bored")
