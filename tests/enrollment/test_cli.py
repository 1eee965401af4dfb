"""The operator's path, as typed: `line identity` and `station add` on the line server, the
line's API as its own process, `station enroll` on a station PC (its own var dir and
config, no database), then `station identities` and `station revoke`."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.conftest import Station, free_port, make_station, run_cli

TOKEN = re.compile(r"enr_[A-Za-z0-9_-]{43}")


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def line(tmp_path: Path) -> Station:
    st = make_station(tmp_path / "line", extra="[stations.line2]\nsockets = 2\n")
    _ok(run_cli("ca", "init", env=st.env()))
    return st


@pytest.fixture
def api(line: Station) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.api"],
        env=line.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{line.settings.api.listen_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).is_success:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _station_pc(root: Path, line_url: str) -> dict[str, str]:
    """A station PC: its own var dir and config; no database URL, no PIN, no CA."""
    root.mkdir(parents=True)
    cfg = root / "station.toml"
    cfg.write_text(
        f'var_dir = "{root / "var"}"\nrole = "station"\nstation_id = "line2"\n'
        f'line_url = "{line_url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PROVISIONER_CONFIG"] = str(cfg)
    return env


def _token_file(path: Path, token: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def test_line_identity_command(line: Station) -> None:
    out = _ok(
        run_cli("line", "identity", "--name", "line.example", "--name", "10.0.0.5", env=line.env())
    )
    assert "line identity issued" in out
    d = line.settings.line_identity_dir
    assert stat.S_IMODE((d / "line.key").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((d / "line.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["line.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    again = _ok(run_cli("line", "identity", env=line.env()))
    assert "current (unchanged)" in again and "line.example, 10.0.0.5" in again
    events = _ok(run_cli("audit", "query", "--type", "line.identity_issued", env=line.env()))
    assert events.count("line.identity_issued") == 1


def test_add_enroll_list_revoke(line: Station, api: str, tmp_path: Path) -> None:
    _ok(run_cli("line", "identity", env=line.env()))
    added = run_cli("station", "add", "line2", env=line.env())
    out = _ok(added)
    tokens = TOKEN.findall(out + added.stderr)
    assert len(tokens) == 1, out  # printed once
    token = tokens[0]
    assert "provisioner station enroll --station line2 --token-file" in out
    assert f"--line-url {line.settings.api_url}" in out

    pc = _station_pc(tmp_path / "pc", api)
    tf = _token_file(tmp_path / "line2.token", token)
    enrolled = run_cli("station", "enroll", "--token-file", str(tf), env=pc)
    out = _ok(enrolled)
    assert token not in out + enrolled.stderr
    ident = tmp_path / "pc" / "var" / "identity"
    cert = x509.load_pem_x509_certificate((ident / "station.crt").read_bytes())
    assert f"serial {cert.serial_number:x}" in out
    assert f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M}" in out
    assert "next: provisioner services run --role station" in out
    assert stat.S_IMODE((ident / "station.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ident / "broker.password").stat().st_mode) == 0o600
    assert not (tmp_path / "pc" / "var" / "provisioner.db").exists()  # no database here

    # again: the identity exists; with --force the used token is refused (401 -> 77)
    again = run_cli("station", "enroll", "--token-file", str(tf), env=pc)
    assert again.returncode == 5 and "--force" in again.stderr
    forced = run_cli("station", "enroll", "--token-file", str(tf), "--force", env=pc)
    assert forced.returncode == 77, forced.stderr
    assert "enrollment token not valid (unknown, used or expired)" in forced.stderr
    assert token not in forced.stderr

    listed = _ok(run_cli("station", "identities", env=line.env()))
    header, row = listed.splitlines()
    assert header.split() == ["STATION", "SERIAL", "NOT_AFTER", "REVOKED"]
    assert row.split()[:2] == ["line2", f"{cert.serial_number:x}"] and row.endswith("-")

    revoked = _ok(run_cli("station", "revoke", "line2", env=line.env()))
    assert f"1 certificate(s) revoked (serial {cert.serial_number:x})" in revoked
    assert "broker user st-line2 removed" in revoked
    listed = _ok(run_cli("station", "identities", env=line.env()))
    assert listed.splitlines()[1].split()[-1] != "-"
    assert "by admin:" in listed
    trail = _ok(run_cli("audit", "query", "--station", "line2", env=line.env()))
    for event in ("station.added", "station.enrolled", "station.enroll_refused", "station.revoked"):
        assert event in trail, event
    assert token not in trail


def test_enroll_errors_name_what_to_fix(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    pc = _station_pc(tmp_path / "pc", url)
    tf = _token_file(tmp_path / "t", "enr_" + "B" * 43)
    down = run_cli("station", "enroll", "--token-file", str(tf), env=pc)
    assert down.returncode == 4 and url in down.stderr, down.stderr
    wrong = _token_file(tmp_path / "u", "prv_" + "C" * 43)
    bad = run_cli("station", "enroll", "--token-file", str(wrong), env=pc)
    assert bad.returncode == 77 and "does not hold an enrollment token" in bad.stderr
    assert "C" * 43 not in bad.stderr
