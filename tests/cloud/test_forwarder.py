"""Store and forward against the real registry app (uvicorn in a thread): a conflict is
recorded and never overwritten, an existing identical device counts as uploaded, a dead
registry leaves uploads waiting (and stops the drain early), and they come home later."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import text

from provisioner import batches
from provisioner.cloud.tokens import Role
from provisioner.db.models import Step, UploadState
from provisioner.ledger import DeviceLedger
from provisioner.pipeline import registry_device_id
from provisioner.uploads import forwarder
from provisioner.uploads.client import CloudIotRegistry
from tests.cloud.helpers import certificate_pem
from tests.cloud.inprocess import LOCATION, PROJECT, REGISTRY, TOKENS, make_registry, served
from tests.conftest import chip_request, free_port


def _devices(env: dict[str, Any], n: int) -> list[tuple[int, str]]:
    """``n`` devices signed and verified (uploads queued); (device id, registry id)."""
    engine, settings = env["engine"], env["settings"]
    batch_id = batches.create_batch(engine, settings, station_id="line1", count=n, actor="t")
    ledger: DeviceLedger = env["ledger"]
    out = []
    for i, device_id in enumerate(batches.mark_started(engine, batch_id, actor="t")):
        serial = f"0123{batch_id:04X}{i:08X}EE"
        req = chip_request(device_id, batch_id, serial)
        ledger.identify(device_id, serial, "00006002", f"t/{i}")
        ledger.record_key(device_id, req.public_key)
        ledger.advance(device_id, Step.POP_VERIFIED, "device.pop_verified")
        cert = env["signer"].sign(req)
        ledger.advance(device_id, Step.CERT_WRITTEN, "device.cert_written")
        ledger.queue_upload(
            device_id,
            registry="projects/p/locations/l/registries/r",
            registry_device_id=registry_device_id(serial),
            fingerprint=cert.fingerprint_sha256,
        )
        out.append((device_id, registry_device_id(serial)))
    return out


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[CloudIotRegistry]:
    reg = make_registry(tmp_path)
    with served(reg.app) as port:
        client = CloudIotRegistry(
            f"http://127.0.0.1:{port}", PROJECT, LOCATION, REGISTRY, TOKENS[Role.WRITER], 5.0
        )
        yield client
        client.close()


def _upload_rows(env: dict[str, Any]) -> dict[int, tuple[str, int]]:
    with env["engine"].connect() as c:
        rows = c.execute(text("SELECT device_id, state, attempts FROM registryupload"))
        return {d: (s, a) for d, s, a in rows}


def test_conflict_is_recorded_and_never_overwritten(
    env: dict[str, Any], registry: CloudIotRegistry
) -> None:
    client = registry
    (dev_a, reg_a), (dev_b, reg_b) = _devices(env, 2)
    # Someone else's certificate already sits under A's id; B is already there with ours
    # (a create whose answer was lost).
    squatter = certificate_pem()
    client.create_device(reg_a, squatter)
    ours_b = env["ledger"].certificate(dev_b).der
    pem_b = x509.load_der_x509_certificate(ours_b).public_bytes(serialization.Encoding.PEM)
    client.create_device(reg_b, pem_b.decode())

    rep = forwarder.drain(env["engine"], client, [dev_a, dev_b])
    assert (rep.done, rep.conflicts, rep.unavailable) == (1, 1, 0)
    rows = _upload_rows(env)
    assert rows[dev_a][0] == UploadState.CONFLICT.name and rows[dev_b][0] == "DONE"
    held = client.get_device(reg_a)
    assert held is not None and held.certificate_pems[0].strip() == squatter.strip()
    with env["engine"].connect() as c:
        incident = c.execute(
            text("SELECT payload FROM audit_event WHERE event_type = 'incident.upload_conflict'")
        ).scalar_one()
    assert reg_a in incident
    dev = env["ledger"].load(dev_a)
    assert dev.step is Step.CERT_VERIFIED and "different certificate" in (dev.error or "")
    # A conflict is not retried by the periodic drain: a person decides.
    assert dev_a not in forwarder.waiting(env["engine"])


def test_a_dead_registry_leaves_uploads_waiting_then_they_come_home(
    env: dict[str, Any], tmp_path: Path
) -> None:
    ids = [d for d, _ in _devices(env, 6)]
    reg = make_registry(tmp_path / "later")
    port = free_port()
    client = CloudIotRegistry(
        f"http://127.0.0.1:{port}", PROJECT, LOCATION, REGISTRY, TOKENS[Role.WRITER], 2.0
    )
    try:
        # Nothing listens: three refusals in a row and the drain stops, leaving the rest.
        rep = forwarder.drain(env["engine"], client, ids)
        assert (rep.done, rep.unavailable, rep.left) == (0, 3, 3)
        rows = _upload_rows(env)
        assert [rows[d] for d in ids[:3]] == [("PENDING", 1)] * 3
        assert all(rows[d] == ("PENDING", 0) for d in ids[3:])
        # The task gave up on one: parked, visible in the batch report.
        DeviceLedger(env["engine"], "registry-uploader").park_upload(ids[0], "test: down")
        report = batches.report(env["engine"], 1)
        assert (report.uploads_parked, report.uploads_pending) == (1, 5)
        assert forwarder.waiting(env["engine"], pending_older_than_s=3600) == [ids[0]]
        assert forwarder.waiting(env["engine"]) == ids
        with served(reg.app, port=port):
            rep = forwarder.drain(env["engine"], client, forwarder.waiting(env["engine"]))
        assert (rep.done, rep.unavailable, rep.left, rep.conflicts) == (6, 0, 0, 0)
        report = batches.report(env["engine"], 1)
        assert (report.done, report.uploads_parked, report.state) == (6, 0, "finished")
        with served(reg.app, port=port):
            listed = httpx.get(
                f"http://127.0.0.1:{port}/v1/projects/{PROJECT}/locations/{LOCATION}"
                f"/registries/{REGISTRY}/devices",
                headers={"Authorization": f"Bearer {TOKENS[Role.READER]}"},
            ).json()["devices"]
        assert len(listed) == 6
    finally:
        client.close()
