"""Private files (issue 20): what the product writes under its var dir is readable by its
own OS user only, whatever the umask of the shell that started it, and a start (or a
command that opens the database, a PIN file or a token file) refuses a private file other
users can read, with the one-line command that fixes it; after that command, it starts.

The processes here are started with umask 022 on purpose, the common default of a shell:
the test harness itself runs with 077, as the product does.
"""

from __future__ import annotations

import json
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from hsm.pins import PinSource
from provisioner.errors import ConfigError
from provisioner.settings import Settings
from provisioner.supervisor import Supervisor
from tests.conftest import Station, make_station

SHELL_UMASK = 0o022


def _open_to_others(var: Path) -> list[str]:
    return [
        f"{path} {stat.S_IMODE(path.lstat().st_mode):04o}"
        for path in (var, *var.rglob("*"))
        if not path.is_symlink() and stat.S_IMODE(path.lstat().st_mode) & 0o077
    ]


def _cli(st: Station, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``provisioner ARGS`` started from a shell whose umask is 022."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner.cli.main", *args],
        env={**st.env(), "SOFTHSM2_CONF": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=timeout,
        umask=SHELL_UMASK,
    )


def _fix(message: str) -> str:
    """The command between backticks after ``fix:`` in a refusal."""
    assert "fix: `" in message, message
    return message.split("fix: `", 1)[1].split("`", 1)[0]


def _run_fix(message: str) -> None:
    subprocess.run(["sh", "-c", _fix(message)], check=True)


@pytest.mark.slow
def test_a_fresh_line_leaves_nothing_readable_by_others(station: Station) -> None:
    """`demo` makes the CA, starts every service (Redis, registry, API, workers), runs a
    batch, writes logs and stops: nothing under the var dir has a group or other bit."""
    r = _cli(station, "demo", "--count", "2", "--timeout", "300", timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    var = station.settings.var
    assert (var / "provisioner.db").is_file() and (var / "registry.db").is_file()
    assert list((var / "log").glob("*.log")) and (var / "ca").is_dir()
    assert _open_to_others(var) == []


def test_the_registry_alone_creates_its_database_private(tmp_path: Path) -> None:
    """The registry started by itself (no supervisor, shell umask 022): registry.db 0600."""
    st = make_station(tmp_path / "station")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cloud", "--config", str(st.config)],
        env=st.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        umask=SHELL_UMASK,
    )
    db = st.settings.var / "registry.db"
    try:
        deadline = time.monotonic() + 60
        while not db.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.exists(), "the registry never created its database"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert _open_to_others(st.settings.var) == []


# --- refused at start, with the fix ------------------------------------------------------


def _make(path: Path, mode: int, is_dir: bool = False) -> None:
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x\n")
    path.chmod(mode)


def _kinds(s: Settings) -> dict[str, tuple[Path, int, bool]]:
    var = s.var
    return {
        "database": (var / "provisioner.db", 0o644, False),
        "database wal": (var / "provisioner.db-wal", 0o644, False),
        "registry database": (var / "registry.db", 0o640, False),
        "log dir": (var / "log", 0o755, True),
        "log file": (var / "log" / "worker.log", 0o604, False),
        "rotated log": (var / "log" / "api.log.1", 0o644, False),
        "PIN file": (s.pin_file, 0o644, False),
        "token dir": (s.token_dir, 0o750, True),
        "token object": (s.token_dir / "abc" / "token.object", 0o644, False),
        "upload token": (s.registry_token_file, 0o644, False),
        "identity key": (s.line_identity_dir / "line.key", 0o640, False),
    }


@pytest.mark.parametrize("kind", list(_kinds(Settings())))
def test_a_start_refuses_a_private_file_others_can_read(tmp_path: Path, kind: str) -> None:
    st = make_station(tmp_path / "station")
    path, mode, is_dir = _kinds(st.settings)[kind]
    _make(path, mode, is_dir)
    sup = Supervisor(st.settings, st.config)
    with pytest.raises(ConfigError) as err:
        sup.acquire()
    msg = str(err.value)
    assert "\n" not in msg
    assert f"{path} is mode {mode:04o}" in msg
    assert _fix(msg) == f"chmod {700 if is_dir else 600} {shlex.quote(str(path))}"
    assert not (st.settings.var / "run" / "supervisor.lock").exists()  # refused first

    _run_fix(msg)
    sup.acquire()  # after the fix command, the start goes on
    sup.release()


def test_many_open_files_get_one_recursive_fix(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station")
    for path, mode, is_dir in _kinds(st.settings).values():
        _make(path, mode, is_dir)
    sup = Supervisor(st.settings, st.config)
    with pytest.raises(ConfigError) as err:
        sup.acquire()
    msg = str(err.value)
    assert "\n" not in msg and "more private files are open to other users" in msg
    assert _fix(msg) == f"chmod -R go= {st.settings.var}"
    _run_fix(msg)
    sup.acquire()
    sup.release()


def test_a_pin_file_outside_the_var_dir_is_checked_at_start(tmp_path: Path) -> None:
    pin = tmp_path / "etc" / "factory.pin"
    _make(pin, 0o644)
    st = make_station(tmp_path / "station", extra=f'[hsm]\npin_source = "file:{pin}"\n')
    sup = Supervisor(st.settings, st.config)
    with pytest.raises(ConfigError, match=f"PIN file {pin} is mode 0644") as err:
        sup.acquire()
    assert _fix(str(err.value)) == f"chmod 600 {pin}"  # not the var dir's recursive fix


# --- refused where a PIN file, a token file or the database is read ----------------------


def test_a_pin_file_with_mode_0644_is_refused(tmp_path: Path) -> None:
    pin = tmp_path / "factory.pin"
    pin.write_text("5ecret-p1n-value\n")
    pin.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        PinSource.parse(f"file:{pin}").read()
    msg = str(err.value)
    assert f"PIN file {pin} is mode 0644" in msg and "5ecret" not in msg
    assert _fix(msg) == f"chmod 600 {pin}"
    _run_fix(msg)
    assert PinSource.parse(f"file:{pin}").read() == "5ecret-p1n-value"


def test_a_command_refuses_a_database_others_can_read(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station")
    r = _cli(st, "users", "list", "--json")  # creates the database, private
    assert r.returncode == 0, r.stderr
    db = st.settings.var / "provisioner.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    db.chmod(0o644)
    r = _cli(st, "users", "list", "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f"database {db} is mode 0644" in r.stderr
    _run_fix(r.stderr)
    r = _cli(st, "users", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr


def test_a_command_refuses_a_token_file_others_can_read(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station")
    token = tmp_path / "ada.token"
    r = _cli(st, "users", "add", "ada", "--role", "admin", "--token-out", str(token))
    assert r.returncode == 0, r.stderr
    token.chmod(0o644)
    r = _cli(st, "--token-file", str(token), "users", "list", "--json")
    assert r.returncode == 2 and f"token file {token} is mode 0644" in r.stderr
    assert token.read_text().strip() not in r.stderr
    _run_fix(r.stderr)
    r = _cli(st, "--token-file", str(token), "users", "list", "--json")
    assert r.returncode == 0, r.stderr


def test_postgresql_has_no_file_to_check(tmp_path: Path) -> None:
    """A database URL that is not SQLite is not a file: nothing to refuse."""
    from provisioner.private_files import check_database, sqlite_files

    assert sqlite_files("postgresql+psycopg://u@h/db") == []
    check_database("postgresql+psycopg://u@h/db")
    # and a SQLite URL names the database and its side files
    url = f"sqlite:///{tmp_path / 'p.db'}"
    create_engine(url).connect().close()
    assert [p.name for p in sqlite_files(url)] == ["p.db", "p.db-wal", "p.db-shm", "p.db-journal"]
