"""The admins' side: ``/fleet`` in the API under user tokens and roles, and ``provisioner
fleet ...`` as typed."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine
from provisioner.fleet import service, tokens
from tests.cloud.inprocess import REGISTRY_NAME
from tests.conftest import make_station, run_cli
from tests.fleet.conftest import MakeFleet
from tests.fleet.test_flow import events


def test_api_tokens_devices_and_revoke(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    api, admin = fleet.api()
    auditor = {
        "Authorization": "Bearer " + users.add_user(fleet.engine, "aude", "auditor", "admin:ada")
    }
    r = api.post("/fleet/tokens", json={"label": "batch 12", "max_uses": 2}, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["registry"] == REGISTRY_NAME  # the line's registry by default
    assert (made["max_uses"], made["state"], made["created_by"]) == (2, "live", "admin:ada")
    assert api.post("/fleet/tokens", json={}, headers=auditor).status_code == 403

    listed = api.get("/fleet/tokens", headers=auditor).json()
    assert [t["id"] for t in listed] == [made["id"]]
    assert "token" not in listed[0] and made["token"] not in json.dumps(listed)

    r = api.post(f"/fleet/tokens/{made['id']}/regenerate", headers=admin)
    assert r.status_code == 201, r.text
    assert fleet.device().enroll(made["token"]).status_code == 401
    enrolled = fleet.device().enroll(r.json()["token"], label="valve")
    assert enrolled.status_code == 200
    device_id = enrolled.json()["device_id"]

    devices = api.get("/fleet/devices", headers=auditor).json()
    assert [(d["device_id"], d["label"], d["revoked_at"]) for d in devices] == [
        (device_id, "valve", None)
    ]
    assert api.post(f"/fleet/devices/{device_id}/revoke", headers=auditor).status_code == 403
    r = api.post(
        f"/fleet/devices/{device_id}/revoke", json={"reason": "key_compromise"}, headers=admin
    )
    assert r.status_code == 200, r.text
    # it never got a certificate, so it is not in the registry; the CRLs were published
    assert r.json()["registry_blocked"] is False and r.json()["crl_error"] is None
    assert api.get("/fleet/devices", headers=admin).json()[0]["revoked_at"] is not None
    assert api.post("/fleet/devices/fd-none/revoke", headers=admin).status_code == 404
    assert (
        api.post("/fleet/devices/x/revoke", json={"reason": "no"}, headers=admin).status_code == 400
    )


def test_cli_token_create_list_regenerate_devices_revoke(tmp_path: Path) -> None:
    line = make_station(tmp_path / "line")  # its registry port has no listener
    env = line.env()
    out = tmp_path / "enroll.token"
    r = run_cli(
        "fleet",
        "token",
        "create",
        "--max-uses",
        "3",
        "--label",
        "north",
        "--token-out",
        str(out),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    token = out.read_text().strip()
    assert token.startswith("fet_") and token not in r.stdout + r.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    r = run_cli("fleet", "token", "list", "--json", env=env)
    assert r.returncode == 0, r.stderr
    (listed,) = json.loads(r.stdout)
    assert (listed["label"], listed["max_uses"], listed["state"]) == ("north", 3, "live")
    assert listed["registry"] == tokens.default_registry(line.settings)

    r = run_cli("fleet", "token", "regenerate", str(listed["id"]), env=env)
    assert r.returncode == 0, r.stderr
    assert "is dead from now on" in r.stdout
    new = next(w for w in r.stdout.split() if w.startswith("fet_"))

    engine = make_engine(line.settings.db_url)
    create_schema(engine)
    enrolled = service.enroll(line.settings, engine, new, "from cli test")
    r = run_cli("fleet", "devices", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [d["device_id"] for d in json.loads(r.stdout)] == [enrolled.device_id]

    # no registry and no CA here: the revocation stands, and says what is left to retry
    r = run_cli("fleet", "revoke", enrolled.device_id, "--reason", "superseded", env=env)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "revoked" in r.stdout and "not blocked in the registry yet" in r.stderr
    assert "CRLs not published" in r.stderr
    (ev,) = events(engine, "fleet.device_revoked")
    assert ev["reason"] == "superseded" and ev["device"] == enrolled.device_id
    engine.dispose()
