"""A scrape: the samples of several processes summed from the metrics directory, the
database's states read at scrape time, and the text Prometheus' own linter accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from provisioner import batches
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import (
    AuditCheckpoint,
    Device,
    RegistryUpload,
    ServiceHealth,
    SocketState,
    Step,
    UploadState,
)
from provisioner.metrics import multiproc
from provisioner.metrics.exposition import render
from provisioner.settings import Settings
from tests.metrics.helpers import write_samples

PROMTOOL = shutil.which("promtool")

COUNT = """
from provisioner.metrics import record
from provisioner.metrics.record import StepMeter
from provisioner.db.models import Step
for _ in range({n}):
    m = StepMeter()
    m.start(Step.IDENTIFIED)
    m.ok()
record.signature("ok", 0.2)
record.breaker("tok", {open_})
"""


def samples(body: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(got: dict, name: str, **labels: str) -> float:
    return got.get((name, frozenset(labels.items())), 0.0)


def test_processes_are_summed_and_a_dead_one_leaves_the_live_gauges(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    directory = multiproc.prepare(settings)
    assert directory.stat().st_mode & 0o777 == 0o700
    write_samples(directory, COUNT.format(n=3, open_=True), PROVISIONER_WORKER_STATION="s1")
    (saw_open,) = directory.glob("gauge_livemax_*.db")  # that process's live gauges
    write_samples(directory, COUNT.format(n=2, open_=False), PROVISIONER_WORKER_STATION="s1")
    body, content_type = render(settings, None, directory=directory)
    assert content_type.startswith("text/plain; version=0.0.4")
    got = samples(body)
    steps = {"station": "s1", "step": "identified", "outcome": "ok"}
    assert one(got, "provisioner_device_steps_total", **steps) == 5
    assert one(got, "provisioner_signatures_total", result="ok") == 2
    assert one(got, "provisioner_signing_duration_seconds_count") == 2
    assert one(got, "provisioner_signer_breaker_open", token="tok") == 1  # the max of live ones

    # The process that saw the breaker open ended (Celery's worker_process_shutdown in that
    # child): its gauge no longer counts; what it counted still does.
    pid = int(saw_open.stem.rsplit("_", 1)[1])
    write_samples(
        directory,
        "from provisioner.metrics import multiproc\n"
        f"multiproc.on_worker_process_shutdown(pid={pid}, exitcode=0)",
    )
    assert not saw_open.exists()
    got = samples(render(settings, None, directory=directory)[0])
    assert one(got, "provisioner_signer_breaker_open", token="tok") == 0
    assert one(got, "provisioner_device_steps_total", **steps) == 5


def test_without_a_directory_the_process_serves_its_own(tmp_path: Path) -> None:
    assert multiproc.ENV not in os.environ
    settings = Settings(var_dir=tmp_path / "var")
    got = samples(render(settings, None)[0])
    assert any(name == "process_cpu_seconds_total" for name, _ in got) or any(
        name.startswith("python_") for name, _ in got
    )
    assert ("provisioner_database_up", frozenset()) not in got


def test_process_exited_without_a_directory_does_nothing() -> None:
    multiproc.process_exited(os.getpid())
    multiproc.on_worker_process_shutdown(pid=os.getpid(), exitcode=0)


@pytest.fixture
def line_db(tmp_path: Path) -> tuple[Settings, Engine]:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(settings.db_url)
    create_schema(engine)
    return settings, engine


def _fill(engine: Engine, settings: Settings) -> tuple[int, int]:
    """Two batches (one under way, one cancelled), devices at several steps, one failed in
    socket 2, uploads in every state, three sockets, two services, a checkpoint."""
    running = batches.create_batch(engine, settings, station_id="line1", count=4, actor="t")
    ids = batches.mark_started(engine, running, actor="t")
    ended = batches.create_batch(engine, settings, station_id="line1", count=2, actor="t")
    batches.cancel(engine, ended, actor="t")
    with transaction(engine) as s:
        for dev_id, step in zip(ids, (Step.DONE, Step.CERT_VERIFIED, Step.IDENTIFIED,
                                      Step.PENDING), strict=True):  # fmt: skip
            dev = s.get(Device, dev_id)
            assert dev is not None
            dev.step, dev.socket = step, 2
            if step == Step.IDENTIFIED:
                dev.error = "chip in emulated:line1/2: GenKey failed"
            s.add(dev)
        for dev_id, state in zip(ids[:3], (UploadState.DONE, UploadState.PARKED,
                                           UploadState.PENDING), strict=True):  # fmt: skip
            s.add(RegistryUpload(device_id=dev_id, registry_name="r",
                                 registry_device_id=f"d{dev_id}", fingerprint_sha256="0" * 64,
                                 state=state))  # fmt: skip
        for socket_no, state in enumerate(("busy", "failed", "failed")):
            s.add(SocketState(station_id="line1", socket=socket_no, state=state))
        s.add(ServiceHealth(name="signer", up=True))
        s.add(ServiceHealth(name="registry", up=False, detail="no answer"))
        old = (datetime.now(UTC) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
        s.add(
            AuditCheckpoint(size=3, root_hash="0" * 64, note="n", reason="manual", created_at=old)
        )
    return running, ended


def test_the_database_states(line_db: tuple[Settings, Engine]) -> None:
    settings, engine = line_db
    running, ended = _fill(engine, settings)
    got = samples(render(settings, engine)[0])
    assert one(got, "provisioner_database_up") == 1
    assert {st: one(got, "provisioner_upload_backlog", state=st)
            for st in ("pending", "parked", "conflict")} == {"pending": 1, "parked": 1,
                                                             "conflict": 0}  # fmt: skip
    b = {"batch": str(running), "station": "line1"}
    assert one(got, "provisioner_batch_devices", **b, step="done") == 1
    assert one(got, "provisioner_batch_devices", **b, step="cert_verified") == 1
    assert one(got, "provisioner_batch_devices", **b, step="identified") == 1
    assert one(got, "provisioner_batch_devices", **b, step="pending") == 1
    assert one(got, "provisioner_batch_devices", **b, step="cert_issued") == 0  # present, 0
    assert (("provisioner_batch_devices", frozenset({**b, "step": "cert_issued"}.items()))
            in got)  # fmt: skip
    assert not any(dict(lab).get("batch") == str(ended) for _, lab in got)  # ended: not shown
    assert one(got, "provisioner_batch_failed_devices", **b) == 1
    assert one(got, "provisioner_socket_failed_devices", station="line1", socket="2") == 1
    sockets = {"station": "line1", "socket": "0"}  # no failure there: shown at 0
    assert ("provisioner_socket_failed_devices", frozenset(sockets.items())) in got
    assert one(got, "provisioner_sockets", station="line1", state="failed") == 2
    assert one(got, "provisioner_sockets", station="line1", state="busy") == 1
    assert one(got, "provisioner_sockets", station="line1", state="insert_chip") == 0
    assert one(got, "provisioner_service_up", service="signer") == 1
    assert one(got, "provisioner_service_up", service="registry") == 0
    events = one(got, "provisioner_audit_events_total")
    assert events >= 4  # the batches' own events
    assert one(got, "provisioner_audit_events_since_checkpoint") == events - 3
    age = one(got, "provisioner_audit_checkpoint_age_seconds")
    assert 590 <= age <= 3600


def test_an_unreadable_database_is_a_zero_not_a_failed_scrape(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    engine = make_engine(f"sqlite:///{tmp_path / 'nothing-here.db'}")  # no schema
    got = samples(render(settings, engine)[0])
    assert one(got, "provisioner_database_up") == 0
    assert not any(name == "provisioner_upload_backlog" for name, _ in got)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool (Debian package prometheus) not installed")
def test_promtool_lints_a_scrape(line_db: tuple[Settings, Engine], tmp_path: Path) -> None:
    settings, engine = line_db
    _fill(engine, settings)
    directory = multiproc.prepare(settings)
    write_samples(directory, COUNT.format(n=1, open_=False), PROVISIONER_WORKER_STATION="s1")
    body, _ = render(settings, engine, directory=directory)
    assert PROMTOOL is not None
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True,
                          timeout=60)  # fmt: skip
    assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
    assert samples(body)  # and it parses back
