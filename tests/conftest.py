"""Shared fixtures: an isolated station (own var dir, config file, registry port)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from provisioner.ca.ceremony import CaInfo, LoadedCa, init_ca, load_ca
from provisioner.chips.connector import Connector
from provisioner.db.engine import create_schema, make_engine
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.ports import SigningRequest
from provisioner.private_files import private_umask
from provisioner.settings import Settings, load_settings

# The product runs with umask 077 (every entry point sets it) and refuses private files other
# users can read; the tests' own files (var dirs, PIN and token files, services started in
# this process) are made the same way.
private_umask()


def run_cli(
    *args: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``provisioner ARGS`` in a child process, as an operator would type it."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def chip_request(
    device_id: int = 1,
    batch_id: int = 1,
    serial: str | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
    challenge: bytes | None = None,
) -> SigningRequest:
    """What a station sends the signer for one chip: its serial (random by default), its
    P-256 point and the proof of possession, raw R||S over the challenge as the chip
    returns it. A software key (fresh by default) stands in for the chip."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    challenge = challenge or os.urandom(32)
    r, s = decode_dss_signature(key.sign(challenge, ec.ECDSA(hashes.SHA256())))
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return SigningRequest(
        device_id,
        batch_id,
        serial or f"0123{os.urandom(6).hex().upper()}EE",
        point,
        challenge,
        r.to_bytes(32, "big") + s.to_bytes(32, "big"),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Station:
    """A private var dir and config file; what a fresh station PC would have."""

    root: Path
    config: Path
    settings: Settings

    def env(self) -> dict[str, str]:
        import os

        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        env["PROVISIONER_CONFIG"] = str(self.config)
        return env


def make_station(
    root: Path, sockets: int = 4, database_url: str | None = None, extra: str = ""
) -> Station:
    root.mkdir(parents=True, exist_ok=True)
    port, api_port = free_port(), free_port()
    bridge = f"[bridge]\nenabled = false\nmqtt_port = {free_port()}\nwss_port = {free_port()}\n"
    cfg = root / "provisioner.toml"
    cfg.write_text(
        f'var_dir = "{root / "var"}"\n'
        + (f'database_url = "{database_url}"\n' if database_url else "")
        + f'[registry]\nurl = "http://127.0.0.1:{port}"\nlisten_port = {port}\n'
        f'[api]\nlisten_port = {api_port}\npublic_url = "http://127.0.0.1:{api_port}"\n'
        # The MQTT bridge (on by default) is off here unless the test sets its own [bridge]:
        # these lines test the line, and the bridge has its own supervised tests
        # (tests/cloud/bridge, the demo). Its ports are free ones all the same.
        + ("" if "[bridge]" in extra else bridge)
        # The device-facing HTTPS listener likewise (tests/devices starts it).
        + ("" if "[devices]" in extra else f"[devices]\nenabled = false\nport = {free_port()}\n")
        # ``extra`` may continue this table (``feed = "manual"``), so it comes last
        + f"[stations.line1]\nsockets = {sockets}\n"
        + extra
    )
    return Station(root=root, config=cfg, settings=load_settings(cfg))


@pytest.fixture
def station(tmp_path: Path) -> Station:
    return make_station(tmp_path / "station")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One private PostgreSQL server for the session (a real server, not a fake)."""
    from tests import pg

    with pg.cluster() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database test runs on SQLite (the default) and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'p.db'}"
        return
    from tests import pg

    yield pg.create_database(request.getfixturevalue("postgres_url"))


# --- a dev CA in a private SoftHSM token directory, per test -------------------------


@pytest.fixture
def ca_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # init_ca points SOFTHSM2_CONF at the test's own token dir; restore it afterwards.
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    return Settings(var_dir=tmp_path / "var")


@pytest.fixture
def ca(ca_settings: Settings) -> CaInfo:
    return init_ca(ca_settings)


@pytest.fixture
def loaded(ca_settings: Settings, ca: CaInfo) -> Iterator[LoadedCa]:
    """The CA of ``ca``, loaded for signing (closed afterwards)."""
    lc = load_ca(ca_settings)
    yield lc
    lc.close()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """One station line in-process: real chips (cryptoauthlib + emulator), a real SoftHSM
    signer, a real database; what the workers hold, without Celery."""
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var")
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    ca = load_ca(settings)
    yield {
        "settings": settings,
        "engine": engine,
        "signer": IssuanceService(engine, ca, settings.profile),
        "ledger": DeviceLedger(
            engine, "station:line1", "line1", registry="projects/p/locations/l/registries/r"
        ),
        "connector": Connector(settings),
        "jig": Connector(settings).jig("line1"),
    }
    ca.close()


# Tests that start a whole line (services, Celery workers, Redis, a browser): with
# `pytest -n 2 --dist loadgroup` (make test) they share one lane, one after another, and the
# rest of the suite runs beside them. Without xdist the mark does nothing.
_ONE_LANE = ("e2e", "web")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "tests" in parts and parts[parts.index("tests") + 1] in _ONE_LANE:
            item.add_marker(pytest.mark.xdist_group("line"))
