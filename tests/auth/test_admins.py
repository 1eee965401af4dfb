"""No lock-outs: the first user is an admin, the last admin can be neither revoked nor
demoted (library, CLI and API; each refusal audited and nothing else written), and root
with the factory token's real SO PIN gets an admin back."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.api.app import create_app
from provisioner.auth import users
from provisioner.db.engine import create_schema, make_engine
from provisioner.errors import ConflictError, InvalidInputError, NotFoundError
from provisioner.settings import Settings
from tests.conftest import run_cli

LAST = "ada is the last admin: add another admin first"


def _state(engine: Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """Users and tokens as stored: what a refusal must leave untouched."""
    with engine.connect() as c:
        accounts = [tuple(r) for r in c.execute(text("SELECT * FROM user_account ORDER BY name"))]
        tokens = [tuple(r) for r in c.execute(text("SELECT * FROM api_token ORDER BY id"))]
    return accounts, tokens


def _events(engine: Engine, after: int = 0) -> list[tuple[str, str, dict[str, object]]]:
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT event_type, actor, payload FROM audit_event WHERE seq > :s ORDER BY seq"),
            {"s": after},
        ).all()
    return [(t, a, json.loads(p)) for t, a, p in rows]


def _refused_only(engine: Engine, before: int, actor: str, action: str, user: str) -> None:
    """Exactly one new event, the audited refusal (``before`` events existed)."""
    new = _events(engine, before)
    assert [(t, a, p["action"], p["user"]) for t, a, p in new] == [
        ("user.change_refused", actor, action, user)
    ], new


def test_the_rules_on_the_database(db_url: str) -> None:
    engine = make_engine(db_url)
    create_schema(engine)
    boot = "admin:root"
    # The first user must be an admin.
    with pytest.raises(ConflictError, match="no admin exists yet: add an admin first"):
        users.add_user(engine, "aude", "auditor", boot)
    assert _state(engine) == ([], [])
    _refused_only(engine, 0, boot, "add", "aude")
    users.add_user(engine, "ada", "admin", boot)
    users.add_user(engine, "aude", "auditor", "admin:ada")  # now fine

    # The last admin: neither revoked nor demoted, by itself or anyone.
    for attempt, action in (
        (lambda: users.revoke_tokens(engine, "ada", "admin:ada"), "revoke"),
        (lambda: users.set_role(engine, "ada", "operator", "admin:ada"), "role"),
    ):
        before, n = _state(engine), len(_events(engine))
        with pytest.raises(ConflictError) as err:
            attempt()
        assert str(err.value) == LAST
        assert _state(engine) == before
        _refused_only(engine, n, "admin:ada", action, "ada")

    # With a second admin, the first may revoke its own token; the second is then last.
    users.add_user(engine, "bob", "admin", "admin:ada")
    assert users.revoke_tokens(engine, "ada", "admin:ada") == 1
    with pytest.raises(ConflictError, match="bob is the last admin"):
        users.set_role(engine, "bob", "auditor", "admin:bob")
    # Demoting ada (admin, no live token) is fine; promoting aude then demoting bob too.
    assert users.set_role(engine, "ada", "operator", "admin:bob") == "admin"
    assert users.set_role(engine, "aude", "admin", "admin:bob") == "auditor"
    assert users.set_role(engine, "bob", "operator", "admin:aude") == "admin"
    assert users.set_role(engine, "bob", "operator", "admin:aude") == "operator"  # no-op
    changes = [p for t, _, p in _events(engine) if t == "user.role_changed"]
    assert [(p["user"], p["from"], p["to"]) for p in changes] == [
        ("ada", "admin", "operator"),
        ("aude", "auditor", "admin"),
        ("bob", "admin", "operator"),
    ]
    # Bad input: nothing written.
    n = len(_events(engine))
    with pytest.raises(NotFoundError, match="'nobody' does not exist"):
        users.set_role(engine, "nobody", "admin", "admin:aude")
    with pytest.raises(NotFoundError):
        users.revoke_tokens(engine, "nobody", "admin:aude")
    with pytest.raises(InvalidInputError, match="unknown role 'boss'"):
        users.set_role(engine, "bob", "boss", "admin:aude")
    assert len(_events(engine)) == n
    view = {
        u.name: (u.role, u.status, u.live_tokens, u.revoked_tokens)
        for u in users.list_users(engine)
    }
    assert view == {
        "ada": ("operator", "revoked", 0, 1),
        "aude": ("admin", "active", 1, 0),
        "bob": ("operator", "active", 1, 0),
    }


def _env(var: Path, token: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PROVISIONER_VAR_DIR"] = str(var)
    if token is not None:
        env["PROVISIONER_TOKEN_FILE"] = str(token)
    return env


def _one_line_error(r: subprocess.CompletedProcess[str], code: int, text_: str) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert text_ in r.stderr, r.stderr


def test_cli_first_user_last_admin_and_list(tmp_path: Path) -> None:
    var = tmp_path / "var"
    ada, bob = tmp_path / "ada.token", tmp_path / "bob.token"
    engine = make_engine(Settings(var_dir=var).db_url)

    r = run_cli(
        "users",
        "add",
        "aude",
        "--role",
        "auditor",
        "--token-out",
        str(tmp_path / "a"),
        env=_env(var),
    )
    _one_line_error(r, 5, "no admin exists yet: add an admin first")
    assert not (tmp_path / "a").exists()
    r = run_cli("users", "list", env=_env(var))  # still the bootstrap admin
    assert r.returncode == 0 and "no users yet" in r.stdout, r.stderr
    r = run_cli("users", "add", "ada", "--role", "admin", "--token-out", str(ada), env=_env(var))
    assert r.returncode == 0, r.stderr

    before, n = _state(engine), len(_events(engine))
    r = run_cli("users", "revoke", "ada", env=_env(var, ada))
    _one_line_error(r, 5, LAST)
    r = run_cli("users", "role", "ada", "--role", "auditor", env=_env(var, ada))
    _one_line_error(r, 5, LAST)
    assert _state(engine) == before
    refusals = [(t, a, p["action"]) for t, a, p in _events(engine, n) if t != "auth.login"]
    assert refusals == [
        ("user.change_refused", "admin:ada", "revoke"),
        ("user.change_refused", "admin:ada", "role"),
    ]
    r = run_cli("users", "role", "ada", "--role", "boss", env=_env(var, ada))
    _one_line_error(r, 2, "unknown role 'boss'")
    r = run_cli("users", "role", "nobody", "--role", "admin", env=_env(var, ada))
    _one_line_error(r, 3, "'nobody' does not exist")

    r = run_cli(
        "users", "add", "bob", "--role", "admin", "--token-out", str(bob), env=_env(var, ada)
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("users", "revoke", "ada", env=_env(var, ada))  # its own, with bob left
    assert r.returncode == 0 and "1 token(s) of ada revoked" in r.stdout, r.stderr
    r = run_cli("users", "role", "bob", "--role", "operator", env=_env(var, bob))
    _one_line_error(r, 5, "bob is the last admin: add another admin first")

    r = run_cli("users", "list", env=_env(var, bob))
    assert r.returncode == 0, r.stderr
    header, *lines = r.stdout.splitlines()
    assert header.split() == ["NAME", "ROLE", "STATUS", "TOKENS", "REVOKED", "CREATED"]
    rows = {line.split()[0]: line.split()[1:5] for line in lines}
    assert rows == {"ada": ["admin", "revoked", "0", "1"], "bob": ["admin", "active", "1", "0"]}
    r = run_cli("users", "list", "--json", env=_env(var, bob))
    listed = {u["name"]: (u["status"], u["tokens"]) for u in json.loads(r.stdout)}
    assert listed == {
        "ada": ("revoked", {"live": 0, "revoked": 1}),
        "bob": ("active", {"live": 1, "revoked": 0}),
    }


def test_api_last_admin_revoke_and_demote_refused(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    tokens = {"ada": users.add_user(engine, "ada", "admin", "admin:root")}
    client = TestClient(create_app(settings))
    auth = {"Authorization": f"Bearer {tokens['ada']}"}
    client.get("/users", headers=auth)  # the login event first

    before, n = _state(engine), len(_events(engine))
    r = client.post("/users/ada/revoke", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["message"] == LAST, r.text
    r = client.post("/users/ada/role", json={"role": "auditor"}, headers=auth)
    assert r.status_code == 409 and r.json()["error"]["message"] == LAST, r.text
    assert _state(engine) == before
    assert [(t, p["action"]) for t, _, p in _events(engine, n)] == [
        ("user.change_refused", "revoke"),
        ("user.change_refused", "role"),
    ]
    r = client.post("/users/ada/role", json={"role": "boss"}, headers=auth)
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert client.post("/users/zed/role", json={"role": "admin"}, headers=auth).status_code == 404

    r = client.post("/users", json={"name": "bob", "role": "admin"}, headers=auth)
    assert r.status_code == 201, r.text
    bob = {"Authorization": f"Bearer {r.json()['token']}"}
    r = client.post("/users/ada/role", json={"role": "operator"}, headers=bob)
    assert r.json() == {"name": "ada", "role": "operator", "previous_role": "admin"}, r.text
    assert client.post("/users/bob/revoke", headers=bob).status_code == 409  # last again
    listed = {u["name"]: (u["role"], u["status"]) for u in client.get("/users", headers=bob).json()}
    assert listed == {"ada": ("operator", "active"), "bob": ("admin", "active")}
    event = _events(engine)[-2]  # the role change (then bob's refused revoke)
    assert event[0] == "user.role_changed" and event[1] == "admin:bob"


# --- break-glass: root + the factory token's SO PIN, with a real SoftHSM token -----------


# The CLI with effective uid ``nobody``. The interpreter lives under /root (mode 0700), so
# the process starts as root, loads what it needs, then drops its effective uid and gid.
AS_NOBODY = """
import os, sys
import sqlalchemy.dialects.sqlite, sqlite3
from provisioner.cli import main
os.setegid(65534)
os.seteuid(65534)
sys.argv[0] = "provisioner"
main.main()
"""


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir that user ``nobody`` can reach (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="recover-admin-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_recover_admin_needs_root_and_the_real_so_pin(open_tmp: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("recover-admin runs as root; this test runs it as root and as nobody")
    var = open_tmp / "var"
    env = _env(var)
    env["SOFTHSM2_CONF"] = "/nonexistent"  # the CLI points SoftHSM at var/ itself
    r = run_cli("ca", "init", env=env)  # as the bootstrap admin: the factory token + SO PIN
    assert r.returncode == 0, r.stderr
    so_pin_file = var / "hsm" / "factory.so-pin"
    assert so_pin_file.is_file()
    ada = open_tmp / "ada.token"
    r = run_cli("users", "add", "ada", "--role", "admin", "--token-out", str(ada), env=env)
    assert r.returncode == 0, r.stderr
    ada.unlink()  # the last admin's token is lost: nobody can administer any more
    engine = make_engine(Settings(var_dir=var).db_url)
    out = open_tmp / "new.token"

    # A wrong SO PIN: a real SO login fails; one line, audited, nothing else written.
    wrong = open_tmp / "wrong.so-pin"
    wrong.write_text("0123456789abcdef\n")
    before, n = _state(engine), len(_events(engine))
    r = run_cli(
        "users",
        "recover-admin",
        "ada",
        "--token-out",
        str(out),
        "--so-pin-file",
        str(wrong),
        env=env,
    )
    _one_line_error(r, 77, "token 'factory' refused the SO PIN: nothing changed")
    assert not out.exists() and _state(engine) == before
    _refused_only(engine, n, "break-glass:root", "recover-admin", "ada")
    assert "0123456789abcdef" not in json.dumps(_events(engine))

    # Not root: refused before the SO PIN is even read; audited.
    # nobody may write the database (and its journal): it gets the var dir, which stays
    # private (a world-writable one would be refused before any check of the user)
    for path in (var, *var.rglob("*")):
        os.chown(path, 65534, 65534)
    n = len(_events(engine))
    args = ["users", "recover-admin", "ada", "--token-out", str(out)]
    r = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *args, "--so-pin-file", str(so_pin_file)],
        env={**env, "USER": "nobody", "LOGNAME": "nobody"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    _one_line_error(r, 77, "must run as root on the line server")
    assert not out.exists() and _state(engine) == before
    _refused_only(engine, n, "break-glass:nobody", "recover-admin", "ada")

    # The right SO PIN: ada is an admin again with a new token, and it works.
    r = run_cli(
        "users",
        "recover-admin",
        "ada",
        "--token-out",
        str(out),
        "--so-pin-file",
        str(so_pin_file),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().strip() not in r.stdout + r.stderr
    kind, actor, payload = _events(engine)[-1]
    assert (kind, actor, payload["user"]) == ("user.admin_recovered", "break-glass:root", "ada")
    r = run_cli("users", "list", "--json", env=_env(var, out))
    listed = {
        u["name"]: (u["role"], u["status"], u["tokens"]["live"]) for u in json.loads(r.stdout)
    }
    assert listed == {"ada": ("admin", "active", 2)}  # the lost token stays until revoked

    # A new name is created as admin; a demoted one is re-roled.
    carl = open_tmp / "carl.token"
    r = run_cli(
        "users",
        "recover-admin",
        "carl",
        "--token-out",
        str(carl),
        "--so-pin-file",
        str(so_pin_file),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("users", "role", "ada", "--role", "auditor", env=_env(var, carl))
    assert r.returncode == 0, r.stderr
    again = open_tmp / "ada2.token"
    r = run_cli(
        "users",
        "recover-admin",
        "ada",
        "--token-out",
        str(again),
        "--so-pin-file",
        str(so_pin_file),
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert _events(engine)[-1][2]["before"] == {"role": "auditor", "disabled": False}
    r = run_cli("users", "list", "--json", env=_env(var, again))
    assert {u["name"]: u["role"] for u in json.loads(r.stdout)} == {"ada": "admin", "carl": "admin"}
    assert run_cli("audit", "verify", env=_env(var, again)).returncode == 0
