"""Who gets the metrics: ``GET /metrics`` on the line's API with a token whose role may
``metrics.read``, and the station PC's exporter (no API there) on its own port."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from provisioner.api.security import ApiProblem, Guard
from provisioner.auth import users
from provisioner.auth.roles import ACTIONS, Role
from provisioner.db.engine import create_schema, make_engine
from provisioner.errors import ConfigError
from provisioner.metrics import multiproc
from provisioner.metrics.exporter import start_exporter
from provisioner.metrics.route import metrics_router
from provisioner.settings import Settings
from tests.conftest import free_port
from tests.metrics.helpers import write_samples

STATION_WORK = """
from provisioner.db.models import Step
from provisioner.metrics import record
from provisioner.metrics.record import StepMeter
m = StepMeter()
m.start(Step.CERT_WRITTEN)
m.ok()
record.chip_error(-12)
"""


def _app(settings: Settings) -> tuple[FastAPI, dict[str, str]]:
    engine = make_engine(settings.db_url)
    create_schema(engine)
    admin_first = sorted(Role, key=lambda r: r is not Role.ADMIN)
    tokens = {
        r.value: users.add_user(engine, f"{r.value}1", r.value, "admin:root") for r in admin_first
    }
    app = FastAPI()
    app.include_router(metrics_router(engine, settings, Guard(engine)))

    @app.exception_handler(ApiProblem)
    async def _problem(_: object, exc: ApiProblem) -> object:
        return exc.response()

    return app, tokens


def test_the_api_serves_metrics_to_the_roles_that_may_read_them(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    app, tokens = _app(settings)
    client = TestClient(app)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer prv_nope"}).status_code == 401
    for role, token in tokens.items():
        r = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        if role in ACTIONS["metrics.read"]:
            assert r.status_code == 200, (role, r.text)
            assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
            names = {f.name for f in text_string_to_metric_families(r.text)}
            assert {"provisioner_database_up", "provisioner_upload_backlog"} <= names
        else:
            assert r.status_code == 403, role
    assert Role.MONITOR in ACTIONS["metrics.read"]


def test_disabled_metrics_are_not_served(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", metrics={"enabled": False})
    app, tokens = _app(settings)
    r = TestClient(app).get("/metrics", headers={"Authorization": f"Bearer {tokens['monitor']}"})
    assert r.status_code == 404
    start_exporter(settings)()  # serves nothing, binds nothing: its stop() is a no-op


def test_the_station_exporter_serves_its_workers_samples(tmp_path: Path) -> None:
    port = free_port()
    settings = Settings(
        var_dir=tmp_path / "var", metrics={"listen_host": "127.0.0.1", "listen_port": port}
    )
    directory = multiproc.prepare(settings)
    write_samples(directory, STATION_WORK, PROVISIONER_WORKER_STATION="st9")
    write_samples(directory, STATION_WORK, PROVISIONER_WORKER_STATION="st9")
    stop = start_exporter(settings)
    try:
        base = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{base}/metrics", timeout=10)
        assert r.status_code == 200
        got = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(r.text)
            for s in f.samples
        }
        written = (("outcome", "ok"), ("station", "st9"), ("step", "cert_written"))
        assert got[("provisioner_device_steps_total", written)] == 2
        errors = (("station", "st9"), ("status", "0xf4"))
        assert got[("provisioner_chip_command_errors_total", errors)] == 2
        assert not any(name.startswith("provisioner_database") for name, _ in got)  # no DB
        assert httpx.get(f"{base}/", timeout=10).status_code == 404
        assert httpx.post(f"{base}/metrics", timeout=10).status_code == 405

        # The same port again: the setting is named, nothing is served twice.
        with pytest.raises(ConfigError, match=r"metrics\.listen_host:listen_port"):
            start_exporter(settings)
    finally:
        stop()
    with pytest.raises(ConnectionRefusedError):  # stopped: the port is closed
        socket.create_connection(("127.0.0.1", port), 2).close()
