"""The device-facing HTTPS listener on its own: its server certificate and client bundle
from the real CA in SoftHSM, a real uvicorn TLS server (in a thread, with a small route
that reports the client certificate it was given) and its port planning."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from fastapi import APIRouter, Request

from provisioner.api.devices_server import (
    create_devices_app,
    devices_files,
    devices_url,
    ensure_devices_certificate,
    refresh_client_trust,
    server_config,
)
from provisioner.asgi_tls import client_certificate
from provisioner.ca.ceremony import CaInfo, load_ca, rotate, store_of
from provisioner.errors import ServiceUnavailableError
from provisioner.listeners import plan_ports
from provisioner.settings import Settings
from tests.conftest import free_port
from tests.devices.conftest import foreign_client_cert, issue_client_cert, pinned


def _on_free_port(s: Settings, **devices: object) -> Settings:
    return s.model_copy(
        update={"devices": s.devices.model_copy(update={"port": free_port(), **devices})}
    )


def test_the_certificate_and_the_client_bundle_follow_the_ca(
    ca_settings: Settings, ca: CaInfo
) -> None:
    s = _on_free_port(ca_settings, names=["enroll.example.com", "127.0.0.1"])
    files = devices_files(s)
    assert ensure_devices_certificate(s) is True
    chain = x509.load_pem_x509_certificates(files.chain_path.read_bytes())
    cert, store = chain[0], store_of(s)
    assert chain[1] == store.intermediate()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "device enrollment"
    )
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["enroll.example.com"]
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", files.root_path, "-untrusted", *[files.chain_path] * 2],
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert x509.load_pem_x509_certificates(files.client_ca_path.read_bytes()) == [
        store.root(),
        store.intermediate(),
    ]
    assert files.key_path.stat().st_mode & 0o777 == 0o600
    assert ensure_devices_certificate(s) is False  # current: the token is not opened

    # After a rotation: re-issued by the new intermediate, and clients whose certificate
    # the old one signed are still trusted.
    old = store.intermediate()
    rotate(s)
    assert ensure_devices_certificate(s) is True
    bundle = x509.load_pem_x509_certificates(files.client_ca_path.read_bytes())
    assert bundle[0] == store.root() and bundle[1] == store.intermediate() != old
    assert old in bundle and len(bundle) == 3
    assert x509.load_pem_x509_certificates(files.chain_path.read_bytes())[1] == bundle[1]


@contextmanager
def _serving(s: Settings, router: APIRouter) -> Iterator[tuple[str, ssl.SSLContext]]:
    config = server_config(s, create_devices_app(s, router))
    config.load()
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "the listener did not start"
    try:
        yield f"https://localhost:{s.devices.port}", config.ssl
    finally:
        server.should_exit = True
        t.join(10)


def test_client_certificates_over_real_tls(
    ca_settings: Settings, ca: CaInfo, tmp_path: Path
) -> None:
    s = _on_free_port(ca_settings)
    seen: list[str | None] = []
    router = APIRouter()

    @router.get("/whoami")
    async def whoami(request: Request) -> dict[str, str | None]:
        cert = client_certificate(request.scope)
        name = None if cert is None else str(cert.subject.rfc4514_string())
        seen.append(name)
        return {"client": name}

    # A device whose certificate the first intermediate signed, before a rotation.
    lc = load_ca(s)
    try:
        old_device = issue_client_cert(tmp_path, "old-device", lc.intermediate_cert, lc.key)
    finally:
        lc.close()
    rotate(s)
    lc = load_ca(s)
    try:
        device = issue_client_cert(tmp_path, "device", lc.intermediate_cert, lc.key)
    finally:
        lc.close()
    foreign = foreign_client_cert(tmp_path, "stranger")
    ensure_devices_certificate(s)
    root = devices_files(s).root_path

    with _serving(s, router) as (url, server_tls):
        # The server proves itself against the root devices pin, by name.
        with httpx.Client(base_url=url, verify=pinned(root)) as h:
            assert h.get("/whoami").json() == {"client": None}  # optional: enrollment
        with httpx.Client(base_url=url, verify=pinned(root, device)) as h:
            assert h.get("/whoami").json() == {"client": "CN=device"}
        with httpx.Client(base_url=url, verify=pinned(root, old_device)) as h:
            assert h.get("/whoami").json() == {"client": "CN=old-device"}
        # Another CA's certificate ends the connection in the handshake: no request.
        before = len(seen)
        with (
            httpx.Client(base_url=url, verify=pinned(root, foreign)) as h,
            pytest.raises(httpx.TransportError),
        ):
            h.get("/whoami")
        assert len(seen) == before
        # A client pinning another root does not accept our server.
        other = ssl.create_default_context(cafile=str(foreign.cert_file))
        with httpx.Client(base_url=url, verify=other) as h, pytest.raises(httpx.ConnectError):
            h.get("/whoami")
        assert httpx.get(f"{url}/healthz", verify=pinned(root)).json() == {"status": "ok"}

        # ``ca rotate`` while it runs: a device of the newest intermediate is refused until
        # the listener follows the CA (every few seconds; here called directly), then let in.
        known = devices_files(s).client_ca_path.read_bytes()
        rotate(s)
        lc = load_ca(s)
        try:
            newest = issue_client_cert(tmp_path, "newest", lc.intermediate_cert, lc.key)
        finally:
            lc.close()
        with httpx.Client(base_url=url, verify=pinned(root, newest)) as h:
            with pytest.raises(httpx.TransportError):
                h.get("/whoami")
            assert refresh_client_trust(s, server_tls, known) != known
            assert h.get("/whoami").json() == {"client": "CN=newest"}
        bundle = devices_files(s).client_ca_path.read_bytes()
        assert len(x509.load_pem_x509_certificates(bundle)) == 4  # root + 3 intermediates


@pytest.fixture
def squatter() -> Iterator[int]:
    with socket.socket() as sq:
        sq.bind(("127.0.0.1", 0))
        sq.listen()
        yield int(sq.getsockname()[1])


def _settings(tmp_path: Path, devices: dict[str, object]) -> Settings:
    return Settings(
        var_dir=tmp_path,
        registry={"listen_port": free_port()},  # type: ignore[arg-type]
        api={"listen_port": free_port()},  # type: ignore[arg-type]
        bridge={"enabled": False},  # type: ignore[arg-type]
        devices=devices,  # type: ignore[arg-type]
    )


def test_a_taken_port_is_named_or_moved(tmp_path: Path, squatter: int) -> None:
    s = _settings(tmp_path, {"port": squatter})
    with pytest.raises(ServiceUnavailableError) as exc:
        plan_ports(s, move_taken=False)
    assert f"port {squatter}" in str(exc.value) and "devices.port" in str(exc.value)
    assert "PROVISIONER_DEVICES__PORT" in str(exc.value)

    plan = plan_ports(s, move_taken=True)  # the demo
    new = plan.settings.devices.port
    assert new != squatter and plan.env == {"PROVISIONER_DEVICES__PORT": str(new)}
    assert plan.notes == [f"port {squatter} in use: devices on {new}"]
    assert devices_url(plan.settings) == f"https://127.0.0.1:{new}"

    # Devices are told a pinned URL: moving the port would strand them.
    pinned = _settings(tmp_path, {"port": squatter, "public_url": "https://enroll.example"})
    with pytest.raises(ServiceUnavailableError, match=r"devices\.port"):
        plan_ports(pinned, move_taken=True)
    # Not running, not checked.
    assert plan_ports(_settings(tmp_path, {"port": squatter, "enabled": False}), move_taken=False)
