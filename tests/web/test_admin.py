"""The CA and users pages in a real browser against a real line: an auditor is refused
them; an admin revokes a device certificate (the CRL lists it), rotates the intermediate,
adds a user whose token is shown once and works, changes a role and revokes tokens through
confirmation pages, and sees the last-admin rule's refusal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlmodel import Session, col, select

from provisioner.db.models import Device, Revocation, UserAccount
from tests.conftest import run_cli
from tests.web.conftest import Line, screenshot, sign_in


@pytest.fixture(scope="module")
def device(line: Line, tmp_path_factory: pytest.TempPathFactory) -> Device:
    """A provisioned device (a finished batch of 2)."""
    token = tmp_path_factory.mktemp("cli") / "operator.token"
    token.write_text(line.tokens["operator"])
    token.chmod(0o600)
    env = {**line.station.env(), "PROVISIONER_TOKEN_FILE": str(token)}
    made = run_cli("batch", "create", "--count", "2", "--station", "line1", "--json", env=env)
    assert made.returncode == 0, made.stderr
    batch_id = json.loads(made.stdout)["id"]
    started = run_cli("batch", "start", str(batch_id), "--json", "--timeout", "120", env=env)
    assert started.returncode == 0, started.stderr
    with Session(line.engine) as s:
        dev = s.exec(
            select(Device).where(Device.batch_id == batch_id).order_by(col(Device.position))
        ).first()
    assert dev is not None and dev.chip_serial
    return dev


def flash(page: Any) -> str:
    return str(page.text_content("[data-testid=flash]")).strip()


def test_auditor_is_refused_the_admin_pages(line: Line, browser: Any) -> None:
    page = sign_in(browser, line, "auditor")
    for path in ("/ui/ca", "/ui/users", "/ui/ca/rotate"):
        resp = page.goto(f"{line.url}{path}")
        assert resp.status == 403, path
        assert "may not" in page.text_content("[data-testid=forbidden]")
    assert page.locator("header nav a[href='/ui/ca']").count() == 0
    page.context.close()


def test_revoke_and_rotate(line: Line, browser: Any, device: Device) -> None:
    page = sign_in(browser, line, "admin")
    page.goto(f"{line.url}/ui/ca")
    before = page.text_content("[data-testid=ca-current-name]").strip()
    assert page.text_content("[data-testid=ca-key-uri]").startswith("pkcs11:")

    # Revoke: the GET page only shows what will happen.
    page.fill("[data-testid=ca-revoke] input[name=target]", device.chip_serial)
    page.select_option("[data-testid=ca-revoke] select[name=reason]", "key_compromise")
    page.click("[data-testid=ca-revoke] button[type=submit]")
    assert page.text_content("[data-testid=revoke-chip]").strip() == device.chip_serial
    with Session(line.engine) as s:
        assert s.exec(select(Revocation)).first() is None
    page.click("[data-testid=confirm-button]")
    page.wait_for_url(f"{line.url}/ui/ca")
    assert "revoked: key_compromise" in flash(page)
    with Session(line.engine) as s:
        rev = s.exec(select(Revocation)).one()
    assert rev.reason == "key_compromise" and rev.actor == "admin:alice"
    crl_file = line.station.settings.ca_dir / "crl" / f"{before}.crl"
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(int(rev.serial_number, 16)) is not None
    assert page.text_content("[data-testid=crl-entries]").strip() == "1"

    # An unknown target is explained on the CA page, nothing revoked.
    page.goto(f"{line.url}/ui/ca/revoke?target=999999&reason=unspecified")
    assert "no certificate" in flash(page)

    # Rotate, through its confirmation page.
    page.goto(f"{line.url}/ui/ca")
    page.click("[data-testid=ca-rotate] a")
    page.wait_for_url(f"{line.url}/ui/ca/rotate")
    page.click("[data-testid=confirm-button]")
    page.wait_for_url(f"{line.url}/ui/ca")
    assert "is current" in flash(page), flash(page)
    after = page.text_content("[data-testid=ca-current-name]").strip()
    assert after != before
    assert before in page.text_content("[data-testid=ca-previous]")
    screenshot(page, "ca")

    page.goto(f"{line.url}/ui/devices/{device.id}")
    assert page.text_content("[data-testid=device-status]").strip() == "revoked"
    page.context.close()


def test_users_add_role_revoke_and_last_admin(line: Line, browser: Any, tmp_path: Path) -> None:
    admin = sign_in(browser, line, "admin")
    admin.goto(f"{line.url}/ui/users")
    admin.fill("[data-testid=add-user] input[name=name]", "olga")
    admin.select_option("[data-testid=add-user] select[name=role]", "operator")
    admin.click("[data-testid=add-user] button[type=submit]")
    token = admin.input_value("[data-testid=new-token]")
    assert token.startswith("prv_")
    assert token not in admin.url

    # The token works, once shown: olga signs in with it.
    olga_ctx = browser.new_context()
    olga = olga_ctx.new_page()
    olga.goto(f"{line.url}/ui/signin")
    olga.fill("input[name=token]", token)
    olga.click("button[type=submit]")
    olga.wait_for_url(f"{line.url}/ui/**")
    assert "olga" in olga.text_content("[data-testid=who]")

    # Change olga's role, confirmed on its own page.
    admin.goto(f"{line.url}/ui/users")
    row = admin.locator("[data-testid=user-row][data-user=olga]")
    assert token not in admin.content()
    row.locator("select[name=role]").select_option("auditor")
    row.locator("button[type=submit]").click()
    admin.click("[data-testid=confirm-button]")
    assert "olga is now auditor (was operator)" in flash(admin)
    with Session(line.engine) as s:
        olga_row = s.get(UserAccount, "olga")
        assert olga_row is not None and olga_row.role == "auditor"

    # The last admin may not be demoted: the refusal is shown, nothing changes.
    admin.goto(f"{line.url}/ui/users/alice/role?role=operator")
    admin.click("[data-testid=confirm-button]")
    assert "alice is the last admin" in flash(admin)
    with Session(line.engine) as s:
        alice = s.get(UserAccount, "alice")
        assert alice is not None and alice.role == "admin"

    # Revoke olga's tokens: her open session ends at once.
    admin.locator("[data-testid=user-row][data-user=olga] [data-testid=revoke-link]").click()
    admin.click("[data-testid=confirm-button]")
    assert "token(s) of olga revoked" in flash(admin)
    status = admin.text_content("[data-testid=user-row][data-user=olga] [data-testid=user-status]")
    assert status.strip() == "revoked"
    olga.goto(f"{line.url}/ui/audit")
    assert "/ui/signin" in olga.url
    olga_ctx.close()
    screenshot(admin, "users")
    admin.context.close()
