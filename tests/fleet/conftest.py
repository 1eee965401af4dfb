"""A fleet server in this process, all real: the SoftHSM CA (``tests.conftest``), a SQLite
database, the built-in registry served by uvicorn, and the device-facing routes served by
uvicorn over TLS (server certificate from the CA, client certificates optional and verified
against root + intermediate, the ``tls`` scope extension) as the devices' listener does.

:class:`ThistleDevice` is a client written to Thistle's document: the
``Thistle-Device-Enrollment-Token`` header and a ``label`` form field on ``POST /enroll``,
``Authorization: Bearer <device_token>`` on ``/identity``, the answers' JSON keys."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.api.fleet import fleet_device_router
from provisioner.asgi_tls import TlsScopeH11Protocol
from provisioner.auth import users
from provisioner.ca.ceremony import CaInfo, store_of
from provisioner.cloud.tokens import Role
from provisioner.db.engine import create_schema, make_engine
from provisioner.enrollment.service import LinePaths, init_line_identity
from provisioner.fleet import tokens
from provisioner.fleet.service import CaKeeper
from provisioner.settings import ApiSettings, FleetSettings, RegistrySettings, Settings
from tests.cloud.inprocess import (
    LOCATION,
    PROJECT,
    REGISTRY,
    REGISTRY_NAME,
    TOKENS,
    make_registry,
    served,
)


@contextmanager
def served_tls(app: FastAPI, certfile: Path, keyfile: Path, cafile: Path) -> Iterator[int]:
    """``app`` on uvicorn over TLS on a free port, asking for an optional client
    certificate; yields the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(cafile),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        http=TlsScopeH11Protocol,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str = "anything") -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class ThistleDevice:
    """A device written against the document: what it sends and the keys it reads."""

    base_url: str
    root_pem: Path
    client_cert: tuple[Path, Path] | None = None

    def _http(self) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.root_pem))
        if self.client_cert is not None:
            ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
        return httpx.Client(base_url=self.base_url, verify=ctx, timeout=30)

    def enroll(self, enrollment_token: str, label: str | None = None) -> httpx.Response:
        with self._http() as c:
            return c.post(
                "/enroll",
                headers={"Thistle-Device-Enrollment-Token": enrollment_token},
                data={"label": label} if label is not None else None,
            )

    def identity(self, device_token: str) -> httpx.Response:  # the document's GET
        with self._http() as c:
            return c.get("/identity", headers={"Authorization": f"Bearer {device_token}"})

    def identity_csr(self, device_token: str, csr_pem: str) -> httpx.Response:
        with self._http() as c:
            return c.post(
                "/identity",
                content=csr_pem,
                headers={
                    "Authorization": f"Bearer {device_token}",
                    "Content-Type": "application/x-pem-file",
                },
            )

    def renew(self, csr_pem: str | None = None) -> httpx.Response:
        with self._http() as c:
            return c.post("/identity/renew", content=csr_pem or b"")


@dataclass
class Fleet:
    settings: Settings
    engine: Engine
    keeper: CaKeeper
    devices_url: str
    registry_url: str
    root_pem: Path
    dir: Path

    def token(self, max_uses: int = 1, ttl: timedelta = timedelta(days=1)) -> str:
        return tokens.create(
            self.engine, REGISTRY_NAME, "admin:ada", ttl=ttl, max_uses=max_uses, label="t"
        ).token

    def device(self, client_cert: tuple[Path, Path] | None = None) -> ThistleDevice:
        return ThistleDevice(self.devices_url, self.root_pem, client_cert)

    def registry_device(self, device_id: str) -> dict[str, Any]:
        r = httpx.get(
            f"{self.registry_url}/v1/{REGISTRY_NAME}/devices/{device_id}",
            headers={"Authorization": f"Bearer {TOKENS[Role.READER]}"},
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    def api(self) -> tuple[TestClient, dict[str, str]]:
        """The API app with an admin's bearer header."""
        admin = users.add_user(self.engine, "ada", "admin", "admin:root")
        return TestClient(create_app(self.settings)), {"Authorization": f"Bearer {admin}"}


MakeFleet = Callable[..., Fleet]


@pytest.fixture
def make_fleet(tmp_path: Path, ca_settings: Settings, ca: CaInfo) -> Iterator[MakeFleet]:
    """Starts a fleet server; keyword arguments override ``[fleet]`` settings."""
    stack = ExitStack()

    def make(registry_up: bool = True, **fleet: Any) -> Fleet:
        reg = make_registry(tmp_path)
        reg_port = stack.enter_context(served(reg.app)) if registry_up else _dead_port()
        registry_url = f"http://127.0.0.1:{reg_port}"
        settings = Settings(
            var_dir=ca_settings.var_dir,
            registry=RegistrySettings(
                url=registry_url, project=PROJECT, location=LOCATION, registry=REGISTRY
            ),
            api=ApiSettings(public_url="http://api.test:1"),
            fleet=FleetSettings(**fleet),
        )
        settings.registry_token_file.parent.mkdir(parents=True, exist_ok=True)
        settings.registry_token_file.write_text(TOKENS[Role.WRITER] + "\n")
        engine = make_engine(settings.db_url)
        create_schema(engine)
        stack.callback(engine.dispose)
        init_line_identity(settings, ["127.0.0.1"])
        paths = LinePaths.of(settings)
        store = store_of(settings)
        server_pem = tmp_path / "server.pem"
        server_pem.write_bytes(paths.certificate.read_bytes() + store.intermediate_pem.read_bytes())
        client_cas = tmp_path / "client-cas.pem"
        client_cas.write_bytes(store.root_pem.read_bytes() + store.intermediate_pem.read_bytes())
        keeper = CaKeeper(settings)
        stack.callback(keeper.close)
        app = FastAPI()
        app.include_router(fleet_device_router(settings, engine, ca=keeper))
        port = stack.enter_context(served_tls(app, server_pem, paths.key, client_cas))
        return Fleet(
            settings,
            engine,
            keeper,
            f"https://127.0.0.1:{port}",
            registry_url,
            store.root_pem,
            tmp_path,
        )

    yield make
    stack.close()


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there
