"""A line broker per test: a real redis-server from provisioner.broker's redis.conf, its
users from a real database (Station rows + sync_acl), certificates from a throwaway CA."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import redis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from provisioner.broker.acl import sha256_hex, sync_acl
from provisioner.broker.clients import BrokerLogin, Role, line_login, redis_client
from provisioner.broker.config import write_redis_conf
from provisioner.db.engine import create_schema, make_engine
from provisioner.db.models import Station
from provisioner.settings import Settings, load_settings
from tests.broker.pki import ThrowawayCa
from tests.conftest import free_port

Mode = Literal["unix", "tls"]


def write_config(path: Path, lines: list[str], mode: Mode, port: int) -> Settings:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(lines)
    text += f'\n[broker]\nmode = "{mode}"\nhost = "127.0.0.1"\nport = {port}\n'
    path.write_text(text)
    return load_settings(path)


@dataclass
class Line:
    """The line server's side: its settings, database and running redis-server."""

    root: Path
    mode: Mode
    port: int
    config: Path
    settings: Settings
    engine: Engine
    ca: ThrowawayCa
    proc: subprocess.Popen[bytes] | None = None
    clients: list[redis.Redis] = field(default_factory=list)

    def start(self) -> None:
        conf = write_redis_conf(self.settings)
        log = open(self.root / "redis.log", "wb")  # noqa: SIM115 (kept open for the child)
        self.proc = subprocess.Popen(["redis-server", str(conf)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "redis.log").read_text()
            try:
                if self.admin().ping():
                    return
            except (redis.ConnectionError, OSError):
                time.sleep(0.05)
        raise AssertionError("redis-server did not answer")

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(
        self, settings: Settings, login: BrokerLogin, role: Role | None = None
    ) -> redis.Redis:
        c = redis_client(settings, login, role=role, timeout_s=3.0, retries=0)
        self.clients.append(c)
        return c

    def admin(self) -> redis.Redis:
        return self.client(self.settings, line_login(self.settings))

    def denials(self) -> list[dict[str, Any]]:
        """ACL LOG entries (what was refused, to whom), newest first."""
        return list(self.admin().acl_log(count=1000))

    def set_station_hash(self, station_id: str, password_sha256: str | None) -> None:
        with Session(self.engine) as s:
            row = s.get(Station, station_id) or Station(id=station_id)
            row.broker_password_sha256 = password_sha256
            s.add(row)
            s.commit()

    def enroll(self, station_id: str) -> StationPc:
        """What enrollment leaves behind: a station PC with a certificate from the line's
        CA and a broker password whose hash is on its Station row; the broker reloaded."""
        root = self.root.parent / f"station-{station_id}"
        identity = root / "identity"
        if self.mode == "tls":
            self.ca.issue(identity, "station", station_id, server=False)
        identity.mkdir(parents=True, exist_ok=True, mode=0o700)
        password = secrets.token_urlsafe(32)
        (identity / "broker.password").write_text(password + "\n")
        # unix mode: the station runs on the line's PC and reaches the same socket
        var = self.settings.var if self.mode == "unix" else root / "var"
        config = root / "station.toml"
        settings = write_config(
            config,
            [
                f'var_dir = "{var}"',
                'role = "station"',
                f'station_id = "{station_id}"',
                f'identity_dir = "{identity}"',
            ],
            self.mode,
            self.port,
        )
        self.set_station_hash(station_id, sha256_hex(password))
        sync_acl(self.settings, self.engine)
        return StationPc(station_id, root, config, settings, password)


@dataclass(frozen=True)
class StationPc:
    station_id: str
    root: Path
    config: Path
    settings: Settings
    password: str


def make_line(root: Path, mode: Mode) -> Line:
    port = free_port()
    var = root / "var"
    config = root / "line.toml"
    settings = write_config(config, [f'var_dir = "{var}"', 'role = "line"'], mode, port)
    ca = ThrowawayCa()
    if mode == "tls":
        ca.issue(settings.line_identity_dir, "line", "line server", server=True)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    return Line(root, mode, port, config, settings, engine, ca)


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[[Mode], Line]]:
    lines: list[Line] = []

    def factory(mode: Mode) -> Line:
        line = make_line(tmp_path / f"line-{mode}", mode)
        lines.append(line)
        line.start()
        return line

    yield factory
    for line in lines:
        line.stop()
        line.engine.dispose()


@pytest.fixture
def tls_line(make_broker: Callable[[Mode], Line]) -> Line:
    return make_broker("tls")


@pytest.fixture
def unix_line(make_broker: Callable[[Mode], Line]) -> Line:
    return make_broker("unix")


REPO = Path(__file__).resolve().parents[2]


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log: Path

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    """``celery -A tests.broker.celery_testapp worker`` as ``who`` (see that module),
    consuming ``queue``; its own process group, killed at the end of the test."""
    workers: list[Worker] = []

    def start(config: Path, who: str, queue: str, name: str, **env: str) -> Worker:
        log = tmp_path / f"worker-{name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        environ |= {"BROKER_TEST_CONFIG": str(config), "BROKER_TEST_AS": who, **env}
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "tests.broker.celery_testapp"),
                    *("worker", "-Q", queue, "-n", f"{name}@%h", "-c", "1"),
                    *("--without-gossip", "--without-mingle", "--loglevel", "INFO"),
                ],
                env=environ,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(proc, log)
        workers.append(worker)
        return worker

    yield start
    for w in workers:
        w.kill()
