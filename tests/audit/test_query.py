"""Auditors' queries: every filter, paging, JSONL and CSV export, through the API and CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.audit import chain, query, records, triggers
from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.settings import Settings

A, B = "0123AAAAAAAAAAAAEE", "0123BBBBBBBBBBBBEE"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, Engine, str]:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with transaction(engine) as s:
        for i in range(30):
            chain.append(
                s,
                "device.cert_issued" if i % 3 == 0 else "device.key_generated",
                actor="station:line1" if i < 20 else "station:line2",
                station_id="line1" if i < 20 else "line2",
                socket=i % 4,
                batch_id=1 + i // 10,
                chip_serial=A if i % 2 else B,
                payload={"i": i, "note": 'comma, "quote"'},
            )
    # Spread the times (event i at 2026-11-01 + i - 1 hours) to query time ranges; this
    # rewrites history, so the append-only trigger is lifted for it.
    with engine.begin() as c:
        triggers.drop(c)
        for i in range(1, 31):
            c.execute(
                text("UPDATE audit_event SET ts = :t WHERE seq = :s"),
                {"t": f"2026-11-{1 + (i - 1) // 24:02d}T{(i - 1) % 24:02d}:00:00.000000Z", "s": i},
            )
        triggers.install(c)
    users.add_user(engine, "ada", "admin", "admin:root")  # the first user must be an admin
    token = users.add_user(engine, "aude", "auditor", "admin:root")
    return settings, engine, token


def _seqs(engine: Engine, f: query.EventFilter, after: int = 0, limit: int = 100) -> list[int]:
    with transaction(engine) as s:
        return [e.seq for e in query.page(s, f, after, limit)]


def test_each_filter(setup: tuple[Settings, Engine, str]) -> None:
    _, engine, _ = setup
    of = query.EventFilter.of
    assert _seqs(engine, of(serial=A.lower())) == list(range(2, 31, 2))
    assert _seqs(engine, of(batch=2)) == list(range(11, 21))
    assert _seqs(engine, of(station="line2")) == list(range(21, 31))
    assert _seqs(engine, of(actor="station:line2", batch=3)) == list(range(21, 31))
    assert _seqs(engine, of(event_type="device.cert_issued")) == list(range(1, 31, 3))
    assert _seqs(engine, of(event_type="device.*", serial=B)) == list(range(1, 31, 2))
    assert _seqs(engine, of(since="2026-11-01T05:00:00Z", until="2026-11-01T08:00")) == [6, 7, 8]
    assert _seqs(engine, of(since="2026-11-02", until="2026-11-03")) == list(range(25, 31))
    with pytest.raises(Exception, match="ISO 8601"):
        of(since="yesterday")


def test_paging_by_cursor(setup: tuple[Settings, Engine, str]) -> None:
    _, engine, _ = setup
    f = query.EventFilter.of(serial=A)
    pages, after = [], 0
    while page := _seqs(engine, f, after, 4):
        pages.append(page)
        after = page[-1]
    assert [len(p) for p in pages] == [4, 4, 4, 3]
    assert [seq for p in pages for seq in p] == list(range(2, 31, 2))


def test_api_query_and_export(setup: tuple[Settings, Engine, str]) -> None:
    settings, _, token = setup
    client = TestClient(create_app(settings))
    h = {"Authorization": f"Bearer {token}"}
    r = client.get("/audit/events", params={"serial": A, "limit": 10}, headers=h).json()
    assert [e["seq"] for e in r["events"]] == list(range(2, 21, 2)) and r["next_after"] == 20
    r = client.get("/audit/events", params={"serial": A, "after": 20}, headers=h).json()
    assert [e["seq"] for e in r["events"]] == [22, 24, 26, 28, 30] and r["next_after"] is None
    bad = client.get("/audit/events", params={"since": "soon"}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    jl = client.get("/audit/export", params={"batch": 1}, headers=h)
    rows = [json.loads(line) for line in jl.text.splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, 11)) and rows[0]["hash"]
    cs = client.get("/audit/export", params={"format": "csv", "station": "line2"}, headers=h)
    table = list(csv.DictReader(io.StringIO(cs.text)))
    assert [int(r["seq"]) for r in table] == list(range(21, 31))
    assert table[0]["payload.note"] == 'comma, "quote"'
    empty = client.get("/audit/export", params={"format": "csv", "batch": 9}, headers=h)
    assert empty.text.strip() == ",".join(records.csv_header([]))


def test_cli_export_files(setup: tuple[Settings, Engine, str], tmp_path: Path) -> None:
    settings, _, token = setup
    tf = tmp_path / "aude.token"
    tf.write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {"PROVISIONER_VAR_DIR": str(settings.var_dir), "PROVISIONER_TOKEN_FILE": str(tf)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "provisioner.cli.main", "audit", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = tmp_path / "a.jsonl"
    r = run("export", "--serial", A, "-o", str(out))
    assert r.returncode == 0 and "15 events written" in r.stderr
    assert [json.loads(x)["seq"] for x in out.read_text().splitlines()] == list(range(2, 31, 2))
    out = tmp_path / "a.csv"
    r = run("export", "--format", "csv", "--type", "device.cert_issued", "-o", str(out))
    assert r.returncode == 0 and "10 events written" in r.stderr
    assert len(list(csv.DictReader(out.open()))) == 10
    r = run("query", "--serial", B, "--limit", "3", "--json")
    assert json.loads(r.stdout)["next_after"] == 5
    assert run("export", "--format", "xml").returncode == 2
