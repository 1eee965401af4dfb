"""Exports for spreadsheets and verifiers: CSV with a header, one typed column per payload
field and dates a spreadsheet parses; JSON Lines with the payload as an object and the
exact hashed texts kept, so every exported event can be re-hashed; `audit query` with a
header and "no events match"."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.audit import chain, query, records, triggers
from provisioner.audit.entry import Entry
from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import AuditEvent
from provisioner.settings import Settings
from tests.conftest import run_cli

SERIAL = "0123AAAAAAAAAAAAEE"
# Event i's payload; they differ so that columns appear in some events only.
PAYLOADS: list[dict[str, Any]] = [
    {"fingerprint_sha256": "ab" * 32, "count": 3, "ok": True},
    {"reason": "no answer", "detail": {"step": "keygen", "retries": 2}},
    {"tags": ["a", "b"], "note": 'comma, "quote"\nand a line', "empty": {}},
    {"note": '=HYPERLINK("http://x.invalid")', "count": -1, "ratio": 0.5},
    {"who": "Zoë", "nothing": None},
]
# The exact hashed times: microseconds, "T" and "Z", as the log writes them.
TIMES = [f"2026-12-01T11:2{i}:35.02878{i}Z" for i in range(len(PAYLOADS))]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, Engine, str]:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with transaction(engine) as s:
        for i, payload in enumerate(PAYLOADS):
            chain.append(
                s,
                "device.failed" if i == 1 else "device.cert_issued",
                actor="station:line1",
                station_id="line1",
                socket=i,
                batch_id=7,
                device_id=100 + i if i != 2 else None,
                chip_serial=SERIAL,
                payload=payload,
            )
    # Known times (the hash chain is recomputed, so the log stays intact).
    with engine.begin() as c:
        triggers.drop(c)
        for seq, ts in enumerate(TIMES, start=1):
            c.execute(text("UPDATE audit_event SET ts = :t WHERE seq = :s"), {"t": ts, "s": seq})
        prev = chain.GENESIS_HASH
        for ev in c.execute(text("SELECT * FROM audit_event ORDER BY seq")).mappings():
            h = chain.link_hash(prev, chain.entry_of(AuditEvent(**ev)).encode())
            c.execute(
                text("UPDATE audit_event SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": h, "s": ev["seq"]},
            )
            prev = h
        triggers.install(c)
    users.add_user(engine, "ada", "admin", "admin:root")
    token = users.add_user(engine, "aude", "auditor", "admin:root")
    return settings, engine, token


def _stored(engine: Engine) -> list[AuditEvent]:
    return list(query.iterate(engine, query.EventFilter(chip_serial=SERIAL)))


def _cli(
    settings: Settings, token: str, tmp_path: Path, *args: str, tz: str = "UTC"
) -> subprocess.CompletedProcess[str]:
    tf = tmp_path / "aude.token"
    tf.write_text(token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env |= {
        "PROVISIONER_VAR_DIR": str(settings.var_dir),
        "PROVISIONER_TOKEN_FILE": str(tf),
        "TZ": tz,
    }
    return run_cli("audit", *args, env=env)


def test_csv_opens_with_typed_columns(setup: tuple[Settings, Engine, str], tmp_path: Path) -> None:
    settings, engine, token = setup
    out = tmp_path / "events.csv"
    r = _cli(
        settings, token, tmp_path, "export", "--format", "csv", "--serial", SERIAL, "-o", str(out)
    )
    assert r.returncode == 0, r.stderr
    assert "5 events written" in r.stderr
    with out.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    payload_cols = [
        "payload.count",
        "payload.detail.retries",
        "payload.detail.step",
        "payload.empty",
        "payload.fingerprint_sha256",
        "payload.note",
        "payload.nothing",
        "payload.ok",
        "payload.ratio",
        "payload.reason",
        "payload.tags",
        "payload.who",
    ]
    assert header == [
        "seq",
        "time_utc",
        "event_type",
        "actor",
        "role",
        "station_id",
        "socket",
        "batch_id",
        "device_id",
        "chip_serial",
        *payload_cols,
        "ts",
        "payload_text",
        "prev_hash",
        "hash",
    ]
    stored = _stored(engine)
    assert [int(row["seq"]) for row in rows] == [e.seq for e in stored]
    # Typed: dates parse, numbers are numbers, empties are empty.
    for row, ev in zip(rows, stored, strict=True):
        shown = datetime.strptime(row["time_utc"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        exact = datetime.fromisoformat(ev.ts)
        assert timedelta(0) <= exact - shown < timedelta(seconds=1)
        assert row["ts"] == ev.ts and row["payload_text"] == ev.payload
        assert row["hash"] == ev.hash and len(row["hash"]) == 64
        assert row["hash"] == row["hash"].lower() and bytes.fromhex(row["hash"])
        assert int(row["socket"]) == ev.socket and int(row["batch_id"]) == 7
    assert rows[0]["time_utc"] == "2026-12-01 11:20:35"
    assert [row["prev_hash"] for row in rows[1:]] == [row["hash"] for row in rows[:-1]]
    first, failed, listed, formula, other = rows
    assert int(first["payload.count"]) == 3 and first["payload.ok"] == "true"
    assert first["payload.fingerprint_sha256"] == "ab" * 32
    assert first["payload.reason"] == "" and first["payload.tags"] == ""
    assert failed["event_type"] == "device.failed" and failed["payload.reason"] == "no answer"
    assert failed["payload.detail.step"] == "keygen" and int(failed["payload.detail.retries"]) == 2
    assert listed["device_id"] == "" and json.loads(listed["payload.tags"]) == ["a", "b"]
    assert listed["payload.note"] == 'comma, "quote"\nand a line'
    assert listed["payload.empty"] == "{}"
    assert int(formula["payload.count"]) == -1 and float(formula["payload.ratio"]) == 0.5
    # A formula is shown as text, never run; the hashed text is untouched.
    assert formula["payload.note"] == '\'=HYPERLINK("http://x.invalid")'
    assert json.loads(formula["payload_text"])["note"].startswith("=HYPERLINK")
    assert other["payload.who"] == "Zoë" and other["payload.nothing"] == ""


def test_csv_local_time(setup: tuple[Settings, Engine, str], tmp_path: Path) -> None:
    settings, _, token = setup
    # A POSIX TZ string (UTC+05:30, no daylight saving): needs no zone database.
    r = _cli(settings, token, tmp_path, "export", "--format", "csv", "--local-time", tz="IST-5:30")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert "time_utc" not in rows[0]
    row = next(x for x in rows if x["event_type"] == "device.failed")
    assert row["time_local"] == "2026-12-01 16:51:35" and row["utc_offset"] == "+05:30"
    local = datetime.strptime(row["time_local"], "%Y-%m-%d %H:%M:%S")
    ist = timezone(timedelta(hours=5, minutes=30))
    assert local.replace(tzinfo=ist) == datetime.fromisoformat(row["ts"]).replace(microsecond=0)
    # JSON Lines keep the exact UTC time: --local-time is refused there, not ignored.
    r = _cli(settings, token, tmp_path, "export", "--local-time")
    assert r.returncode == 2 and "--local-time is for --format csv" in r.stderr


def test_jsonl_payload_object_and_rehash(
    setup: tuple[Settings, Engine, str], tmp_path: Path
) -> None:
    settings, _, token = setup
    r = _cli(settings, token, tmp_path, "export", "--serial", SERIAL)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [list(d) for d in lines] == [list(records.RECORD_FIELDS)] * len(PAYLOADS)
    assert [d["payload"] for d in lines] == PAYLOADS
    prev = chain.GENESIS_HASH
    for d in lines:
        # What a verifier does with a segment: the hashed texts give back every hash.
        entry = Entry(**{k: d[k] for k in records.EVENT_FIELDS}, payload=d["payload_text"])
        assert d["prev_hash"] == prev
        assert chain.link_hash(prev, entry.encode()) == d["hash"]
        prev = d["hash"]
    # `audit query --json` gives the same objects.
    r = _cli(settings, token, tmp_path, "query", "--serial", SERIAL, "--limit", "2", "--json")
    page = json.loads(r.stdout)
    assert page["events"] == lines[:2] and page["next_after"] == 2


def test_query_header_and_nothing_found(
    setup: tuple[Settings, Engine, str], tmp_path: Path
) -> None:
    settings, _, token = setup
    r = _cli(settings, token, tmp_path, "query", "--type", "device.failed")
    assert r.returncode == 0, r.stderr
    head, *rows = r.stdout.splitlines()
    assert head.split()[:6] == ["SEQ", "TIME", "(UTC)", "ACTOR", "EVENT", "WHERE"]
    assert len(rows) == 1 and rows[0].split()[:5] == [
        "2",
        "2026-12-01",
        "11:21:35",
        "station:line1",
        "device.failed",
    ]
    r = _cli(settings, token, tmp_path, "query", "--batch", "99")
    assert r.returncode == 0 and r.stdout.strip() == "no events match" and "SEQ" not in r.stdout
    r = _cli(settings, token, tmp_path, "query", "--local-time", "--limit", "1", tz="IST-5:30")
    assert r.stdout.splitlines()[1].split()[1:4] == ["2026-12-01", "16:50:35", "+05:30"]


def test_export_is_a_snapshot(setup: tuple[Settings, Engine, str]) -> None:
    """Events appended while a CSV export streams are left out, so the header made in the
    first pass fits every row."""
    _, engine, _ = setup
    # Pages of 2: the rows after the first page are read after the append.
    lines = query.export_lines(engine, query.EventFilter(), "csv", chunk=2)
    header = next(csv.reader([next(lines)]))
    with transaction(engine) as s:
        chain.append(s, "late.event", actor="operator:olga", payload={"brand_new": 1})
    rows = list(csv.reader(io.StringIO("".join(lines))))
    assert "payload.brand_new" not in header
    assert all(len(row) == len(header) for row in rows)
    assert "late.event" not in {row[header.index("event_type")] for row in rows}
    assert len(rows) == len(PAYLOADS) + 2  # the events, and the two user.created


def test_payload_columns_across_pages(setup: tuple[Settings, Engine, str]) -> None:
    _, engine, _ = setup
    f = query.EventFilter(chip_serial=SERIAL)
    assert query.payload_names(engine, f, chunk=2) == query.payload_names(engine, f)
    assert "payload.detail.step" in query.payload_names(engine, f, chunk=1)
    # csv_lines without names (in memory) makes the same file as the two passes.
    two_pass = "".join(query.export_lines(engine, f, "csv"))
    assert "".join(query.csv_lines(_stored(engine))) == two_pass


def test_api_export_options(setup: tuple[Settings, Engine, str]) -> None:
    settings, _, token = setup
    client = TestClient(create_app(settings))
    h = {"Authorization": f"Bearer {token}"}
    r = client.get("/audit/export", params={"format": "csv", "serial": SERIAL}, headers=h)
    assert r.status_code == 200 and r.text.splitlines()[0].startswith("seq,time_utc,")
    r = client.get("/audit/export", params={"format": "csv", "tz": "local"}, headers=h)
    assert r.status_code == 200 and r.text.splitlines()[0].startswith("seq,time_local,utc_offset,")
    for bad in ({"format": "xml"}, {"format": "csv", "tz": "mars"}):
        r = client.get("/audit/export", params=bad, headers=h)
        assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    r = client.get("/audit/export", params={"format": "csv", "batch": 99}, headers=h)
    assert r.text.strip() == ",".join(records.csv_header([]))
    r = client.get("/audit/events", params={"serial": SERIAL, "limit": 1}, headers=h)
    assert r.json()["events"][0]["payload"] == PAYLOADS[0]


def test_cells() -> None:
    assert records.cell(None) == "" and records.cell(False) == "false"
    assert records.cell(12) == "12" and records.cell(-3) == "-3"
    assert records.cell("-3") == "'-3" and records.cell("@SUM(A1)") == "'@SUM(A1)"
    assert records.cell("plain") == "plain" and records.cell([1, {"a": 2}]) == '[1,{"a":2}]'
    assert records.flatten({"a": {"b": {"c": 1}}, "d": {}}) == {
        "payload.a.b.c": 1,
        "payload.d": {},
    }
    assert records.display_time("2026-12-31T23:59:59.999999Z") == ("2026-12-31 23:59:59",)
    assert records.display_time("not a time") == ("not a time",)
    with pytest.raises(Exception, match="use utc or local"):
        records.check_time_zone("Europe/Berlin")


def test_damaged_payload_still_exports(setup: tuple[Settings, Engine, str]) -> None:
    """A payload that is not JSON (only a tampered database has one) stays text: the export
    of a damaged log completes, so the auditor can look at it."""
    _, engine, _ = setup
    with engine.begin() as c:
        triggers.drop(c)
        c.execute(text("UPDATE audit_event SET payload = 'not json' WHERE seq = 2"))
        triggers.install(c)
    f = query.EventFilter(chip_serial=SERIAL)
    rows = list(csv.DictReader(io.StringIO("".join(query.export_lines(engine, f, "csv")))))
    assert rows[1]["payload_text"] == "not json" and rows[1]["payload.note"] == ""
    assert "payload.reason" not in rows[1]  # only the damaged event had it
    lines = [json.loads(x) for x in query.export_lines(engine, f, "jsonl")]
    assert lines[1]["payload"] == "not json" == lines[1]["payload_text"]
