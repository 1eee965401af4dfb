"""Cloud IoT rules the registry enforces, in-process: the registry CA rule, roles, PATCH,
DELETE, list filters and paging, metadata limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from fastapi.testclient import TestClient

from provisioner.cloud.tokens import Role
from tests.cloud.helpers import certificate_pem, credential, public_key_pem, rsa_key
from tests.cloud.inprocess import PARENT, REGISTRY_NAME, TOKENS, make_registry

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def make_cert(subject: str, key: Key, issuer: str, signer: Key, ca: bool = False) -> str:
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return pem_of(cert)


class CA:
    def __init__(self, name: str, key: Key | None = None) -> None:
        self.name = name
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        self.pem = make_cert(name, self.key, name, self.key, ca=True)

    def issue(self, subject: str = "sn-dev") -> str:
        return make_cert(subject, ec.generate_private_key(ec.SECP256R1()), self.name, self.key)


def ca_credential(pem: str, fmt: str | int = "X509_CERTIFICATE_PEM") -> dict[str, Any]:
    return {"publicKeyCertificate": {"format": fmt, "certificate": pem}}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return TestClient(make_registry(tmp_path).app)


def call(
    c: TestClient, method: str, path: str, role: Role = Role.ADMIN, **kw: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKENS[role]}"}
    return c.request(method, f"/v1/{path}", headers=headers, **kw)


def assert_error(resp: httpx.Response, code: int, status: str, text: str = "") -> None:
    assert resp.status_code == code, resp.text
    err = resp.json()["error"]
    assert err["code"] == code and err["status"] == status, err
    assert text in err["message"], err["message"]


def new_registry(c: TestClient, rid: str, **fields: Any) -> httpx.Response:
    return call(c, "POST", f"{PARENT}/registries", json={"id": rid, **fields})


def new_device(
    c: TestClient, registry: str, did: str, *creds: dict[str, Any], **fields: Any
) -> httpx.Response:
    body = {"id": did, "credentials": list(creds), **fields}
    return call(c, "POST", f"{registry}/devices", Role.WRITER, json=body)


# --- the registry CA rule --------------------------------------------------------------------


def test_registry_with_ca_accepts_only_certificates_it_signed(client: TestClient) -> None:
    ca, other = CA("Factory CA"), CA("Factory CA")  # same name, different key
    made = new_registry(client, "reg-ca", credentials=[ca_credential(ca.pem)])
    assert made.status_code == 200, made.text
    details = made.json()["credentials"][0]["publicKeyCertificate"]["x509Details"]
    assert details["subject"] == "CN=Factory CA" and details["publicKeyType"] == "EC"
    assert details["expiryTime"].endswith("Z") and "SHA256" in details["signatureAlgorithm"]
    reg = f"{PARENT}/registries/reg-ca"

    ok = new_device(client, reg, "sn-ok", credential("ES256_X509_PEM", ca.issue()))
    assert ok.status_code == 200, ok.text
    # Issuer name matches, signature does not: the signature is what counts.
    forged = new_device(client, reg, "sn-forged", credential("ES256_X509_PEM", other.issue()))
    assert_error(
        forged,
        403,
        "PERMISSION_DENIED",
        "The signature of device credential in position 0 could not be verified against any "
        "registry certificate",
    )
    self_signed = new_device(
        client,
        reg,
        "sn-self",
        credential("ES256_X509_PEM", ca.issue()),
        credential("ES256_X509_PEM", certificate_pem()),
    )
    assert_error(self_signed, 403, "PERMISSION_DENIED", "credential in position 1")
    bare = public_key_pem(ec.generate_private_key(ec.SECP256R1()))
    assert_error(
        new_device(client, reg, "sn-bare", credential("ES256_PEM", bare)),
        400,
        "INVALID_ARGUMENT",
        "The device credential in position 0 must be an X.509 certificate.",
    )
    assert_error(
        new_device(client, reg, "sn-copy", credential("ES256_X509_PEM", ca.pem)),
        400,
        "INVALID_ARGUMENT",
        "must differ from every registry certificate",
    )
    # PATCH is held to the same rule; the refused patch leaves the device as it was.
    patch = call(
        client,
        "PATCH",
        f"{reg}/devices/sn-ok",
        Role.WRITER,
        params={"updateMask": "credentials"},
        json={"credentials": [credential("ES256_X509_PEM", other.issue())]},
    )
    assert_error(patch, 403, "PERMISSION_DENIED", "position 0")
    assert call(client, "GET", f"{reg}/devices/sn-ok").json() == ok.json()


def test_any_of_several_cas_and_rsa_cas(client: TestClient) -> None:
    first, second = CA("CA one"), CA("CA two", rsa_key(2048))
    creds = [ca_credential(first.pem), ca_credential(second.pem, fmt=1)]
    assert new_registry(client, "reg-two", credentials=creds).status_code == 200
    reg = f"{PARENT}/registries/reg-two"
    ok = new_device(client, reg, "sn-2", credential("ES256_X509_PEM", second.issue()))
    assert ok.status_code == 200, ok.text


def test_ca_added_later_only_constrains_new_credentials(client: TestClient) -> None:
    assert new_registry(client, "reg-late").status_code == 200
    reg = f"{PARENT}/registries/reg-late"
    assert new_device(
        client, reg, "sn-old", credential("ES256_X509_PEM", certificate_pem())
    ).is_success
    ca = CA("Late CA")
    patched = call(
        client,
        "PATCH",
        f"{PARENT}/registries/reg-late",
        params={"updateMask": "credentials"},
        json={"credentials": [ca_credential(ca.pem)]},
    )
    assert patched.status_code == 200 and len(patched.json()["credentials"]) == 1
    assert call(client, "GET", f"{reg}/devices/sn-old").status_code == 200
    refused = new_device(client, reg, "sn-new", credential("ES256_X509_PEM", certificate_pem()))
    assert_error(refused, 403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("creds", "text"),
    [
        (lambda: [ca_credential(CA("x").pem)] * 11, "at most 10 credentials; 11 were given"),
        (lambda: [ca_credential(certificate_pem(rsa_key(1024)))], "1024-bit RSA key"),
        (
            lambda: [ca_credential(certificate_pem(ec.generate_private_key(ec.SECP384R1())))],
            "RSA (2048 bits or more) or P-256",
        ),
        (lambda: [ca_credential(CA("x").pem, fmt="RSA_X509_PEM")], "invalid format"),
        (lambda: [ca_credential("garbage")], "not a valid PEM X.509 certificate"),
        (lambda: [{"publicKeyCertificate": {"format": 1}}], "has no certificate"),
    ],
)
def test_registry_credential_rules(client: TestClient, creds: Any, text: str) -> None:
    assert_error(
        new_registry(client, "reg-bad", credentials=creds()), 400, "INVALID_ARGUMENT", text
    )
    assert_error(call(client, "GET", f"{PARENT}/registries/reg-bad"), 404, "NOT_FOUND")


# --- roles -----------------------------------------------------------------------------------


def test_roles(client: TestClient) -> None:
    dev = f"{REGISTRY_NAME}/devices/sn-role"
    denied = new_registry(client, "reg-r")
    assert denied.status_code == 200  # admin
    assert_error(
        call(client, "POST", f"{PARENT}/registries", Role.WRITER, json={"id": "reg-w"}),
        403,
        "PERMISSION_DENIED",
        "Permission 'cloudiot.registries.create' denied",
    )
    assert_error(
        call(client, "POST", f"{REGISTRY_NAME}/devices", Role.READER, json={"id": "sn-role"}),
        403,
        "PERMISSION_DENIED",
        "cloudiot.devices.create",
    )
    assert new_device(client, REGISTRY_NAME, "sn-role").status_code == 200  # writer
    assert call(client, "GET", dev, Role.READER).status_code == 200
    assert call(client, "GET", f"{REGISTRY_NAME}/devices", Role.READER).status_code == 200
    assert_error(
        call(client, "PATCH", dev, Role.READER, params={"updateMask": "blocked"}, json={}),
        403,
        "PERMISSION_DENIED",
        "cloudiot.devices.update",
    )
    assert_error(call(client, "DELETE", dev, Role.WRITER), 403, "PERMISSION_DENIED")
    assert_error(
        call(client, "DELETE", f"{PARENT}/registries/reg-r", Role.WRITER), 403, "PERMISSION_DENIED"
    )
    assert call(client, "DELETE", dev).status_code == 200  # admin
    for headers in ({}, {"Authorization": "Bearer tok-nobody"}):
        assert_error(client.get(f"/v1/{REGISTRY_NAME}", headers=headers), 401, "UNAUTHENTICATED")


# --- PATCH and DELETE ------------------------------------------------------------------------


def test_patch_device(client: TestClient) -> None:
    made = new_device(
        client, REGISTRY_NAME, "sn-p", credential("ES256_X509_PEM", certificate_pem())
    ).json()
    path = f"{REGISTRY_NAME}/devices/sn-p"

    def patch(mask: str | None, body: dict[str, Any]) -> httpx.Response:
        params = {} if mask is None else {"updateMask": mask}
        return call(client, "PATCH", path, Role.WRITER, params=params, json=body)

    out = patch(
        "blocked,metadata,logLevel", {"blocked": True, "metadata": {"k1": "v"}, "logLevel": "DEBUG"}
    )
    assert out.status_code == 200, out.text
    got = out.json()
    assert got["blocked"] is True and got["metadata"] == {"k1": "v"} and got["logLevel"] == "DEBUG"
    assert got["credentials"] == made["credentials"] and got["numId"] == made["numId"]
    assert (
        call(client, "GET", path, params={"$alt": "json;enum-encoding=int"}).json()["logLevel"]
        == 40
    )
    # Fields outside the mask are ignored; a masked field left out is cleared.
    out = patch("metadata", {"blocked": False})
    assert out.json()["blocked"] is True and out.json()["metadata"] == {}
    out = patch("credentials", {"credentials": []})
    assert out.json()["credentials"] == []
    assert_error(patch(None, {"blocked": True}), 400, "INVALID_ARGUMENT", "update_mask")
    assert_error(patch("id", {"id": "sn-q"}), 400, "INVALID_ARGUMENT", "Invalid update_mask path")
    four = [credential("ES256_X509_PEM", certificate_pem()) for _ in range(4)]
    assert_error(patch("credentials", {"credentials": four}), 400, "INVALID_ARGUMENT", "at most 3")
    assert_error(
        patch("metadata", {"metadata": {"9x": "v"}}), 400, "INVALID_ARGUMENT", "metadata key"
    )
    assert_error(
        call(
            client,
            "PATCH",
            f"{REGISTRY_NAME}/devices/sn-none",
            Role.WRITER,
            params={"updateMask": "blocked"},
            json={},
        ),
        404,
        "NOT_FOUND",
    )


def test_delete_device_and_registry(client: TestClient) -> None:
    assert new_registry(client, "reg-d").status_code == 200
    reg = f"{PARENT}/registries/reg-d"
    made = new_device(client, reg, "sn-d").json()
    assert_error(call(client, "DELETE", reg), 400, "FAILED_PRECONDITION", "not empty")
    assert call(client, "DELETE", f"{reg}/devices/{made['numId']}").json() == {}  # by numId
    assert_error(call(client, "GET", f"{reg}/devices/sn-d"), 404, "NOT_FOUND")
    assert_error(call(client, "DELETE", f"{reg}/devices/sn-d"), 404, "NOT_FOUND")
    assert call(client, "DELETE", reg).json() == {}
    assert_error(call(client, "GET", reg), 404, "NOT_FOUND")
    assert_error(call(client, "DELETE", reg), 404, "NOT_FOUND")


def test_patch_registry(client: TestClient) -> None:
    assert new_registry(client, "reg-p").status_code == 200
    reg = f"{PARENT}/registries/reg-p"
    out = call(client, "PATCH", reg, params={"updateMask": "logLevel"}, json={"logLevel": 20})
    assert out.status_code == 200 and out.json()["logLevel"] == "ERROR"
    out = call(
        client,
        "PATCH",
        reg,
        params={"updateMask": "mqttConfig"},
        json={"mqttConfig": {"mqttEnabledState": "MQTT_DISABLED"}},
    )
    assert out.status_code == 200, out.text
    assert out.json()["mqttConfig"] == {"mqttEnabledState": "MQTT_DISABLED"}
    assert out.json()["logLevel"] == "ERROR"  # fields outside the mask are kept
    assert_error(
        call(client, "PATCH", reg, params={"updateMask": "id"}, json={}), 400, "INVALID_ARGUMENT"
    )


# --- listing ---------------------------------------------------------------------------------


def test_list_filters(client: TestClient) -> None:
    nums = {}
    for i in range(4):
        nums[f"sn-f{i}"] = new_device(client, REGISTRY_NAME, f"sn-f{i}").json()["numId"]
    path = f"{REGISTRY_NAME}/devices"

    def ids(**params: Any) -> list[str]:
        resp = call(client, "GET", path, Role.READER, params=params)
        assert resp.status_code == 200, resp.text
        return [d["id"] for d in resp.json()["devices"]]

    assert ids(deviceIds=["sn-f1", "sn-f3", "sn-absent"]) == ["sn-f1", "sn-f3"]
    assert ids(deviceIds="sn-f0,sn-f2") == ["sn-f0", "sn-f2"]
    assert ids(deviceNumIds=[nums["sn-f2"]]) == ["sn-f2"]
    assert ids(deviceIds="sn-f0", deviceNumIds=nums["sn-f3"]) == ["sn-f0", "sn-f3"]
    assert ids(deviceIds=["sn-f0", "sn-f1", "sn-f2"], pageSize=2) == ["sn-f0", "sn-f1"]
    assert_error(call(client, "GET", path, params={"deviceNumIds": "x1"}), 400, "INVALID_ARGUMENT")


def test_list_registries_pages(client: TestClient) -> None:
    for i in range(4):
        assert new_registry(client, f"reg-l{i}").status_code == 200
    seen, token, pages = [], "", 0
    while True:
        page = call(
            client,
            "GET",
            f"{PARENT}/registries",
            Role.READER,
            params={"pageSize": 2, "pageToken": token},
        ).json()
        pages += 1
        seen += [r["id"] for r in page["deviceRegistries"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert pages == 3 and seen == ["devices", "reg-l0", "reg-l1", "reg-l2", "reg-l3"]


# --- metadata limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("meta", "ok"),
    [
        ({"k" * 127: "v"}, True),
        ({"k" * 128: "v"}, False),
        ({"ok.key-_+~%": "v"}, True),
        ({"bad/key": "v"}, False),
        ({"k1": "x" * 32 * 1024}, True),
        ({f"k{i}": "x" for i in range(500)}, True),
        ({f"k{i}": "x" for i in range(501)}, False),
        ({f"k{i}": "x" * 30 * 1024 for i in range(9)}, False),  # 270 KB in all
    ],
)
def test_metadata_limits(client: TestClient, meta: dict[str, str], ok: bool) -> None:
    resp = new_device(client, REGISTRY_NAME, "sn-meta", metadata=meta)
    if ok:
        assert resp.status_code == 200, resp.text
    else:
        assert_error(resp, 400, "INVALID_ARGUMENT")
