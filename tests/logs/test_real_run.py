"""A real line's logs: the supervisor, Redis, the registry, the API and the Celery workers
(signer, uploader, gateway, station with one pool child per socket) run a batch of 4 chips
to the end; then every ``<var>/log/*.log`` line parses as JSON, the station's lines for a
device name it, and no file under ``<var>/log`` holds a PIN, a token or a certificate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from provisioner.cloud.tokens import admin_token_file, read_token
from provisioner.db.engine import make_engine
from provisioner.settings import local_url
from provisioner.supervisor import running_services
from tests.conftest import make_station
from tests.e2e.test_end_to_end import cli

N = 4
PROCESSES = {
    "supervisor",
    "registry",
    "api",
    "worker-hsm",
    "worker-registry",
    "gateway-line1",
    "worker-station-line1",
}
CORE = {"ts", "level", "logger", "msg", "process", "pid"}


def _entries(path: Path) -> list[dict[str, Any]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{n} is not JSON: {line[:200]!r}") from None
        assert isinstance(entry, dict) and set(entry) >= CORE, f"{path.name}:{n}: {entry}"
        out.append(entry)
    return out


def test_a_batchs_logs_are_json_lines_with_context_and_no_secrets(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=4)
    cli(st, "ca", "init")
    token_file = tmp_path / "ada.token"
    cli(st, "users", "add", "ada", "--role", "admin", "--token-out", str(token_file))
    as_ada = ("--token-file", str(token_file))
    user_token = token_file.read_text().strip()
    with running_services(st.settings, ["line1"], st.config) as sup:
        batch = json.loads(
            cli(
                st, *as_ada, "batch", "create", "--count", str(N), "--station", "line1", "--json"
            ).stdout
        )["id"]
        started = json.loads(
            cli(st, *as_ada, "batch", "start", str(batch), "--json", "--timeout", "120").stdout
        )
        assert started["done"] == N, started
        api = local_url(st.settings.api.listen_host, st.settings.api.listen_port)
        answer = httpx.get(
            f"{api}/batches/{batch}", headers={"Authorization": f"Bearer {user_token}"}
        )
        assert answer.status_code == 200, answer.text
        log_dir = sup.log_dir
    # everything is flushed and closed now: the services stopped

    with make_engine(st.settings.db_url).connect() as c:
        devices = {
            r.id: r.chip_serial for r in c.execute(text("SELECT id, chip_serial FROM device"))
        }
        ders = [r.der for r in c.execute(text("SELECT der FROM certificate"))]
    assert len(devices) == N and len(ders) == N

    logs = {p.name.removesuffix(".log"): _entries(p) for p in log_dir.glob("*.log")}
    assert set(logs) >= PROCESSES, sorted(logs)
    for name, entries in logs.items():
        assert entries, f"{name}.log is empty"
        assert {e["process"] for e in entries} == {name}, name

    # The station worker: each device's lines carry its batch, chip, station and socket
    # (the pool children write the same file, each with its own pid).
    station = logs["worker-station-line1"]
    assert len({e["pid"] for e in station}) > 1, "the pool children's lines are missing"
    for device, serial in devices.items():
        done = [e for e in station if e.get("device") == device and e["msg"].endswith("done")]
        assert done, f"no line says device {device} is done"
        for e in done:
            assert e["batch"] == batch and e["chip_serial"] == serial
            assert e["station"] == "line1" and e["socket"] in range(4)

    # The signer's task-success lines no longer carry the certificate.
    signed = [e for e in logs["worker-hsm"] if " succeeded in " in e["msg"]]
    assert len(signed) >= N
    assert all(e["msg"].endswith("s") and "der" not in e["msg"] for e in signed)

    # The access logs: the API request (never its token) and the uploader's requests.
    api_lines = [e for e in logs["api"] if e["logger"] == "provisioner.access"]
    assert any(
        e["path"] == f"/batches/{batch}" and e["status"] == 200 and e["method"] == "GET"
        for e in api_lines
    ), api_lines
    uploads = [e for e in logs["registry"] if e["logger"] == "provisioner.access"]
    assert any(e["method"] == "POST" and e["status"] == 200 for e in uploads), uploads

    # No secret in any file under <var>/log (the raw .out files and rotated ones too).
    secrets = {
        "user token": user_token,
        "factory PIN": st.settings.pin_file.read_text().strip(),
        "root PIN": st.settings.root_pin_file.read_text().strip(),
        "registry upload token": read_token(st.settings.registry_token_file),
        "registry admin token": read_token(admin_token_file(st.settings.registry_token_file)),
        "a PEM block": "-----BEGIN",
    }
    for der in ders:
        secrets[f"certificate {der[:4].hex()}"] = der.hex()
        secrets[f"certificate {der[:4].hex()} (upper)"] = der.hex().upper()
        secrets[f"a piece of certificate {der[:4].hex()}"] = der.hex()[200:264]
    files = [p for p in log_dir.iterdir() if p.is_file()]
    assert any(p.suffix == ".out" for p in files)
    for path in files:
        content = path.read_text(errors="replace")
        for what, secret in secrets.items():
            assert secret not in content, f"{what} found in {path.name}"
