"""200 devices uploaded through a registry that fails 30 % of calls, through real processes.

Redis, the built-in registry, Celery registry workers (and the periodic store-and-forward
drain) run as real processes; a fault proxy (tests/cloud/fault_proxy.py) between the
workers and the registry answers 429 and 500, hangs past the client's timeout, resets
connections and loses answers to creates that did happen; at the start the registry's port
refuses connections altogether. The 200 devices reach CERT_VERIFIED in a child process
(real SoftHSM signer, software keys standing in for chips), as stations leave them.

The outcome must be: every device in the registry exactly once, with its own certificate;
every device DONE; the batch finished; uploads that gave up were parked and visible, and
came home by themselves; no conflict; the audit trail intact.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from provisioner.cloud.tokens import read_token
from provisioner.db.engine import make_engine
from provisioner.settings import load_settings
from provisioner.supervisor import running_services
from tests.cloud.fault_proxy import FaultProxy
from tests.conftest import Station, chip_request, free_port, make_station, run_cli

N = 200
pytestmark = pytest.mark.slow


def _prepare(config: str, n: int) -> None:
    """In a spawned child: ``n`` devices signed and verified, uploads queued."""

    from provisioner import batches
    from provisioner.ca.ceremony import load_ca
    from provisioner.db.engine import create_schema
    from provisioner.db.models import Step
    from provisioner.issuance import IssuanceService
    from provisioner.ledger import DeviceLedger
    from provisioner.pipeline import registry_device_id

    settings = load_settings(Path(config))
    engine = make_engine(settings.db_url)
    create_schema(engine)
    r = settings.registry
    registry = f"projects/{r.project}/locations/{r.location}/registries/{r.registry}"
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=n, actor="test")
    ledger = DeviceLedger(engine, "station:line1", "line1", 0)
    ca = load_ca(settings)
    signer = IssuanceService(engine, ca, settings.profile)
    try:
        for i, device_id in enumerate(batches.mark_started(engine, batch_id, actor="test")):
            serial = f"0123{i:012X}EE"
            req = chip_request(device_id, batch_id, serial)
            ledger.identify(device_id, serial, "00006002", f"test/{i}")
            ledger.record_key(device_id, req.public_key)
            ledger.advance(device_id, Step.POP_VERIFIED, "device.pop_verified")
            cert = signer.sign(req)
            ledger.advance(device_id, Step.CERT_WRITTEN, "device.cert_written")
            ledger.queue_upload(
                device_id,
                registry=registry,
                registry_device_id=registry_device_id(serial),
                fingerprint=cert.fingerprint_sha256,
            )
    finally:
        ca.close()


def _station(root: Path, proxy_port: int) -> Station:
    st = make_station(root, sockets=1, extra="[celery]\ntask_retry_max = 3\n")
    cfg = st.config.read_text()
    own = st.settings.registry_url
    cfg = cfg.replace(
        f'url = "{own}"',
        f'url = "http://127.0.0.1:{proxy_port}"\ntimeout_s = 1.0\n'
        "sync_interval_s = 3.0\nsync_pending_after_s = 60.0",
    )
    st.config.write_text(cfg)
    return Station(st.root, st.config, load_settings(st.config))


def _cli(st: Station, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=st.env(), timeout=900)


def _list_registry(st: Station, upstream: str) -> list[dict]:
    """Every device of the registry, read directly (not through the proxy)."""
    r = st.settings.registry
    token = read_token(st.settings.registry_token_file)
    with httpx.Client(base_url=upstream, headers={"Authorization": f"Bearer {token}"}) as c:
        devices: list[dict] = []
        page = None
        while True:
            resp = c.get(
                f"/v1/projects/{r.project}/locations/{r.location}/registries/{r.registry}/devices",
                params={"pageSize": 50, "fieldMask": "credentials"}
                | ({"pageToken": page} if page else {}),
            )
            resp.raise_for_status()
            body = resp.json()
            devices += body.get("devices", [])
            page = body.get("nextPageToken")
            if not page:
                return devices


def test_200_devices_land_exactly_once_through_a_faulty_registry(tmp_path: Path) -> None:
    proxy_port = free_port()
    st = _station(tmp_path / "station", proxy_port)
    assert _cli(st, "ca", "init").returncode == 0
    child = mp.get_context("spawn").Process(target=_prepare, args=(str(st.config), N))
    child.start()
    child.join(600)
    assert child.exitcode == 0
    r = st.settings.registry
    upstream = f"http://127.0.0.1:{r.listen_port}"
    proxy = FaultProxy(upstream, proxy_port, rate=0.3, hang_s=1.5)
    engine = make_engine(st.settings.db_url)
    try:
        with running_services(st.settings, ["line1"], st.config):
            # The registry's port refuses connections while the uploads start.
            start = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "provisioner.cli.main",
                    "batch",
                    "start",
                    "1",
                    "--json",
                    "--timeout",
                    "600",
                ],
                env=st.env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(3)
            proxy.start()
            out, err = start.communicate(timeout=700)
            assert out, err
            first = json.loads(out)
            # Settled: each device is in the registry or its upload is parked (visible).
            assert first["done"] + first["uploads_parked"] == N, first
            # Whatever the tasks gave up on is parked and visible, then drained by the
            # registry worker's periodic sync (every 3 s here) — or by `registry sync`.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                status = json.loads(_cli(st, "batch", "status", "1", "--json").stdout)
                if status["state"] == "finished":
                    break
                time.sleep(2)
            assert status["state"] == "finished", status
            with engine.connect() as c:
                parked_events = c.execute(
                    text("SELECT count(*) FROM audit_event WHERE event_type = 'upload.parked'")
                ).scalar()
            done = _cli(st, "registry", "sync", "--json")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["waiting"] == 0
            registry_devices = _list_registry(st, upstream)
    finally:
        proxy.close()
    faults = {k: v for k, v in proxy.counts.items() if k != "pass"}
    assert set(faults) == {"429", "500", "500-after", "hang", "reset", "lost"}, proxy.counts
    assert sum(faults.values()) >= 0.2 * sum(proxy.counts.values())
    print(
        f"\nfaults injected: {dict(proxy.counts)}; parked uploads: {parked_events}; "
        f"first settle: done {first['done']}/{N}, parked {first['uploads_parked']}"
    )

    devices = registry_devices
    ids = [d["id"] for d in devices]
    assert len(ids) == N and len(set(ids)) == N
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT d.chip_serial, d.step, c.der, u.state FROM device d "
                "JOIN certificate c ON c.device_id = d.id JOIN registryupload u "
                "ON u.device_id = d.id"
            )
        ).all()
        conflicts = c.execute(
            text("SELECT count(*) FROM audit_event WHERE event_type LIKE 'incident.%'")
        ).scalar()
    assert conflicts == 0
    ours = {"sn" + serial.lower(): der for serial, step, der, state in rows}
    assert {(step, state) for _, step, _, state in rows} == {(70, "DONE")}
    for d in devices:
        (cred,) = d["credentials"]
        pem = cred["publicKey"]["key"].encode()
        assert (
            x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
            == ours[d["id"]]
        )
    verify = json.loads(_cli(st, "audit", "verify", "--json").stdout)
    assert verify["ok"], verify
