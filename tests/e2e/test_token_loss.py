"""The CA token disappears in the middle of a batch, through real processes.

The hsm worker is a real Celery process logged in to SoftHSM; the token directory is moved
away under it (handles go invalid, slot listing fails: what a pulled HSM looks like to the
module) and moved back. Signing must stop, be reported (audit event, status file), never
fall back to anything, and resume by itself; every device ends with exactly one
certificate, without anyone restarting the batch."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from provisioner.db.engine import make_engine
from provisioner.supervisor import running_services
from tests.conftest import make_station
from tests.e2e.test_end_to_end import cli

pytestmark = pytest.mark.slow

N_CHIPS = 8


def _count(engine: object, sql: str) -> int:
    with engine.connect() as c:  # type: ignore[attr-defined]
        return int(c.execute(text(sql)).scalar_one())


def _wait(what: str, cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_token_pulled_mid_batch_stops_signing_and_resumes(tmp_path: Path) -> None:
    st = make_station(
        tmp_path / "station",
        sockets=2,
        extra="[hsm]\nretry_base_s = 0.5\nretry_max_s = 2.0\n",
    )
    cli(st, "ca", "init")
    tokens = st.settings.token_dir
    away = tokens.with_name("tokens.pulled")
    engine = make_engine(st.settings.db_url)
    with running_services(st.settings, ["line1"], st.config):
        created = json.loads(
            cli(
                st, "batch", "create", "--count", str(N_CHIPS), "--station", "line1", "--json"
            ).stdout
        )
        cli(st, "batch", "start", str(created["id"]), "--no-wait")
        _wait(
            "two certificates", lambda: _count(engine, "SELECT count(*) FROM certificate") >= 2, 120
        )
        shutil.move(tokens, away)  # the HSM is pulled
        _wait(
            "the signer to report the loss",
            lambda: (
                _count(
                    engine, "SELECT count(*) FROM audit_event WHERE event_type = 'hsm.unavailable'"
                )
                >= 1
            ),
            60,
        )
        issued_while_away = _count(engine, "SELECT count(*) FROM certificate")
        status = [
            json.loads(p.read_text()) for p in (st.settings.var / "run").glob("hsm-signer-*.json")
        ]
        assert any(s["state"] == "open" for s in status), status
        shown = cli(st, "ca", "show")
        assert "open" in shown.stdout
        time.sleep(3)  # devices wait at their step; nothing is signed meanwhile
        assert _count(engine, "SELECT count(*) FROM certificate") == issued_while_away
        assert issued_while_away < N_CHIPS
        shutil.move(away, tokens)  # and plugged back in
        _wait(
            "every device done",
            lambda: _count(engine, "SELECT count(*) FROM device WHERE step = 70") == N_CHIPS,
            240,
        )
    assert _count(engine, "SELECT count(*) FROM certificate") == N_CHIPS
    assert _count(engine, "SELECT count(*) FROM device WHERE error IS NOT NULL") == 0
    assert (
        _count(engine, "SELECT count(*) FROM audit_event WHERE event_type = 'hsm.recovered'") >= 1
    )
    verify = cli(st, "audit", "verify")
    assert "intact" in verify.stdout
