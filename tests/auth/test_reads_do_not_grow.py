"""Reading the trail does not grow it: a sign-in is recorded once per user, channel (cli,
api) and UTC day, so an auditor's queries, exports, verifications and proofs leave the
log exactly as they found it."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.audit import chain, triggers
from provisioner.audit.checkpointer import Checkpointer, audit_key_file
from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.settings import Settings
from tests.conftest import run_cli

SERIAL = "0123AAAAAAAAAAAAEE"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, Engine, list[Path]]:
    """A log with a chip's events under a checkpoint signed by a software P-256 key
    (installed as the audit public key), an admin and an auditor with two tokens."""
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    with transaction(engine) as s:
        for i in range(6):
            chain.append(
                s,
                f"device.step{i}",
                actor="station:line1",
                station_id="line1",
                socket=1,
                batch_id=1,
                chip_serial=SERIAL,
                payload={"step": i},
            )
    users.add_user(engine, "ada", "admin", "admin:root")
    tokens = [
        users.add_user(engine, "aude", "auditor", "admin:root"),
        users.add_token(engine, "aude", "admin:root", "laptop"),
    ]
    key = ec.generate_private_key(ec.SECP256R1())
    assert Checkpointer(engine, settings, key).write("manual") is not None
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    audit_key_file(settings).parent.mkdir(parents=True, exist_ok=True)
    audit_key_file(settings).write_bytes(pem)
    files = []
    for n, token in enumerate(tokens):
        files.append(tmp_path / f"aude{n}.token")
        files[-1].write_text(token)
    return settings, engine, files


def _log(engine: Engine) -> tuple[int, str | None]:
    """How many events and the last chain hash: what any growth would change."""
    with engine.connect() as c:
        n, last = c.execute(text("SELECT count(*), max(seq) FROM audit_event")).one()
        head = c.execute(text("SELECT hash FROM audit_event WHERE seq = :s"), {"s": last})
        return int(n), head.scalar()


def _logins(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT actor, payload FROM audit_event WHERE event_type = 'auth.login'")
        ).all()
    return [(actor, json.loads(p)["via"]) for actor, p in rows]


def test_auditor_reads_append_nothing(
    setup: tuple[Settings, Engine, list[Path]], tmp_path: Path
) -> None:
    settings, engine, token_files = setup
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PROVISIONER_VAR_DIR"] = str(settings.var_dir)

    def cli(*args: str, token: Path = token_files[0]) -> None:
        r = run_cli("--token-file", str(token), "audit", *args, env=env, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stdout, r.stderr)

    before = _log(engine)
    cli("query", "--limit", "5")  # the day's sign-in
    assert _logins(engine) == [("auditor:aude", "cli")]
    signed_in = _log(engine)
    assert signed_in[0] == before[0] + 1
    reads = [
        ("query", "--serial", SERIAL),
        ("query", "--type", "auth.*", "--json"),
        ("export", "--format", "csv", "-o", str(tmp_path / "a.csv")),
        ("export", "-o", str(tmp_path / "a.jsonl")),
        ("verify",),
        ("checkpoints",),
        ("prove", SERIAL, "-o", str(tmp_path / "proof.json")),
    ]
    for args in reads:
        cli(*args)
        assert _log(engine) == signed_in, f"`audit {' '.join(args)}` grew the trail"
    cli("query", token=token_files[1])  # the same user with another token: same day
    assert _log(engine) == signed_in
    # The export holds the one sign-in, and nothing of the reads after it.
    exported = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [e["event_type"] for e in exported].count("auth.login") == 1
    assert exported[-1]["hash"] == signed_in[1]


def test_api_signs_in_once_a_day_across_processes(
    setup: tuple[Settings, Engine, list[Path]],
) -> None:
    settings, engine, token_files = setup
    auth = {"Authorization": f"Bearer {token_files[0].read_text()}"}
    for _ in range(2):  # two server processes, one after the other
        client = TestClient(create_app(settings))
        for path in ("/audit/events", "/audit/checkpoints", "/audit/export"):
            assert client.get(path, headers=auth).status_code == 200
    assert _logins(engine) == [("auditor:aude", "api")]


def test_next_day_and_other_channel_sign_in_again(
    setup: tuple[Settings, Engine, list[Path]],
) -> None:
    _, engine, _ = setup
    aude = users.Principal("aude", "auditor")
    ada = users.Principal("ada", "admin")
    assert users.record_login(engine, aude, "cli") is True
    assert users.record_login(engine, aude, "cli") is False
    assert users.record_login(engine, aude, "api") is True  # another door
    assert users.record_login(engine, ada, "cli") is True  # another user
    assert users.record_login(engine, ada, "cli") is False
    # Make those sign-ins yesterday's (the append-only trigger lifted for the test):
    # today's first command is a new sign-in, the second again is not.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT23:59:59.999999Z")
    with engine.begin() as c:
        triggers.drop(c)
        c.execute(
            text("UPDATE audit_event SET ts = :t WHERE event_type = 'auth.login'"),
            {"t": yesterday},
        )
        triggers.install(c)
    assert users.record_login(engine, aude, "cli") is True
    assert users.record_login(engine, aude, "cli") is False
    assert _logins(engine) == [
        ("auditor:aude", "cli"),
        ("auditor:aude", "api"),
        ("admin:ada", "cli"),
        ("auditor:aude", "cli"),
    ]
