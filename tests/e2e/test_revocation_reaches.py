"""Revocation reaches the registry, through real processes: the station's services (Redis,
the built-in registry, the Celery workers) run a batch of two chips, then an admin types
`provisioner ca revoke CHIP_SERIAL`; the block task goes over Redis to the registry worker,
which blocks the device in the registry (read back over the registry's HTTP API), and a
manifest built afterwards marks the chip revoked and verifies."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from provisioner.cloud.tokens import read_token
from provisioner.db.engine import make_engine
from provisioner.supervisor import running_services
from tests.conftest import Station, make_station
from tests.e2e.test_end_to_end import cli

pytestmark = pytest.mark.slow


def _registry_device(st: Station, reg_id: str) -> dict[str, object]:
    r = st.settings.registry
    resp = httpx.get(
        f"{r.url}/v1/projects/{r.project}/locations/{r.location}/registries/{r.registry}"
        f"/devices/{reg_id}",
        headers={"Authorization": f"Bearer {read_token(st.settings.registry_token_file)}"},
        timeout=10,
    )
    resp.raise_for_status()
    body: dict[str, object] = resp.json()
    return body


def test_ca_revoke_blocks_the_device_in_the_registry(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=2)
    cli(st, "ca", "init")
    with running_services(st.settings, ["line1"], st.config):
        created = json.loads(
            cli(st, "batch", "create", "--count", "2", "--station", "line1", "--json").stdout
        )
        cli(st, "batch", "start", str(created["id"]), "--json", "--timeout", "300")
        with make_engine(st.settings.db_url).connect() as c:
            serials = [
                s
                for (s,) in c.execute(
                    text("SELECT chip_serial FROM device WHERE step = 70 ORDER BY position")
                )
            ]
        assert len(serials) == 2
        revoked, kept = serials
        reg_revoked, reg_kept = "sn" + revoked.lower(), "sn" + kept.lower()
        assert _registry_device(st, reg_revoked)["blocked"] is False

        out = json.loads(
            cli(st, "ca", "revoke", revoked, "--reason", "key_compromise", "--json").stdout
        )
        assert out["registry_block"]["queued"] is True, out
        deadline = time.monotonic() + 60
        while _registry_device(st, reg_revoked)["blocked"] is not True:
            assert time.monotonic() < deadline, "the registry never showed the device blocked"
            time.sleep(0.5)
        assert _registry_device(st, reg_kept)["blocked"] is False

        text_out = cli(st, "ca", "revoke", revoked, "--reason", "key_compromise").stdout
        assert "was already revoked" in text_out and "the device is blocked" in text_out

    with make_engine(st.settings.db_url).connect() as c:
        state = c.execute(text("SELECT state FROM device_block")).scalars().all()
        events = c.execute(
            text(
                "SELECT event_type, actor FROM audit_event WHERE event_type LIKE 'registry.block%'"
            )
        ).all()
    assert state == ["DONE"]
    assert [e for e, _ in events] == ["registry.block_requested", "registry.blocked"]
    assert events[1][1] == "registry-uploader"

    manifest_file = tmp_path / "manifest.json"
    cli(st, "manifest", "build", "--batch", str(created["id"]), "-o", str(manifest_file))
    shown = cli(st, "manifest", "verify", str(manifest_file)).stdout
    assert "2 entries" in shown and f"{revoked.lower()}: REVOKED (key_compromise" in shown
    assert cli(st, "audit", "verify").returncode == 0
