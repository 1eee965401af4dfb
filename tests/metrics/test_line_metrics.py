"""Metrics scraped during a batch, through the real line: Redis, the registry, the API
(uvicorn) serving ``/metrics``, the signer, the uploader and the station's Celery workers,
each writing its samples to the supervisor's metrics directory. At the end the counters
match the database; every metric the alert rules and the Grafana dashboard use is in a
real scrape, which Prometheus' linter accepts; the Prometheus config checks out."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.auth import users
from provisioner.cli.services import wait_for_checkpoint
from provisioner.db.engine import create_schema, make_engine
from provisioner.supervisor import running_services
from tests.conftest import Station, make_station
from tests.e2e.test_end_to_end import cli

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")

N_CHIPS = 8
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
STATION_STEPS = {  # step label -> the device step value it reaches
    "identified": 10,
    "key_generated": 20,
    "pop_verified": 30,
    "cert_issued": 40,
    "cert_written": 50,
    "cert_verified": 60,
    "done": 70,
}
# Counted only when something fails (no chip fails in this run): checked by tests/metrics/
# test_record.py and test_serving.py instead.
FAULT_ONLY = {"provisioner_chip_command_errors_total", "provisioner_device_failures_total"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(body)
        for s in fam.samples
    }


def total(got: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lab), v in got.items() if n == name and want <= lab)


def rows(engine: Engine, sql: str) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(text(sql)).all())


def count(engine: Engine, sql: str) -> int:
    return int(rows(engine, sql)[0][0])


def until(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def expressions() -> list[str]:
    """The PromQL of the alert rules (one ``expr:`` line each) and of the dashboard."""
    rules = (DEPLOY / "prometheus-alerts.yml").read_text()
    exprs = re.findall(r"^\s+expr: (.+)$", rules, flags=re.M)
    dash = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs


def test_counters_match_the_database_after_a_batch(tmp_path: Path) -> None:
    st: Station = make_station(tmp_path / "station", sockets=4)
    cli(st, "ca", "init")
    engine = make_engine(st.settings.db_url)
    create_schema(engine)
    users.add_user(engine, "boss", "admin", "test")
    token = users.add_user(engine, "prometheus", "monitor", "admin:boss")
    operator = tmp_path / "olga.token"  # the CLI wants a token once there are accounts
    operator.write_text(users.add_user(engine, "olga", "operator", "admin:boss") + "\n")
    as_olga = ("--token-file", str(operator))
    url = f"{st.settings.api_url.rstrip('/')}/metrics"
    auth = {"Authorization": f"Bearer {token}"}

    def scrape() -> str:
        r = httpx.get(url, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
        return r.text

    with running_services(st.settings, ["line1"], st.config):
        assert httpx.get(url, timeout=30).status_code == 401  # no token, no metrics
        created = json.loads(
            cli(
                st,
                *as_olga,
                "batch",
                "create",
                "--count",
                str(N_CHIPS),
                "--station",
                "line1",
                "--json",
            ).stdout
        )
        batch = created["id"]

        # Scrape while the batch runs (as Prometheus would, every few hundred ms here).
        during: list[tuple[Samples, int]] = []
        stop = threading.Event()

        def scraper() -> None:
            while not stop.is_set():
                got = parse(scrape())
                during.append((got, count(engine, "SELECT count(*) FROM device WHERE step = 70")))
                stop.wait(0.3)

        t = threading.Thread(target=scraper, daemon=True)
        t.start()
        try:
            started = json.loads(
                cli(st, *as_olga, "batch", "start", str(batch), "--json", "--timeout", "300").stdout
            )
        finally:
            stop.set()
            t.join(timeout=60)
        assert started["done"] == N_CHIPS, started
        assert wait_for_checkpoint(engine, batch, 60) is not None

        # The last counts land right after their commits: wait for the uploader's.
        def settled() -> Samples | None:
            got = parse(scrape())
            done = total(got, "provisioner_device_steps_total", step="done", outcome="ok")
            return got if done >= N_CHIPS else None

        final = until("the uploads' counts", settled)
        body = scrape()
        final = parse(body)

        # --- counters == database -------------------------------------------------------
        for step, value in STATION_STEPS.items():
            in_db = count(engine, f"SELECT count(*) FROM device WHERE step >= {value}")
            ok = total(final, "provisioner_device_steps_total", step=step, outcome="ok")
            assert ok == in_db == N_CHIPS, step
            timed = total(final, "provisioner_step_duration_seconds_count", step=step)
            assert timed == ok, step
        # The station's steps carry its name; the uploader's (done) none.
        assert total(final, "provisioner_device_steps_total", station="line1") == 6 * N_CHIPS
        assert total(final, "provisioner_device_steps_total", outcome="failed") == 0
        certificates = count(engine, "SELECT count(*) FROM certificate")
        assert total(final, "provisioner_signatures_total", result="ok") == certificates
        assert total(final, "provisioner_signing_duration_seconds_count") == certificates
        uploaded = count(engine, "SELECT count(*) FROM registryupload WHERE state = 'DONE'")
        assert uploaded == N_CHIPS
        assert total(final, "provisioner_registry_uploads_total", result="done") == uploaded
        creates = total(final, "provisioner_registry_calls_total", operation="create", result="ok")
        assert creates == uploaded
        assert total(final, "provisioner_registry_pace_wait_seconds_count") == creates
        for state in ("pending", "parked", "conflict"):
            # (the table keeps the enum's name: PENDING, PARKED, CONFLICT)
            in_db = count(
                engine, f"SELECT count(*) FROM registryupload WHERE state = '{state.upper()}'"
            )
            assert total(final, "provisioner_upload_backlog", state=state) == in_db, state
        for station, state, n in rows(
            engine, "SELECT station_id, state, count(*) FROM socket_state GROUP BY 1, 2"
        ):
            assert total(final, "provisioner_sockets", station=station, state=state) == n
        for name, up in rows(engine, "SELECT name, up FROM service_health"):
            assert total(final, "provisioner_service_up", service=name) == int(up)
        events = count(engine, "SELECT max(seq) FROM audit_event")
        assert 0 < total(final, "provisioner_audit_events_total") <= events
        assert total(final, "provisioner_signer_breaker_open") == 0
        assert "provisioner_audit_checkpoint_age_seconds" in {n for n, _ in final}
        assert total(final, "provisioner_database_up") == 1
        # The batch ended: it is no longer among the batches under way.
        assert total(final, "provisioner_batch_devices", batch=str(batch)) == 0

        # --- during the batch -----------------------------------------------------------
        assert len(during) >= 2, "the batch ended before two scrapes"
        done_seen = [total(g, "provisioner_device_steps_total", step="done", outcome="ok")
                     for g, _ in during]  # fmt: skip
        assert done_seen == sorted(done_seen)  # a counter summed over processes never drops
        running = [g for g, _ in during if total(g, "provisioner_batch_devices", batch=str(batch))]
        assert running, "no scrape saw the batch under way"
        assert all(
            total(g, "provisioner_batch_devices", batch=str(batch)) == N_CHIPS for g in running
        )
        # Never more counted done than the database held when the scrape was answered.
        for g, done_after in during:
            assert total(g, "provisioner_device_steps_total", step="done", outcome="ok") <= (
                done_after
            )

    # The line stopped: its pool children said so on the way out (Celery's
    # worker_process_shutdown), so no live gauge of theirs is left to be summed.
    directory = st.settings.var / "run" / "metrics"
    assert sorted(directory.glob("counter_*.db"))  # the counts stay
    assert sorted(directory.glob("gauge_live*.db")) == []

    # --- what the alert rules and the dashboard use exists in this real scrape -----------
    present = {n for got in [final, *(g for g, _ in during)] for n, _ in got}
    used = {m for e in expressions() for m in re.findall(r"\bprovisioner_[a-z_]+", e)}
    assert used, "no metric found in the rules and the dashboard"
    missing = used - present - FAULT_ONLY
    assert not missing, missing

    # --- promtool: the scrape lints, the rules and the config check --------------------
    lint = subprocess.run(
        ["promtool", "check", "metrics"], input=body.encode(), capture_output=True, timeout=60
    )
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
