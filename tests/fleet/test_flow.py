"""Thistle's enrollment end to end over real HTTPS: ``POST /enroll`` with the enrollment
token header and a label form field, then the identity certificate with a CSR (the
default, the key stays on the device) or with a key the server made (the document's mode);
the device then exists in the registry with that certificate as its credential. Every step
audited, no token or server-made key stored anywhere."""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.ca.ceremony import store_of
from provisioner.fleet.identity import device_path
from tests.cloud.inprocess import REGISTRY_NAME
from tests.fleet.conftest import Fleet, MakeFleet, csr_for


def events(engine: Engine, event_type: str) -> list[dict[str, Any]]:
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT actor, payload FROM audit_event WHERE event_type = :t ORDER BY seq"),
            {"t": event_type},
        ).all()
    return [{"actor": a, **json.loads(p)} for a, p in rows]


def everything_stored(fleet: Fleet) -> str:
    """Every row of every table, as text (what a database dump would show)."""
    out = []
    with fleet.engine.connect() as c:
        names = [r[0] for r in c.execute(text("SELECT name FROM sqlite_master WHERE type='table'"))]
        for name in names:
            out += [str(r) for r in c.execute(text(f'SELECT * FROM "{name}"'))]
    return "\n".join(out)


def _verify(fleet: Fleet, cert: x509.Certificate, chain_pem: str) -> None:
    inter, root = x509.load_pem_x509_certificates(chain_pem.encode())
    assert root.public_bytes(serialization.Encoding.PEM) == fleet.root_pem.read_bytes()
    verifier = PolicyBuilder().store(Store([root])).build_client_verifier()
    verified = verifier.verify(cert, [inter])
    assert verified.chain[-1] == root


def test_csr_mode_end_to_end_with_the_documents_shapes(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    token = fleet.token()
    device = fleet.device()

    r = device.enroll(token, label="pump 7")
    assert r.status_code == 200, r.text
    enrolled = r.json()
    device_id, device_token = enrolled["device_id"], enrolled["device_token"]
    assert device_id and device_token and device_token != token

    key = ec.generate_private_key(ec.SECP256R1())
    r = device.identity_csr(device_token, csr_for(key, cn="whatever the device says"))
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["device_id"] == device_id
    assert "device_private_key_pem" not in answer  # the key never left the device
    cert = x509.load_pem_x509_certificate(answer["device_certificate_pem"].encode())
    _verify(fleet, cert, answer["ca_chain_pem"])

    # the identity profile: the device's key, CN = device id, the device's path in the
    # SAN URI, client auth, CRL and OCSP of the issuing intermediate
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == device_id
    assert device_path(cert) == f"{REGISTRY_NAME}/devices/{device_id}"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    ca_name = store_of(fleet.settings).current_name(fleet.settings.hsm.ca_key_label)
    assert [n.value for n in cdp[0].full_name or []] == [f"http://api.test:1/crl/{ca_name}.crl"]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in aia] == [
        (AuthorityInformationAccessOID.OCSP, "http://api.test:1/ocsp")
    ]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == fleet.settings.fleet.identity_validity_days

    # the registry has the device, with this certificate as its only credential
    reg = fleet.registry_device(device_id)
    creds = [c["publicKey"] for c in reg["credentials"]]
    assert creds == [{"format": "ES256_X509_PEM", "key": answer["device_certificate_pem"]}]

    # audited; no token is stored or audited in the clear
    (enrolled_ev,) = events(fleet.engine, "fleet.enrolled")
    assert enrolled_ev["device"] == device_id and enrolled_ev["label"] == "pump 7"
    (issued,) = events(fleet.engine, "fleet.identity_issued")
    assert issued["serial"] == format(cert.serial_number, "x")
    assert issued["key_source"] == "csr" and issued["device"] == device_id
    dump = everything_stored(fleet)
    assert token not in dump and device_token not in dump

    # the device token gets one identity; later certificates come by renewal
    r = device.identity_csr(device_token, csr_for(key))
    assert r.status_code == 409, r.text
    assert events(fleet.engine, "fleet.identity_refused")[-1]["reason"] == "identity_exists"


def test_server_key_mode_and_json_label(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    device = fleet.device()
    # the label may come as JSON too
    with device._http() as c:
        r = c.post(
            "/enroll",
            headers={"Thistle-Device-Enrollment-Token": fleet.token()},
            json={"label": "json label"},
        )
    assert r.status_code == 200, r.text
    device_token = r.json()["device_token"]
    r = device.identity(device_token)  # GET /identity: the document's answer
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert {"device_id", "device_certificate_pem", "device_private_key_pem"} <= set(body)
    key = serialization.load_pem_private_key(body["device_private_key_pem"].encode(), None)
    cert = x509.load_pem_x509_certificate(body["device_certificate_pem"].encode())
    assert cert.public_key() == key.public_key()
    assert events(fleet.engine, "fleet.identity_issued")[0]["key_source"] == "server"
    assert events(fleet.engine, "fleet.enrolled")[0]["label"] == "json label"
    # made for that answer only: stored nowhere, audited nowhere
    secret = body["device_private_key_pem"].split("\n")[1]
    assert secret not in everything_stored(fleet)


def test_server_keys_can_be_turned_off(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(allow_server_keys=False)
    device = fleet.device()
    device_token = device.enroll(fleet.token()).json()["device_token"]
    r = device.identity(device_token)
    assert r.status_code == 403, r.text
    assert "CSR" in r.json()["error"]["message"]
    (refused,) = events(fleet.engine, "fleet.identity_refused")
    assert refused["reason"] == "server_keys_disabled"
    # the CSR mode still works
    r = device.identity_csr(device_token, csr_for(ec.generate_private_key(ec.SECP256R1())))
    assert r.status_code == 200, r.text


def test_bad_csrs_and_device_tokens_are_refused_and_audited(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    device = fleet.device()
    device_token = device.enroll(fleet.token()).json()["device_token"]
    r = device.identity_csr(
        "fdt_not-a-device-token", csr_for(ec.generate_private_key(ec.SECP256R1()))
    )
    assert r.status_code == 401
    assert events(fleet.engine, "fleet.identity_refused")[0]["reason"] == "unknown_device_token"
    # a P-384 key, and a CSR whose signature does not match its key (no proof of possession)
    p384 = csr_for(ec.generate_private_key(ec.SECP384R1()))
    assert device.identity_csr(device_token, p384).status_code == 422
    good = x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())).encode())
    der = bytearray(good.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    with device._http() as c:
        r = c.post(
            "/identity",
            content=bytes(der),
            headers={
                "Authorization": f"Bearer {device_token}",
                "Content-Type": "application/pkcs10",
            },
        )
    assert r.status_code == 422, r.text
    reasons = [e["reason"] for e in events(fleet.engine, "fleet.identity_refused")]
    assert reasons == ["unknown_device_token", "bad_csr"]  # the 2nd bad CSR: counted in the 1st
    assert device_token not in everything_stored(fleet)
    # nothing was issued, and the device may still get its identity: here a PEM body sent
    # as `curl --data-binary @dev.csr` sends it, under the form content type
    with device._http() as c:
        r = c.post(
            "/identity",
            content=csr_for(ec.generate_private_key(ec.SECP256R1())).encode(),
            headers={
                "Authorization": f"Bearer {device_token}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
    assert r.status_code == 200, r.text


def test_a_dead_registry_withdraws_the_certificate(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(registry_up=False)
    device = fleet.device()
    device_token = device.enroll(fleet.token()).json()["device_token"]
    key = ec.generate_private_key(ec.SECP256R1())
    r = device.identity_csr(device_token, csr_for(key))
    assert r.status_code == 503, r.text
    assert "not handed out" in r.json()["error"]["message"]
    (issued,) = events(fleet.engine, "fleet.identity_issued")
    (withdrawn,) = events(fleet.engine, "fleet.identity_withdrawn")
    assert withdrawn["serial"] == issued["serial"]
    with fleet.engine.connect() as c:
        reason = c.execute(text("SELECT reason FROM identity_certificate")).scalar_one()
    assert reason == "superseded"  # on the CRL, in case; it never left the server


def test_requests_past_the_rate_are_refused_with_retry_after(make_fleet: MakeFleet) -> None:
    fleet = make_fleet(rate_per_minute=3)
    device = fleet.device()
    codes = [device.enroll("fet_guess").status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]
    r = device.enroll("fet_guess")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
