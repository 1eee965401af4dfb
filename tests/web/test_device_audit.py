"""The device and audit pages in a real browser against a real line: a batch provisioned
through the real services, a device found by its chip serial, its proof file downloaded
from its page and checked offline with ``provisioner audit check-proof``, the audit search,
export and verification."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from provisioner.cli.services import wait_for_checkpoint
from provisioner.db.models import AuditEvent, Certificate, Device
from tests.conftest import run_cli
from tests.web.conftest import Line, screenshot, sign_in

N = 4


def operator_env(line: Line, where: Path) -> dict[str, str]:
    """The CLI's environment with the operator's token file."""
    token = where / "operator.token"
    token.write_text(line.tokens["operator"])
    token.chmod(0o600)
    return {**line.station.env(), "PROVISIONER_TOKEN_FILE": str(token)}


@pytest.fixture(scope="module")
def provisioned(line: Line, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished batch of N devices whose end is under a signed checkpoint."""
    env = operator_env(line, tmp_path_factory.mktemp("cli"))
    made = run_cli("batch", "create", "--count", str(N), "--station", "line1", "--json", env=env)
    assert made.returncode == 0, made.stderr
    batch_id = json.loads(made.stdout)["id"]
    started = run_cli("batch", "start", str(batch_id), "--json", "--timeout", "120", env=env)
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["done"] == N
    assert wait_for_checkpoint(line.engine, batch_id, 60) is not None
    with Session(line.engine) as s:
        dev, cert = s.exec(
            select(Device, Certificate)
            .join(Certificate, col(Certificate.device_id) == Device.id)
            .where(Device.batch_id == batch_id)
            .order_by(col(Device.position))
        ).first() or (None, None)
    assert dev is not None and cert is not None
    return {"batch": batch_id, "device": dev, "cert": cert}


def test_device_page_and_its_proof_verify_offline(
    line: Line, browser: Any, provisioned: dict[str, Any], tmp_path: Path
) -> None:
    dev, cert = provisioned["device"], provisioned["cert"]
    page = sign_in(browser, line, "auditor")
    # Found by the serial printed on the part.
    page.goto(f"{line.url}/ui/devices?serial={dev.chip_serial.lower()}")
    page.wait_for_url(f"{line.url}/ui/devices/{dev.id}")
    assert page.text_content("[data-testid=device-serial]").strip().endswith(dev.chip_serial)
    assert page.text_content("[data-testid=device-status]").strip() == "done"
    assert page.text_content("[data-testid=cert-fingerprint]").strip() == cert.fingerprint_sha256
    assert page.text_content("[data-testid=upload-state]").strip() == "done"
    events = page.locator("[data-testid=timeline-event]")
    assert events.count() >= 5
    assert "device.cert_issued" in page.text_content("[data-testid=device-timeline]")
    screenshot(page, "device")

    with page.expect_download() as info:
        page.click("[data-testid=proof-download]")
    proof = tmp_path / "proof.json"
    info.value.save_as(proof)
    doc = json.loads(proof.read_text())
    assert doc["chip_serial"] == dev.chip_serial and doc["events"]

    key = line.station.settings.ca_dir / "audit-key.pem"
    # Offline: no configuration, no database; only the file and the audit public key.
    r = run_cli("audit", "check-proof", str(proof), "--key", str(key), env={"PATH": "/usr/bin"})
    assert r.returncode == 0, r.stderr
    assert "proof verified" in r.stdout and dev.chip_serial in r.stdout

    # A tampered copy does not verify (the check can fail).
    doc["events"][0]["event"]["actor"] = "operator:nobody"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    r = run_cli("audit", "check-proof", str(bad), "--key", str(key), env={"PATH": "/usr/bin"})
    assert r.returncode == 1 and "does NOT verify" in r.stderr

    # The certificate download is the stored certificate.
    pem = page.request.get(f"{line.url}/ui/devices/{dev.id}/certificate.pem")
    assert pem.ok and pem.text().startswith("-----BEGIN CERTIFICATE-----")
    page.context.close()


def test_operator_sees_the_device_without_the_trail(
    line: Line, browser: Any, provisioned: dict[str, Any]
) -> None:
    dev = provisioned["device"]
    page = sign_in(browser, line, "operator")
    page.goto(f"{line.url}/ui/devices/{dev.id}")
    assert page.locator("[data-testid=device-certificate]").count() == 1
    assert page.locator("[data-testid=device-timeline]").count() == 0
    assert page.locator("[data-testid=proof-download]").count() == 0
    page.goto(f"{line.url}/ui/audit")
    assert page.locator("[data-testid=forbidden]").count() == 1
    page.context.close()


def test_audit_search_export_and_verify(
    line: Line, browser: Any, provisioned: dict[str, Any]
) -> None:
    dev = provisioned["device"]
    page = sign_in(browser, line, "auditor")
    page.goto(f"{line.url}/ui/audit")
    page.fill("input[name=serial]", dev.chip_serial)
    page.fill("input[name=type]", "device.*")
    page.click("[data-testid=audit-search] button[type=submit]")
    page.wait_for_selector("[data-testid=audit-event]")
    with Session(line.engine) as s:
        expected = s.exec(
            select(AuditEvent.seq)
            .where(
                AuditEvent.chip_serial == dev.chip_serial,
                col(AuditEvent.event_type).startswith("device."),
            )
            .order_by(col(AuditEvent.seq))
        ).all()
    rows = page.locator("[data-testid=audit-event]")
    assert rows.count() == len(expected) > 0
    shown = [int(rows.nth(i).locator("td").first.text_content()) for i in range(rows.count())]
    assert shown == list(expected)

    # Export the same search as CSV: the same events, with their chain hashes.
    href = page.get_attribute("[data-testid=export-csv]", "href")
    got = page.request.get(f"{line.url}{href}")
    assert got.ok and got.headers["content-type"].startswith("text/csv")
    exported = list(csv.DictReader(io.StringIO(got.text())))
    assert [int(r["seq"]) for r in exported] == list(expected)
    assert all(len(r["hash"]) == 64 for r in exported)

    # A bad time is explained, not a crash.
    page.goto(f"{line.url}/ui/audit?since=yesterday")
    assert "ISO 8601" in page.text_content("[data-testid=audit-error]")

    page.goto(f"{line.url}/ui/audit")
    page.click("[data-testid=audit-verify]")
    page.wait_for_selector("[data-testid=verify-result]")
    assert page.get_attribute("[data-testid=verify-result]", "data-ok") == "true"
    summary = page.text_content("[data-testid=verify-summary]")
    assert "intact" in page.text_content("[data-testid=verify-result]")
    checked = int(summary.split("All ", 1)[1].split(" events", 1)[0].replace(",", ""))
    with Session(line.engine) as s:
        total = len(s.exec(select(AuditEvent.seq)).all())
    assert expected[-1] <= checked <= total
    assert "What was checked" in page.content()
    screenshot(page, "audit")
    page.context.close()
