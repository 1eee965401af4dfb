"""Ctrl-C during `provisioner demo` stops every child; the batch then resumes to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from provisioner.db.engine import make_engine
from provisioner.supervisor import running_services
from tests.conftest import Station
from tests.e2e.test_end_to_end import cli

pytestmark = pytest.mark.slow


def _done(st: Station) -> int:
    try:
        with make_engine(st.settings.db_url).connect() as c:
            return int(c.execute(text("SELECT count(*) FROM device WHERE step = 70")).scalar_one())
    except Exception:
        return 0


def _our_processes(st: Station) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if str(st.config).encode() in env and int(pid) != os.getpid():
            out.append(pid)
    return out


def test_ctrl_c_stops_children_and_the_batch_resumes(station: Station) -> None:
    count = 60
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli.main", "demo", "--count", str(count)],
        env=station.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while _done(station) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "provisioner batch start 1" in out
    assert list((station.settings.var / "run").glob("*.pid")) == []
    assert _our_processes(station) == []
    done_before = _done(station)
    assert done_before < count, "interrupt came too late to test resuming"

    # The demo made the first admin (a fresh install): the CLI now signs in with its token.
    token_file = station.settings.var / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    auth = ("--token-file", str(token_file))
    with running_services(station.settings, ["line1"], station.config):
        report = json.loads(cli(station, *auth, "batch", "start", "1", "--json").stdout)
        assert report["done"] == count and report["failed"] == 0
        assert report["state"] == "finished"
        report = json.loads(
            cli(station, *auth, "batch", "status", "1", "--devices", "--json").stdout
        )
    serials = {d["chip_serial"] for d in report["devices"]}
    assert len(serials) == count
    verify = json.loads(cli(station, *auth, "audit", "verify", "--json").stdout)
    assert verify["ok"]
    with make_engine(station.settings.db_url).connect() as c:
        certs = c.execute(text("SELECT count(*) FROM certificate")).scalar_one()
    assert certs == count  # nothing issued twice
