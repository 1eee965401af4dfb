"""Revocation reaches the registry: a revoked device is blocked there, through the same
paced, retried, parked and synced path as uploads, against the real registry app (uvicorn
in a thread, read back over its HTTP API), the real ClearBlade client and moto's AWS IoT;
and manifests built after a revocation mark the chip revoked and still verify."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from cryptography import x509
from sqlalchemy import text
from sqlmodel import Session

from provisioner.audit.verify import verify_log
from provisioner.ca import revocation
from provisioner.cloud.tokens import Role
from provisioner.db.models import BlockState, Step, UploadState
from provisioner.uploads import blocking, forwarder, manifest
from provisioner.uploads.aws import AwsIotRegistry
from provisioner.uploads.backends import PacedBackend
from provisioner.uploads.clearblade_backend import ClearBladeRegistry
from provisioner.uploads.client import CloudIotRegistry
from provisioner.uploads.ratelimit import LocalPacer
from tests.cloud.helpers import certificate_pem
from tests.cloud.inprocess import (
    LOCATION,
    PROJECT,
    REGISTRY,
    TOKENS,
    Registry,
    make_registry,
    served,
)
from tests.cloud.test_aws import REGION, _ca_pem, moto_url  # noqa: F401  (fixture)
from tests.cloud.test_forwarder import _devices, _upload_rows
from tests.conftest import free_port, run_cli

ADMIN = "admin:test"


@pytest.fixture
def registry_app(tmp_path: Path) -> Registry:
    return make_registry(tmp_path / "registry")


def _client(port: int, timeout_s: float = 5.0) -> CloudIotRegistry:
    return CloudIotRegistry(
        f"http://127.0.0.1:{port}", PROJECT, LOCATION, REGISTRY, TOKENS[Role.WRITER], timeout_s
    )


@pytest.fixture
def live(registry_app: Registry) -> Iterator[tuple[int, CloudIotRegistry]]:
    with served(registry_app.app) as port:
        client = _client(port)
        yield port, client
        client.close()


def _read_back(port: int, reg_id: str) -> dict[str, Any]:
    """The device as the registry's API shows it to a reader (not through our client)."""
    resp = httpx.get(
        f"http://127.0.0.1:{port}/v1/projects/{PROJECT}/locations/{LOCATION}"
        f"/registries/{REGISTRY}/devices/{reg_id}",
        headers={"Authorization": f"Bearer {TOKENS[Role.READER]}"},
        timeout=5,
    )
    resp.raise_for_status()
    body: dict[str, Any] = resp.json()
    return body


def _events(env: dict[str, Any], event_type: str, device_id: int) -> list[dict[str, Any]]:
    with env["engine"].connect() as c:
        rows = c.execute(
            text(
                "SELECT payload FROM audit_event WHERE event_type = :t AND device_id = :d "
                "ORDER BY seq"
            ),
            {"t": event_type, "d": device_id},
        )
        return [json.loads(p) for (p,) in rows]


def _serial(env: dict[str, Any], device_id: int) -> str:
    dev = env["ledger"].load(device_id)
    assert dev.chip_serial
    return str(dev.chip_serial)


def _state(env: dict[str, Any], device_id: int) -> BlockState:
    block = blocking.block_state(env["engine"], device_id)
    assert block is not None
    return block.state


def test_a_revoked_device_is_blocked_in_the_registry(
    env: dict[str, Any], live: tuple[int, CloudIotRegistry]
) -> None:
    port, client = live
    engine = env["engine"]
    (dev_a, reg_a), (dev_b, reg_b) = _devices(env, 2)
    assert forwarder.drain(engine, client, [dev_a, dev_b]).done == 2
    assert _read_back(port, reg_a)["blocked"] is False

    done = revocation.revoke(engine, _serial(env, dev_a), "key_compromise", ADMIN)
    assert (done.device_id, done.registry_block) == (dev_a, "pending")
    (requested,) = _events(env, "registry.block_requested", dev_a)
    assert requested == {"registry_device_id": reg_a, "upload": "done"}

    ran = blocking.task_attempt(engine, client, dev_a, retries=0, retry_max=5)
    assert ran.retry_in_s is None and ran.result["outcome"] == "blocked"
    assert _read_back(port, reg_a)["blocked"] is True  # what the registry now serves
    assert _read_back(port, reg_b)["blocked"] is False  # the other chip is untouched
    got = client.get_device(reg_a)
    assert got is not None and got.blocked
    assert _state(env, dev_a) is BlockState.DONE
    (blocked,) = _events(env, "registry.blocked", dev_a)
    assert blocked["registry_device_id"] == reg_a and blocked["absent"] is False

    # Twice is fine: a second revoke, a second message, a direct second PATCH.
    again = revocation.revoke(engine, str(dev_a), "key_compromise", ADMIN)
    assert again.already and again.registry_block == "done"
    assert blocking.attempt(engine, client, dev_a) is blocking.BlockOutcome.BLOCKED
    assert client.block_device(reg_a) is True
    assert len(_events(env, "registry.blocked", dev_a)) == 1
    assert len(_events(env, "registry.block_requested", dev_a)) == 1
    assert client.block_device("sn-nobody") is False
    with Session(engine) as s:
        assert verify_log(s, None).ok


def test_blocks_take_the_create_slots_of_the_pacer(
    env: dict[str, Any], live: tuple[int, CloudIotRegistry]
) -> None:
    """A block is a write: it waits for the registry's next slot like a create, so blocks
    and creates together stay within the registry's rate."""
    port, client = live
    engine = env["engine"]
    devices = _devices(env, 3)
    interval = 0.2
    paced = PacedBackend(client, LocalPacer(60 / interval), LocalPacer(60 / interval))
    assert forwarder.drain(engine, paced, [d for d, _ in devices]).done == 3
    for dev, _ in devices:
        revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
    started = time.monotonic()
    assert blocking.drain_blocks(engine, paced, [d for d, _ in devices]).done == 3
    assert time.monotonic() - started >= 2 * interval  # 3 slots: at least 2 intervals apart
    assert all(_read_back(port, reg_id)["blocked"] is True for _, reg_id in devices)


def test_a_dead_registry_parks_the_block_and_a_later_sync_completes_it(
    env: dict[str, Any], registry_app: Registry
) -> None:
    engine = env["engine"]
    ((dev, reg_id),) = _devices(env, 1)
    port = free_port()
    client = _client(port, timeout_s=2.0)
    try:
        with served(registry_app.app, port=port):
            assert forwarder.drain(engine, client, [dev]).done == 1
        revocation.revoke(engine, str(dev), "privilege_withdrawn", ADMIN)
        # Nothing listens now: the task retries with backoff, then parks the block.
        retry_max = 2
        for retries in range(retry_max):
            ran = blocking.task_attempt(engine, client, dev, retries, retry_max)
            assert ran.retry_in_s is not None and ran.retry_in_s >= 0
            assert _state(env, dev) is BlockState.PENDING
        ran = blocking.task_attempt(engine, client, dev, retry_max, retry_max)
        assert ran.retry_in_s is None and ran.result["parked"] is True
        assert _state(env, dev) is BlockState.PARKED
        assert len(_events(env, "registry.block_retry", dev)) == retry_max
        (parked,) = _events(env, "registry.block_parked", dev)
        assert "parked after 3 tries" in parked["error"] and "unreachable" in parked["error"]
        assert blocking.waiting_blocks(engine) == [dev]

        # The periodic drain while the registry is still down: still parked, not re-audited.
        sync = forwarder.Forwarder(engine, client, 3600, 0)
        assert sync.tick().blocks.unavailable == 1
        assert _state(env, dev) is BlockState.PARKED
        assert len(_events(env, "registry.block_parked", dev)) == 1

        with served(registry_app.app, port=port):
            rep = sync.tick()
            assert (rep.blocks.done, rep.uploads.tried) == (1, 0)
            assert _read_back(port, reg_id)["blocked"] is True
        assert _state(env, dev) is BlockState.DONE
        assert blocking.waiting_blocks(engine) == []
        block = blocking.block_state(engine, dev)
        assert block is not None and block.blocked_at is not None and block.error is None
    finally:
        client.close()


def test_revoked_before_its_upload_it_is_uploaded_then_blocked(
    env: dict[str, Any], live: tuple[int, CloudIotRegistry]
) -> None:
    port, client = live
    engine = env["engine"]
    (dev, reg_id), (other, _) = _devices(env, 2)  # both uploads still pending
    revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
    # The upload drain leaves the revoked device to the block drain: never created unblocked.
    assert forwarder.waiting(engine) == [other]
    assert blocking.waiting_blocks(engine) == [dev]
    rep = blocking.drain_blocks(engine, client, blocking.waiting_blocks(engine))
    assert rep.done == 1
    shown = _read_back(port, reg_id)
    assert shown["blocked"] is True and len(shown["credentials"]) == 1
    assert _upload_rows(env)[dev][0] == UploadState.DONE.name
    assert env["ledger"].load(dev).step is Step.DONE


def test_a_device_never_queued_for_upload_waits_for_it(
    env: dict[str, Any], live: tuple[int, CloudIotRegistry]
) -> None:
    _, client = live
    engine = env["engine"]
    ((dev, _),) = _devices(env, 1)
    with engine.begin() as c:  # as if revoked between issue and read-back
        c.execute(text("DELETE FROM registryupload WHERE device_id = :d"), {"d": dev})
    revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
    assert blocking.attempt(engine, client, dev) is blocking.BlockOutcome.WAITING
    assert blocking.waiting_blocks(engine) == []  # nothing in the registry to block yet
    assert _state(env, dev) is BlockState.PENDING


def test_someone_elses_device_under_the_id_is_not_blocked(
    env: dict[str, Any], live: tuple[int, CloudIotRegistry]
) -> None:
    port, client = live
    engine = env["engine"]
    ((dev, reg_id),) = _devices(env, 1)
    client.create_device(reg_id, certificate_pem())  # a squatter
    assert forwarder.drain(engine, client, [dev]).conflicts == 1
    revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
    ran = blocking.task_attempt(engine, client, dev, 0, 5)
    assert ran.result["outcome"] == "skipped"
    assert _read_back(port, reg_id)["blocked"] is False
    assert _state(env, dev) is BlockState.SKIPPED
    assert _events(env, "registry.block_skipped", dev)


def test_clearblade_blocks_through_its_own_client(
    env: dict[str, Any], registry_app: Registry
) -> None:
    engine = env["engine"]
    ((dev, reg_id),) = _devices(env, 1)
    with (
        served(registry_app.app, port=443),
        ClearBladeRegistry(
            "http://127.0.0.1",
            PROJECT,
            LOCATION,
            REGISTRY,
            f"{PROJECT}:{LOCATION}:{REGISTRY}",
            TOKENS[Role.WRITER],
        ) as cb,
    ):
        assert forwarder.drain(engine, cb, [dev]).done == 1
        revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
        assert blocking.drain_blocks(engine, cb, [dev]).done == 1
        got = cb.get_device(reg_id)
        assert got is not None and got.blocked
        assert _read_back(443, reg_id)["blocked"] is True
        assert cb.block_device(reg_id) is True  # again: fine
        assert cb.block_device("sn-nobody") is False


def test_aws_revokes_the_things_certificate(env: dict[str, Any], moto_url: str) -> None:  # noqa: F811
    engine = env["engine"]
    ((dev, reg_id),) = _devices(env, 1)
    iot = boto3.client("iot", region_name=REGION, endpoint_url=moto_url)
    with AwsIotRegistry.connect(REGION, _ca_pem(env), endpoint_url=moto_url) as aws:
        assert forwarder.drain(engine, aws, [dev]).done == 1
        got = aws.get_device(reg_id)
        assert got is not None and not got.blocked
        revocation.revoke(engine, str(dev), "key_compromise", ADMIN)
        assert blocking.drain_blocks(engine, aws, [dev]).done == 1
        (arn,) = iot.list_thing_principals(thingName=reg_id)["principals"]
        cert = iot.describe_certificate(certificateId=arn.rsplit("/", 1)[1])
        assert cert["certificateDescription"]["status"] == "REVOKED"
        got = aws.get_device(reg_id)
        assert got is not None and got.blocked
        assert aws.block_device(reg_id) is True  # already revoked: left alone
        assert aws.block_device("sn-nobody") is False


def test_a_manifest_built_after_a_revocation_marks_the_chip_and_verifies(
    env: dict[str, Any], tmp_path: Path
) -> None:
    settings, engine = env["settings"], env["engine"]
    (_, reg_a), (dev_b, reg_b) = _devices(env, 2)
    done = revocation.revoke(engine, str(dev_b), "cessation_of_operation", ADMIN)

    run_env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    run_env["PROVISIONER_VAR_DIR"] = str(settings.var_dir)
    out = tmp_path / "m.json"
    built = run_cli("manifest", "build", "--batch", "1", "-o", str(out), env=run_env, cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    entries = json.loads(out.read_text())
    payloads = {
        e["header"]["uniqueId"]: json.loads(manifest.unb64url(e["payload"])) for e in entries
    }
    assert set(payloads) == {reg_a[2:], reg_b[2:]}  # the revoked chip keeps its entry
    assert "revocation" not in payloads[reg_a[2:]]
    mark = payloads[reg_b[2:]]["revocation"]
    assert mark["status"] == "revoked" and mark["reason"] == "cessation_of_operation"
    assert mark["certificateSerial"] == done.serial_number
    assert mark["revocationDate"].endswith("Z")

    signer_pem = manifest.signer_file(settings)
    signer = x509.load_pem_x509_certificate(signer_pem.read_bytes())
    verified = {e.unique_id: e.revocation for e in manifest.verify_entries(entries, signer)}
    assert verified[reg_a[2:]] is None and verified[reg_b[2:]] == mark

    clean = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    ok = run_cli("manifest", "verify", str(out), "--signer", str(signer_pem), env=clean)
    assert ok.returncode == 0, ok.stderr
    assert "2 entries" in ok.stdout
    assert f"{reg_b[2:]}: REVOKED (cessation_of_operation" in ok.stdout
    assert reg_a[2:] + ":" not in ok.stdout

    # The mark is signed: removing it breaks the entry.
    stripped = json.loads(out.read_text())
    for e in stripped:
        body = json.loads(manifest.unb64url(e["payload"]))
        if body.pop("revocation", None) is not None:
            e["payload"] = manifest.b64url(json.dumps(body, separators=(",", ":")).encode())
    with pytest.raises(manifest.ManifestError, match="signature does not verify"):
        manifest.verify_entries(stripped, signer)
