"""Enrollment tokens: used up, expired, regenerated and unknown tokens are refused with one
message and audited with the reason and a hash prefix (never the token); regenerating kills
the old token at once and the new one enrolls."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from provisioner.db.models import FieldEnrollmentToken, utcnow
from provisioner.errors import ConflictError
from provisioner.fleet import tokens
from tests.cloud.inprocess import REGISTRY_NAME
from tests.fleet.conftest import MakeFleet
from tests.fleet.test_flow import events


def test_used_expired_unknown_tokens_refused_and_audited(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    device = fleet.device()
    once = fleet.token(max_uses=1)
    assert device.enroll(once).status_code == 200
    used = device.enroll(once)
    assert used.status_code == 401
    assert used.json()["error"]["message"] == tokens.REFUSED_MESSAGE

    expiring = fleet.token(max_uses=5)
    with Session(fleet.engine) as s:
        s.exec(
            update(FieldEnrollmentToken)
            .where(col(FieldEnrollmentToken.token_hash) == tokens.token_hash(expiring))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
    expired = device.enroll(expiring)
    assert expired.status_code == 401
    assert device.enroll("fet_never-made").status_code == 401
    assert device.enroll("").status_code == 401  # counted with the unknown ones

    refused = events(fleet.engine, "fleet.enroll_refused")
    assert [e["reason"] for e in refused] == ["used", "expired", "unknown"]
    assert [e["token_hash"] for e in refused] == [
        tokens.token_hash(t)[:8] for t in (once, expiring, "fet_never-made")
    ]
    dump = str(refused)
    assert once not in dump and expiring not in dump
    # one device from the one-use token, none from the others
    assert len(events(fleet.engine, "fleet.enrolled")) == 1


def test_regeneration_kills_the_old_token_at_once(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    device = fleet.device()
    old = tokens.create(
        fleet.engine, REGISTRY_NAME, "admin:ada", ttl=timedelta(days=1), max_uses=10, label="line A"
    )
    assert device.enroll(old.token).status_code == 200
    new = tokens.regenerate(fleet.engine, old.info.id, "admin:ada", ttl=timedelta(days=2))
    assert (new.info.registry, new.info.label, new.info.max_uses) == (REGISTRY_NAME, "line A", 10)

    r = device.enroll(old.token)
    assert r.status_code == 401, r.text
    (refusal,) = events(fleet.engine, "fleet.enroll_refused")
    assert refusal["reason"] == "regenerated"
    assert refusal["enrollment_id"] == old.info.id
    assert device.enroll(new.token).status_code == 200

    (regen,) = events(fleet.engine, "fleet.token_regenerated")
    assert regen["replaces"] == old.info.id and regen["enrollment_id"] == new.info.id
    states = {t.id: t.state for t in tokens.list_tokens(fleet.engine)}
    assert states == {old.info.id: "regenerated", new.info.id: "live"}
    # the dead one cannot be regenerated again (one leak, one live successor)
    with pytest.raises(ConflictError):
        tokens.regenerate(fleet.engine, old.info.id, "admin:ada", ttl=timedelta(days=1))


def test_the_last_use_goes_to_one_device(make_fleet: MakeFleet) -> None:
    fleet = make_fleet()
    token = fleet.token(max_uses=2)
    codes = sorted(fleet.device().enroll(token).status_code for _ in range(3))
    assert codes == [200, 200, 401]
    (row,) = tokens.list_tokens(fleet.engine)
    assert (row.uses, row.state) == (2, "used")
