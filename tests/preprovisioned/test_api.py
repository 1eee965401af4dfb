"""``POST /batches`` with a mode: a preprovisioned batch of a known part once the
manufacturer root is installed; a missing root, an unknown part or a part on an issue batch
refused before anything is written."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import func, select

from provisioner.api.app import create_app
from provisioner.auth import users
from provisioner.chips.emulator.manufacturer import EmulatedManufacturer
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import Batch
from provisioner.settings import Settings


def test_a_batch_is_created_in_the_mode_asked(
    tmp_path: Path, manufacturer: EmulatedManufacturer
) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    token = users.add_user(engine, "ada", "admin", "admin:root")
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {token}"}
    body = {"station": "line1", "count": 3, "mode": "preprovisioned", "part": "trustflex"}

    no_root = client.post("/batches", json=body, headers=auth)
    assert no_root.status_code >= 400 and "manufacturer trust" in no_root.text
    settings.manufacturer_root_file.parent.mkdir(parents=True)
    settings.manufacturer_root_file.write_bytes(manufacturer.root_pem())
    for bad in ({**body, "part": "trust-and-gone"}, {**body, "mode": "issue"}):
        r = client.post("/batches", json=bad, headers=auth)
        assert r.status_code == 400 and "--part" in r.text, r.text
    assert client.post("/batches", json={**body, "mode": "tng"}, headers=auth).status_code == 400
    with transaction(engine) as s:
        assert s.exec(select(func.count()).select_from(Batch)).one() == 0

    made = client.post("/batches", json=body, headers=auth)
    assert made.status_code == 201, made.text
    assert (made.json()["mode"], made.json()["part"]) == ("preprovisioned", "trustflex")
    issue = client.post("/batches", json={"station": "line1", "count": 1}, headers=auth)
    assert issue.status_code == 201 and issue.json()["mode"] == "issue"
    with transaction(engine) as s:
        rows = s.exec(select(Batch).order_by(Batch.id)).all()  # type: ignore[arg-type]
    assert [(b.mode, b.part) for b in rows] == [("preprovisioned", "trustflex"), ("issue", None)]
