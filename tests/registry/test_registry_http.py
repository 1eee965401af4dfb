"""The built-in registry over real HTTP, driven by the real upload client."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provisioner.errors import RegistryError, RegistryUnavailableError
from provisioner.ports import DeviceAlreadyExists
from provisioner.registry.client import CloudIotRegistry
from provisioner.registry.tokens import read_token
from tests.conftest import Station, free_port


@pytest.fixture
def server(station: Station) -> Iterator[tuple[Station, subprocess.Popen[str]]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.registry"],
        env=station.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = station.settings.registry.url
    for _ in range(100):
        try:
            if httpx.get(url + "/healthz", timeout=0.5).is_success:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail("registry did not start: " + (proc.communicate()[0] or ""))
    yield station, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def client(server: tuple[Station, subprocess.Popen[str]]) -> Iterator[CloudIotRegistry]:
    c = CloudIotRegistry.from_settings(server[0].settings)
    yield c
    c.close()


def cert_pem(key: object | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "0123000000000001EE")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)  # type: ignore[attr-defined]
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def raw(
    st: Station, method: str, path: str, token: str | None = None, **kw: object
) -> httpx.Response:
    token = token if token is not None else read_token(st.settings.registry_token_file)
    r = st.settings.registry
    base = f"{r.url}/v1/projects/{r.project}/locations/{r.location}/registries/{r.registry}"
    return httpx.request(
        method, base + path, headers={"Authorization": f"Bearer {token}"}, timeout=5, **kw
    )  # type: ignore[arg-type]


def test_create_then_get(client: CloudIotRegistry) -> None:
    pem = cert_pem()
    created = client.create_device("sn0123000000000001ee", pem)
    assert created.num_id.isdigit() and created.certificate_pems == (pem,)
    got = client.get_device("sn0123000000000001ee")
    assert got == created
    assert client.get_device(created.num_id) == created  # numId works as the id too


def test_duplicate_is_already_exists(client: CloudIotRegistry) -> None:
    client.create_device("dev-a", cert_pem())
    with pytest.raises(DeviceAlreadyExists):
        client.create_device("dev-a", cert_pem())


def test_missing_device_is_none(client: CloudIotRegistry) -> None:
    assert client.get_device("nobody-here") is None


def test_device_shape_and_errors(server: tuple[Station, subprocess.Popen[str]]) -> None:
    st, _ = server
    pem = cert_pem()
    ok = raw(
        st,
        "POST",
        "/devices?$alt=json;enum-encoding=int",
        json={"id": "dev-int", "credentials": [{"publicKey": {"format": 4, "key": pem}}]},
    )
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["credentials"][0]["publicKey"]["format"] == 4
    assert body["credentials"][0]["expirationTime"] == "1970-01-01T00:00:00Z"
    assert body["name"].endswith(f"/devices/{body['numId']}")

    bad_pem = raw(
        st,
        "POST",
        "/devices",
        json={
            "id": "dev-bad",
            "credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": "nope"}}],
        },
    )
    assert bad_pem.status_code == 400 and bad_pem.json()["error"]["status"] == "INVALID_ARGUMENT"

    four = [{"publicKey": {"format": "ES256_X509_PEM", "key": cert_pem()}} for _ in range(4)]
    too_many = raw(st, "POST", "/devices", json={"id": "dev-4", "credentials": four})
    assert too_many.status_code == 400 and "at most 3" in too_many.json()["error"]["message"]

    rsa_small = rsa.generate_private_key(65537, 1024)
    weak = raw(
        st,
        "POST",
        "/devices",
        json={
            "id": "dev-rsa",
            "credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": cert_pem(rsa_small)}}],
        },
    )
    assert weak.status_code == 400 and "2048" in weak.json()["error"]["message"]

    wrong_kind = raw(
        st,
        "POST",
        "/devices",
        json={
            "id": "dev-kind",
            "credentials": [{"publicKey": {"format": "RSA_X509_PEM", "key": pem}}],
        },
    )
    assert wrong_kind.status_code == 400

    missing = raw(st, "GET", "/devices/ghost")
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"


def test_wrong_token_is_unauthenticated(server: tuple[Station, subprocess.Popen[str]]) -> None:
    st, _ = server
    resp = raw(st, "GET", "/devices", token="not-the-token")
    assert resp.status_code == 401 and resp.json()["error"]["status"] == "UNAUTHENTICATED"
    r = st.settings.registry
    c = CloudIotRegistry(r.url, r.project, r.location, r.registry, "not-the-token")
    with pytest.raises(RegistryError, match="401"):
        c.create_device("dev-x", cert_pem())
    c.close()


def test_dead_registry_is_unavailable() -> None:
    c = CloudIotRegistry(f"http://127.0.0.1:{free_port()}", "p", "l", "r", "t", timeout_s=2)
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        c.create_device("dev-y", cert_pem())
    c.close()


def test_token_never_reaches_the_server_output(
    server: tuple[Station, subprocess.Popen[str]], client: CloudIotRegistry
) -> None:
    st, proc = server
    client.create_device("dev-log", cert_pem())
    raw(st, "GET", "/devices", token="wrong-token-value")
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    token = read_token(st.settings.registry_token_file)
    assert token not in out and "wrong-token-value" not in out
