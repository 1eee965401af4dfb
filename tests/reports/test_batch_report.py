"""A real batch's signed report: devices provisioned through the product's own ledger and
signer (the SoftHSM CA; software keys stand in for the chips), closed with failures, put under
a signed checkpoint; then ``report batch`` and ``report verify`` as a user types them."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from html import escape as html_escape
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, select

from provisioner import batches
from provisioner.ca.store import fingerprint
from provisioner.db.engine import create_schema, make_engine
from provisioner.db.models import AuditCheckpoint, AuditEvent, PartAction, UploadState
from provisioner.issuance import IssuanceService
from provisioner.ledger import DeviceLedger, registry_device_id
from provisioner.reports.batch import throughput
from provisioner.reports.signing import key_fingerprint
from tests.conftest import Station, make_station, run_cli
from tests.core.test_issuance_policy import _ready_device

REGISTRY = "projects/p/locations/l/registries/r"
FAILURE = "chip did not answer <socket 2> & timed out"  # markup in records must be escaped


def cli(st: Station, *args: str, cwd: Path | None = None) -> Any:
    return run_cli(*args, env=st.env(), cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA, a batch of 5 closed as finished_with_failures (3 done, 2 failed), a running
    batch, and a signed checkpoint over all of it."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SOFTHSM2_CONF", "/nonexistent")  # the in-process signer sets it: restore
    try:
        st = make_station(tmp_path_factory.mktemp("report") / "station")
        made = cli(st, "ca", "init")
        assert made.returncode == 0, made.stderr
        engine = make_engine(st.settings.db_url)
        create_schema(engine)
        ended = batches.create_batch(
            engine, st.settings, station_id="line1", count=5, actor="operator:alice"
        )
        ids = batches.mark_started(engine, ended, actor="operator:alice")
        ledger = DeviceLedger(engine, "station:line1", "line1", registry=REGISTRY)
        reqs = [_ready_device(ledger, d, 60 + i) for i, d in enumerate(ids[:3])]
        svc = IssuanceService.open(engine, st.settings)
        try:
            certs = [svc.sign(r) for r in reqs]
        finally:
            svc.close()
        for r, c in zip(reqs, certs, strict=True):
            ledger.record_written(r.device_id, c.fingerprint_sha256)
            ledger.queue_upload(
                r.device_id,
                registry=REGISTRY,
                registry_device_id=registry_device_id(r.chip_serial_hex),
                fingerprint=c.fingerprint_sha256,
            )
            ledger.finish_upload(r.device_id, state=UploadState.DONE, num_id="1", error=None)
        for d in ids[3:]:
            ledger.fail(d, FAILURE, PartAction.REJECT)
        batches.close(engine, ended, actor="operator:alice")
        running = batches.create_batch(
            engine, st.settings, station_id="line1", count=2, actor="operator:alice"
        )
        batches.mark_started(engine, running, actor="operator:alice")
        signed = cli(st, "audit", "checkpoint")
        assert signed.returncode == 0, signed.stderr
        return {"st": st, "engine": engine, "ended": ended, "running": running}
    finally:
        mp.undo()


def test_signed_report_of_an_ended_batch(line: dict[str, Any], tmp_path: Path) -> None:
    st, ended = line["st"], line["ended"]
    key = st.settings.ca_dir / "audit-key.pem"
    manifest = tmp_path / "manifest.json"
    built = cli(st, "manifest", "build", "--batch", str(ended), "-o", str(manifest))
    assert built.returncode == 0, built.stderr
    out = tmp_path / "report.html"
    made = cli(st, "report", "batch", str(ended), "-o", str(out), "--manifest", str(manifest))
    assert made.returncode == 0, made.stderr
    data = out.read_bytes()
    html = data.decode()

    checked = cli(st, "report", "verify", str(out), "--key", str(key))
    assert checked.returncode == 0, checked.stderr
    assert f"report of batch {ended} of log {st.settings.audit.origin}" in checked.stdout

    # What it says: the numbers, the escaped failure, the chart, the chain, the manifest,
    # the checkpoint covering the batch and the key that signed it.
    text = re.sub(r"<[^>]+>", "", html)
    assert "Devices in the batch5" in text
    assert "Done (certificate on the chip and in the registry)3" in text
    assert "Failed2" in text
    assert "60.0 % (3 of 5)" in text
    assert "finished_with_failures" in text
    assert "chip did not answer &lt;socket 2&gt; &amp; timed out" in html
    assert "<socket 2>" not in html
    assert re.search(r"<svg[^>]*>.*<rect[^>]*>.*</svg>", html, re.S)
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing external
    for name in ("root.pem", "intermediate.pem"):
        cert = x509.load_pem_x509_certificate((st.settings.ca_dir / name).read_bytes())
        assert fingerprint(cert) in html
        assert cert.public_bytes(serialization.Encoding.PEM).decode() in html
    assert hashlib.sha256(manifest.read_bytes()).hexdigest() in html
    pub = serialization.load_pem_public_key(key.read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert key_fingerprint(pub) in html
    with Session(line["engine"]) as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.event_type == "report.generated")).all()
        checkpoints = {r.size: r for r in s.exec(select(AuditCheckpoint)).all()}
    (event,) = events  # generating the report is audited, once
    assert event.batch_id == ended and event.actor.startswith("admin:")
    payload = json.loads(event.payload)
    assert payload["file_sha256"] == hashlib.sha256(data).hexdigest()
    assert payload["draft"] is False
    cut = data.rfind(b"\n<!-- provisioner-report-signature\n") + 1
    assert payload["html_sha256"] == hashlib.sha256(data[:cut]).hexdigest()
    size = payload["checkpoint_size"]
    assert f"Tree size (events covered){size}" in text
    assert html_escape(checkpoints[size].note) in html  # the signed note, verbatim
    assert f"checkpoint-{size}.txt" in html

    # One changed digit: refused, and said so; exit 1.
    edited = tmp_path / "edited.html"
    edited.write_bytes(data.replace(b"60.0 %", b"80.0 %", 1))
    bad = cli(st, "report", "verify", str(edited), "--key", str(key))
    assert bad.returncode == 1
    assert f"the report of batch {ended} was changed after it was signed" in bad.stderr

    # Another key: the key is blamed, not the report; exit 1.
    other = tmp_path / "other.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = cli(st, "report", "verify", str(out), "--key", str(other))
    assert wrong.returncode == 1 and "not signed by this key" in wrong.stderr

    # A signed checkpoint is no report: wrong input, exit 2, never "changed".
    cp_file = tmp_path / "checkpoint.txt"
    cp_file.write_text(checkpoints[size].note)
    not_report = cli(st, "report", "verify", str(cp_file), "--key", str(key))
    assert not_report.returncode == 2
    assert "is not a signed batch report" in not_report.stderr

    # An existing file is not replaced without --force.
    again = cli(st, "report", "batch", str(ended), "-o", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


def test_running_batch_needs_draft(line: dict[str, Any], tmp_path: Path) -> None:
    st, running = line["st"], line["running"]
    refused = cli(st, "report", "batch", str(running), "-o", str(tmp_path / "r.html"))
    assert refused.returncode == 5
    assert "is running" in refused.stderr and "--draft" in refused.stderr
    assert not (tmp_path / "r.html").exists()
    draft = cli(st, "report", "batch", str(running), "--draft", cwd=tmp_path)
    assert draft.returncode == 0, draft.stderr
    out = tmp_path / f"report-batch-{running}-draft.html"
    html = out.read_text()
    assert "DRAFT — NOT SIGNED" in html and "provisioner-report-signature" not in html
    key = st.settings.ca_dir / "audit-key.pem"
    checked = cli(st, "report", "verify", str(out), "--key", str(key))
    assert checked.returncode == 2 and "never signed" in checked.stderr


def test_throughput_buckets() -> None:
    t0 = datetime(2026, 12, 1, 11, 0, 30, tzinfo=UTC)
    minutes = throughput([t0, t0 + timedelta(seconds=20), t0 + timedelta(minutes=2)])
    assert (minutes.bucket_name, minutes.counts) == ("minute", (2, 0, 1))
    assert minutes.start == datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    hours = throughput([t0, t0 + timedelta(hours=5)])
    assert hours.bucket_name == "15 minutes" and len(hours.counts) == 21 and hours.total == 2
    assert throughput([]).counts == ()


def test_ended_batch_without_a_covering_checkpoint_is_refused(
    line: dict[str, Any], tmp_path: Path
) -> None:
    st, engine = line["st"], line["engine"]
    late = batches.create_batch(engine, st.settings, station_id="line1", count=1, actor="t")
    batches.cancel(engine, late, actor="operator:alice")  # ended, after the last checkpoint
    out = tmp_path / "late.html"
    refused = cli(st, "report", "batch", str(late), "-o", str(out))
    assert refused.returncode == 5
    assert "no signed checkpoint covers" in refused.stderr
    assert "provisioner audit checkpoint" in refused.stderr
    assert not out.exists() and not out.with_name("late.html.part").exists()
