"""Shared fixtures: an isolated station (own var dir, config file, registry port)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from provisioner.ca.ceremony import CaInfo, init_ca, load_ca
from provisioner.chips.connector import Connector
from provisioner.db.engine import create_schema, make_engine
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger
from provisioner.settings import Settings, load_settings


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
    cfg = root / "provisioner.toml"
    cfg.write_text(
        f'var_dir = "{root / "var"}"\n'
        + (f'database_url = "{database_url}"\n' if database_url else "")
        + f'[registry]\nurl = "http://127.0.0.1:{port}"\nlisten_port = {port}\n'
        f'[api]\nlisten_port = {api_port}\npublic_url = "http://127.0.0.1:{api_port}"\n'
        f"[stations.line1]\nsockets = {sockets}\n" + extra
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
        "ledger": DeviceLedger(engine, "station:line1", "line1"),
        "connector": Connector(settings),
        "jig": Connector(settings).jig("line1"),
    }
    ca.close()
