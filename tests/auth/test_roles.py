"""Roles against every API endpoint and CLI command: allowed ones pass the check, denied
ones get 403 / exit 77 and leave an ``auth.denied`` event (repeated denials of an action
counted in it); tokens are stored hashed."""

from __future__ import annotations

import inspect
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from provisioner.api.app import create_app
from provisioner.audit import refusals
from provisioner.auth import users
from provisioner.auth.roles import ACTIONS, Role
from provisioner.cli.main import app as cli_app
from provisioner.db.engine import create_schema, make_engine
from provisioner.settings import Settings
from tests.conftest import run_cli

# Every authenticated endpoint with the action it declares (the test fails if the app
# has an endpoint missing here, so a new one cannot skip the matrix).
ENDPOINTS: list[tuple[str, str, dict | None, str]] = [
    ("GET", "/audit/events?limit=5", None, "audit.query"),
    ("GET", "/audit/export?format=csv", None, "audit.export"),
    ("GET", "/audit/proof/0123AAAAAAAAAAAAEE", None, "audit.prove"),
    ("GET", "/audit/checkpoints", None, "audit.query"),
    ("GET", "/audit/consistency?old=1&new=2", None, "audit.consistency"),
    ("GET", "/audit/verify", None, "audit.verify"),
    ("GET", "/batches", None, "batch.read"),
    ("GET", "/batches/1", None, "batch.read"),
    ("POST", "/batches", {"station": "line1", "count": 2}, "batch.create"),
    ("POST", "/batches/1/pause", None, "batch.control"),
    ("POST", "/batches/1/resume", None, "batch.control"),
    ("POST", "/batches/1/cancel", None, "batch.control"),
    ("POST", "/batches/1/close", None, "batch.control"),
    ("POST", "/batches/1/retry", {"devices": []}, "batch.control"),
    ("PUT", "/batches/1/quota", {"quota": 1}, "batch.quota"),
    ("GET", "/users", None, "users.read"),
    ("POST", "/users", {"name": "newbie", "role": "operator"}, "users.manage"),
    ("POST", "/users/nobody/revoke", None, "users.manage"),
    ("POST", "/users/nobody/role", {"role": "operator"}, "users.manage"),
    ("GET", "/metrics", None, "metrics.read"),
    ("POST", "/fleet/tokens", {"label": "x"}, "fleet.manage"),
    ("GET", "/fleet/tokens", None, "fleet.read"),
    ("POST", "/fleet/tokens/1/regenerate", None, "fleet.manage"),
    ("GET", "/fleet/devices", None, "fleet.read"),
    ("POST", "/fleet/devices/fd-x/revoke", None, "fleet.revoke"),
]
PUBLIC = {"/healthz", "/crl/{filename}", "/ca/{filename}", "/stations/enroll"}
PUBLIC |= {"/ocsp", "/ocsp/{encoded}"}  # the OCSP responder: signed answers, no token


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Settings, Engine, dict[str, str]]:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    first_admin = (Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.MONITOR)  # admin first
    tokens = {
        r.value: users.add_user(engine, f"{r.value}1", r.value, "admin:root") for r in first_admin
    }
    return settings, engine, tokens


def _denials(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT actor, payload FROM audit_event WHERE event_type = 'auth.denied'")
        ).all()
    return [(a, json.loads(p)["action"]) for a, p in rows]


def test_every_api_endpoint_is_in_the_matrix(setup: tuple[Settings, Engine, dict]) -> None:
    app = create_app(setup[0])
    paths = set(app.openapi()["paths"])
    listed = {p.split("?")[0] for _, p, _, _ in ENDPOINTS}
    templated = {
        "/audit/proof/{serial}",
        "/batches/{batch_id}",
        *(f"/batches/{{batch_id}}/{a}" for a in ("pause", "resume", "cancel", "close", "retry")),
        "/batches/{batch_id}/quota",
        "/users/{name}/revoke",
        "/users/{name}/role",
        "/fleet/tokens/{token_id}/regenerate",
        "/fleet/devices/{device_id}/revoke",
    }
    concrete = {
        "/audit/proof/0123AAAAAAAAAAAAEE",
        "/batches/1",
        *(f"/batches/1/{a}" for a in ("pause", "resume", "cancel", "close", "retry", "quota")),
        "/users/nobody/revoke",
        "/users/nobody/role",
        "/fleet/tokens/1/regenerate",
        "/fleet/devices/fd-x/revoke",
    }
    assert paths - PUBLIC == (listed - concrete) | templated


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_each_role_against_each_endpoint(
    setup: tuple[Settings, Engine, dict[str, str]], role: str
) -> None:
    settings, engine, tokens = setup
    client = TestClient(create_app(settings))
    auth = {"Authorization": f"Bearer {tokens[role]}"}
    denied: dict[str, int] = {}
    for method, path, body, action in ENDPOINTS:
        before = len(_denials(engine))
        r = client.request(method, path, json=body, headers=auth)
        if role in ACTIONS[action]:
            assert r.status_code not in (401, 403), (role, path, r.text)
        else:
            assert r.status_code == 403, (role, path, r.text)
            assert r.json()["error"]["status"] == "PERMISSION_DENIED"
            # the first denial of an action appends auth.denied; repeated ones within the
            # window are counted in it (provisioner.audit.refusals), exactly
            new = _denials(engine)[before:]
            if action in denied:
                assert new == [], path
            else:
                assert new == [(f"{role}:{role}1", action)], path
            denied[action] = denied.get(action, 0) + 1
    with Session(engine) as s:
        counts = {w.reason: w.count for w in refusals.pending(s) if w.actor == f"{role}:{role}1"}
    assert counts == denied


def test_missing_bad_and_revoked_tokens_get_401(
    setup: tuple[Settings, Engine, dict[str, str]],
) -> None:
    settings, engine, tokens = setup
    client = TestClient(create_app(settings))
    assert client.get("/healthz").status_code == 200  # public
    assert client.get("/batches").status_code == 401
    bad = client.get("/batches", headers={"Authorization": "Bearer prv_nope"})
    assert bad.status_code == 401 and "prv_nope" not in bad.text
    users.revoke_tokens(engine, "operator1", "admin:root")
    r = client.get("/batches", headers={"Authorization": f"Bearer {tokens['operator']}"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_tokens_are_stored_hashed_and_logins_audited(
    setup: tuple[Settings, Engine, dict[str, str]],
) -> None:
    settings, engine, tokens = setup
    client = TestClient(create_app(settings))
    auth = {"Authorization": f"Bearer {tokens['auditor']}"}
    client.get("/audit/events", headers=auth)
    client.get("/audit/events", headers=auth)
    with engine.connect() as c:
        stored = [r[0] for r in c.execute(text("SELECT token_sha256 FROM api_token"))]
        logins = c.execute(
            text("SELECT actor FROM audit_event WHERE event_type = 'auth.login'")
        ).all()
        dump = " ".join(str(r) for r in c.execute(text("SELECT * FROM audit_event")))
    assert sorted(stored) == sorted(users.token_hash(t) for t in tokens.values())
    assert [r[0] for r in logins] == ["auditor:auditor1"]  # once per token per process
    for t in tokens.values():
        assert t not in dump and t not in " ".join(stored)


# --- the CLI ----------------------------------------------------------------------------

# Offline checks: they act on nothing, only check a file with a key or certificate.
OFFLINE = {
    "audit check-proof",
    "audit check-consistency",
    "audit verifier",
    "manifest verify",
    "report verify",
}
# Break-glass: no admin is left to authorise it, so root and the SO PIN do (and it says so).
BREAK_GLASS = {"users recover-admin"}
# A station PC has no accounts and no database: the one-time enrollment token authorises.
ENROLL = {"station enroll"}
# Schema changes: whoever holds the database's own credentials (the user accounts live in
# the very schema being upgraded).
DB_OWNER = {"db upgrade", "db current"}
# The field device: the chip's key authenticates it to the bridge (a chip-signed JWT), not a
# user account; it touches no record of the line.
DEVICE = {"device connect"}
# The built-in cloud's own database (0600, the registry service's OS user): file permissions
# authorise, as for the registry process itself.
CLOUD_FILES = {"events tail"}


def _commands(app: typer.Typer, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for cmd in app.registered_commands:
        out.append((prefix + (cmd.name or cmd.callback.__name__), cmd.callback))  # type: ignore[union-attr]
    for group in app.registered_groups:
        assert group.typer_instance is not None
        out += _commands(group.typer_instance, f"{prefix}{group.name} ")
    return out


def test_every_cli_command_declares_a_known_action() -> None:
    commands = _commands(cli_app)
    assert len(commands) > 20
    for name, fn in commands:
        src = inspect.getsource(fn)  # type: ignore[arg-type]
        if name in OFFLINE:
            assert ".require(" not in src
            continue
        if name in BREAK_GLASS:
            assert ".require(" not in src and "recovery.require_root(" in src
            continue
        if name in ENROLL:
            assert ".require(" not in src and "identity.enroll(" in src
            continue
        if name in DB_OWNER:
            assert ".require(" not in src and "c.engine" not in src
            continue
        if name in DEVICE | CLOUD_FILES:
            assert ".require(" not in src and "c.engine" not in src
            continue
        declared = [
            part.split('"')[1] for part in src.split(".require(")[1:] if part.startswith('"')
        ]
        assert len(declared) == 1, f"`provisioner {name}` must declare exactly one action"
        assert declared[0] in ACTIONS, (name, declared)


def _cli(
    settings: Settings, *args: str, token: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PROVISIONER_VAR_DIR"] = str(settings.var_dir)
    if token is not None:
        env["PROVISIONER_TOKEN_FILE"] = str(token)
    return run_cli(*args, env=env)


def test_cli_bootstrap_then_tokens_and_roles(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    tok = {r: tmp_path / f"{r}.token" for r in ("admin", "operator", "auditor")}
    # No users yet: the local admin bootstraps the first account.
    r = _cli(settings, "users", "add", "ada", "--role", "admin", "--token-out", str(tok["admin"]))
    assert r.returncode == 0, r.stderr
    secret = tok["admin"].read_text().strip()
    assert secret not in r.stdout + r.stderr
    assert stat.S_IMODE(tok["admin"].stat().st_mode) == 0o600
    # From now on a token is needed.
    r = _cli(settings, "batch", "list")
    assert r.returncode == 77 and "--token-file" in r.stderr
    for name, role in (("olga", "operator"), ("aude", "auditor")):
        r = _cli(
            settings,
            "users",
            "add",
            name,
            "--role",
            role,
            "--token-out",
            str(tok[role]),
            token=tok["admin"],
        )
        assert r.returncode == 0, r.stderr
    assert _cli(settings, "batch", "list", "--json", token=tok["operator"]).returncode == 0
    r = _cli(settings, "audit", "query", token=tok["operator"])
    assert r.returncode == 77 and "operator:olga may not audit.query" in r.stderr
    assert _cli(settings, "audit", "query", "--json", token=tok["auditor"]).returncode == 0
    r = _cli(settings, "batch", "create", "-n", "1", "-s", "line1", token=tok["auditor"])
    assert r.returncode == 77 and "needs role admin or operator" in r.stderr
    r = _cli(settings, "users", "list", token=tok["operator"])
    assert r.returncode == 77
    r = _cli(settings, "ca", "rotate", token=tok["auditor"])
    assert r.returncode == 77
    out = _cli(settings, "audit", "query", "--type", "auth.*", "--json", token=tok["auditor"])
    events = json.loads(out.stdout)["events"]
    denied = [
        (e["actor"], e["payload"]["action"]) for e in events if e["event_type"] == "auth.denied"
    ]
    assert denied == [
        ("operator:olga", "audit.query"),
        ("auditor:aude", "batch.create"),
        ("operator:olga", "users.read"),
        ("auditor:aude", "ca.rotate"),
    ]
    assert {e["role"] for e in events if e["event_type"] == "auth.login"} == {
        "admin",
        "operator",
        "auditor",
    }
    # A revoked token is refused.
    assert _cli(settings, "users", "revoke", "olga", token=tok["admin"]).returncode == 0
    r = _cli(settings, "batch", "list", token=tok["operator"])
    assert r.returncode == 77 and "not valid" in r.stderr


def test_batch_ids_beyond_64_bits_are_refused_not_5xx(
    setup: tuple[Settings, Engine, dict[str, str]],
) -> None:
    """A batch id the database cannot hold is the caller's mistake (400), never an
    overflow inside the driver (500), on every batch route."""
    settings, _, tokens = setup
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {tokens['admin']}"}
    huge = "99999999999999999999999"
    for method, path, body, _ in ENDPOINTS:
        if not path.startswith("/batches/1"):
            continue
        r = client.request(
            method, path.replace("/batches/1", f"/batches/{huge}"), json=body, headers=auth
        )
        assert r.status_code == 400, (method, path, r.status_code, r.text)
    r = client.get("/batches/9223372036854775807", headers=auth)
    assert r.status_code == 404, r.text  # the largest id the database holds: just unknown
