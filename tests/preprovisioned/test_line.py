"""A Trust&GO batch through the whole line, as an operator runs it: real redis-server, real
Celery workers (station, gateway, hsm, registry), the built-in registry over HTTP, the
``provisioner`` CLI; emulated Trust&GO parts put in the station's sockets by the operator
(``station insert --part``, manual feed) and their manufacturer's root trusted by the admin.
The registry ends up holding each part's own certificate, our CA issued nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from provisioner.chips.connector import Connector
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.cloud.tokens import read_token
from provisioner.db.engine import make_engine
from provisioner.supervisor import running_services
from tests.conftest import Station, make_station, run_cli

N_PARTS = 2

# It starts a whole line: in the same xdist lane as tests/e2e (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("line")


def cli(st: Station, *args: str) -> subprocess.CompletedProcess[str]:
    proc = run_cli(*args, env=st.env(), timeout=600)
    assert proc.returncode == 0, f"provisioner {args} failed: {proc.stderr}"
    return proc


def test_a_trust_and_go_batch_on_the_running_line(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=N_PARTS, extra='feed = "manual"\n')
    cli(st, "ca", "init")
    said = ""
    for socket in range(N_PARTS):  # the operator puts emulated Trust&GO parts in
        said = cli(
            st,
            "station",
            "insert",
            "--station",
            "line1",
            "--socket",
            str(socket),
            "--part",
            "trust-and-go",
        ).stdout
    root = st.settings.chips_dir / "manufacturer" / "root.pem"
    assert str(root) in said and "manufacturer trust --emulated" in said  # the admin's next step
    cli(st, "manufacturer", "trust", "--emulated")
    jig = Connector(st.settings).jig("line1")
    parts = [EmulatedChip.load(jig.chip_path(socket)) for socket in range(N_PARTS)]
    with running_services(st.settings, ["line1"], st.config):
        made = json.loads(
            cli(
                st,
                "batch",
                "create",
                "-n",
                str(N_PARTS),
                "-s",
                "line1",
                "--mode",
                "preprovisioned",
                "--part",
                "trust-and-go",
                "--json",
            ).stdout
        )
        started = json.loads(
            cli(st, "batch", "start", str(made["id"]), "--json", "--timeout", "300").stdout
        )
        assert started["done"] == N_PARTS, started
        assert (started["mode"], started["issued"]) == ("preprovisioned", 0)
        r = st.settings.registry
        resp = httpx.get(
            f"{st.settings.registry_url}/v1/projects/{r.project}/locations/{r.location}"
            f"/registries/{r.registry}/devices",
            headers={"Authorization": f"Bearer {read_token(st.settings.registry_token_file)}"},
            params={"pageSize": 1000, "fieldMask": "credentials"},
            timeout=10,
        )
        resp.raise_for_status()
        devices = {d["id"]: d for d in resp.json().get("devices", [])}
    with make_engine(st.settings.db_url).connect() as c:
        assert c.execute(text("SELECT count(*) FROM certificate")).scalar() == 0
        factory = {row.der for row in c.execute(text("SELECT der FROM factory_certificate"))}
    assert len(factory) == N_PARTS
    assert {f"sn{p.serial.hex()}" for p in parts} == set(devices)
    for dev in devices.values():
        (cred,) = dev["credentials"]
        cert = x509.load_pem_x509_certificate(cred["publicKey"]["key"].encode())
        assert cert.public_bytes(serialization.Encoding.DER) in factory
