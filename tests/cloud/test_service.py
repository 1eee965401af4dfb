"""The registry as a process: start-up, secrets, shutdown, restart."""

from __future__ import annotations

import signal
import socket
import stat
import subprocess
import sys
import time

import httpx
import pytest

from provisioner.cloud.tokens import token_hash
from tests.cloud.helpers import RegistryProcess, certificate_pem
from tests.conftest import Station, make_station


@pytest.fixture
def station(tmp_path_factory: pytest.TempPathFactory) -> Station:
    return make_station(tmp_path_factory.mktemp("service") / "station")


def test_the_token_stays_secret(station: Station) -> None:
    """Private file; never in the server's stdout/stderr or its database."""
    rp = RegistryProcess.start(station)
    token = rp.token
    token_file = station.settings.registry_token_file
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    with rp.client() as c:
        c.create_device("sn-logged", certificate_pem())
        c.get_device("sn-missing")
    with httpx.Client(timeout=5) as h:
        auth = {"Authorization": f"Bearer {token}"}
        # Where a token could leak from: a request line (access log), a refused header.
        h.get(f"{rp.parent_url()}/devices/{token}?access_token={token}", headers=auth)
        h.get(f"{rp.parent_url()}/devices", headers={"Authorization": f"Bearer {token}x"})
    with socket.create_connection(("127.0.0.1", int(rp.url.rsplit(":", 1)[1]))) as s:
        s.sendall(f"GARBAGE {token}\r\n\r\n".encode())  # makes the server log a warning
        s.recv(1024)
    deadline = time.monotonic() + 5
    while "Invalid HTTP request" not in rp.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rp.stop() == 0
    out = rp.output()
    assert "Invalid HTTP request" in out  # the capture works: the server did write here
    assert token not in out and token_hash(token) not in out
    db = station.settings.registry_db_url.removeprefix("sqlite:///")
    for path in (db, db + "-wal"):
        try:
            content = open(path, "rb").read()  # noqa: SIM115
        except FileNotFoundError:
            continue
        assert token.encode() not in content


def test_stops_cleanly_on_sigterm_and_sigint_and_keeps_its_devices(station: Station) -> None:
    rp = RegistryProcess.start(station, tag="first")
    with rp.client() as c:
        created = c.create_device("sn-persisted", certificate_pem())
    began = time.monotonic()
    assert rp.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 10

    again = RegistryProcess.start(station, tag="second")  # same database, same token
    with again.client() as c:
        assert c.get_device("sn-persisted") == created
    assert again.stop(signal.SIGINT) == 0  # Ctrl-C: no KeyboardInterrupt traceback
    for out in (rp.output(), again.output()):
        assert "Traceback" not in out and "Error" not in out


def test_port_in_use_is_a_clear_error(station: Station) -> None:
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", station.settings.registry.listen_port))
        squatter.listen(1)
        proc = subprocess.run(
            [sys.executable, "-m", "provisioner.cloud", "--config", str(station.config)],
            env=station.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert proc.returncode == 4  # ServiceUnavailableError
    assert "cannot listen on 127.0.0.1:" in proc.stderr and "listen_port" in proc.stderr
    assert "Traceback" not in proc.stderr
