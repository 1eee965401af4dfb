"""The pipeline in-process (real chips via cryptoauthlib, real SoftHSM signer, real DB):
a chip pulled mid-step leaves the device resumable; a re-fed chip is refused as a clone."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import select

from provisioner import batches, pipeline
from provisioner.audit.verify import verify_log
from provisioner.chips.emulator.jig import StationJig
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent, Certificate, Step
from provisioner.errors import ChipAbsentError, PolicyViolationError

REGISTRY = "projects/p/locations/l/registries/r"


class PulledAfter:
    """The real chip, pulled out of its socket right after one command returns (a fault,
    not a fake: every call still goes to the chip through the library)."""

    def __init__(self, chip: Any, jig: StationJig, socket: int, after: str) -> None:
        self._chip, self._jig, self._socket, self._after = chip, jig, socket, after
        self.locator = chip.locator

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._chip, name)
        if name != self._after:
            return attr

        def pull(*args: Any) -> Any:
            out = attr(*args)
            self._jig.remove(self._socket)
            return out

        return pull


def test_pulled_chip_resumes_with_same_key_and_one_certificate(env: dict[str, Any]) -> None:
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=1, actor="t"
    )
    dev_id = batches.mark_started(env["engine"], bid, actor="t")[0]
    path = env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip, pytest.raises(ChipAbsentError):
        pipeline.provision_device(
            dev_id,
            PulledAfter(chip, env["jig"], 0, "lock_data_zone"),
            env["signer"],
            env["ledger"],
        )
    dev = env["ledger"].load(dev_id)
    assert dev.step == Step.KEY_GENERATED and dev.public_key
    env["jig"].insert(1, path)  # the operator puts the same chip back, in another socket
    with env["connector"].open("emulated:line1/1") as chip:
        done = pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])
        assert done.step == Step.CERT_VERIFIED
        assert done.public_key == (b"\x04" + chip.public_key()).hex()
        # Running it again changes nothing and issues nothing.
        pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])
    with transaction(env["engine"]) as s:
        assert s.exec(select(func.count()).select_from(Certificate)).one() == 1
        assert verify_log(s, None).ok


def test_crash_after_the_data_lock_adopts_the_key_generated(env: dict[str, Any]) -> None:
    """GenKey and the data lock happened, the step was never recorded: the resumed device
    takes the chip's (only possible) key instead of failing on a locked chip."""
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=1, actor="t"
    )
    dev_id = batches.mark_started(env["engine"], bid, actor="t")[0]
    path = env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip:
        chip.ensure_configured()
        key = chip.generate_key()
        chip.lock_data_zone()
        env["ledger"].identify(dev_id, chip.identity().serial_hex, "00006002", chip.locator)
    assert env["ledger"].load(dev_id).step == Step.IDENTIFIED
    env["jig"].insert(0, path)
    with env["connector"].open("emulated:line1/0") as chip:
        done = pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])
    assert done.step == Step.CERT_VERIFIED and done.public_key == (b"\x04" + key).hex()


def test_chip_fed_twice_is_refused_as_a_clone(env: dict[str, Any]) -> None:
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=2, actor="t"
    )
    first, second = batches.mark_started(env["engine"], bid, actor="t")
    path = env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip:
        pipeline.provision_device(first, chip, env["signer"], env["ledger"])
    env["jig"].insert(0, path)
    with (
        env["connector"].open("emulated:line1/0") as chip,
        pytest.raises(PolicyViolationError, match="already belongs to device"),
    ):
        pipeline.provision_device(second, chip, env["signer"], env["ledger"])
    assert env["ledger"].load(second).step == Step.PENDING
    with transaction(env["engine"]) as s:
        incidents = s.exec(
            select(AuditEvent).where(AuditEvent.event_type == "incident.duplicate_serial")
        ).all()
        assert len(incidents) == 1 and incidents[0].device_id == second
        assert s.exec(select(func.count()).select_from(Certificate)).one() == 1
