"""Each injected chip fault surfaces as a clear error, leaves the device resumable, and the
resumed device ends with exactly one certificate (issue 3's fault modes, via the real
library and the real signer)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import select

from provisioner import batches, pipeline
from provisioner.audit.verify import verify_log
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.tray import provisioned_elsewhere
from provisioner.chips.library import ZONE_DATA
from provisioner.db.engine import transaction
from provisioner.db.models import Certificate, Step
from provisioner.errors import ChipAbsentError, ChipCommandError, ChipError, ChipStateError

REGISTRY = "projects/p/locations/l/registries/r"
GENKEY, SIGN = 0x40, 0x41


def _one_device(env: dict[str, Any]) -> int:
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=1, actor="t"
    )
    return batches.mark_started(env["engine"], bid, actor="t")[0]


def _run(env: dict[str, Any], dev_id: int, socket: int = 0) -> Any:
    with env["connector"].open(f"emulated:line1/{socket}") as chip:
        return pipeline.provision_device(dev_id, chip, env["signer"], env["ledger"])


def _certificates(env: dict[str, Any]) -> int:
    with transaction(env["engine"]) as s:
        assert verify_log(s, None).ok
        return int(s.exec(select(func.count()).select_from(Certificate)).one())


def test_chip_pulled_during_genkey(env: dict[str, Any]) -> None:
    dev_id = _one_device(env)
    path = env["jig"].insert_blank(0)
    FaultPlan(remove_during=GENKEY).save(path)
    with pytest.raises(ChipAbsentError, match="no chip answers"):
        _run(env, dev_id)
    assert env["ledger"].load(dev_id).step == Step.IDENTIFIED
    assert env["jig"].chip_path(0) is None
    env["jig"].insert(1, path)  # the operator re-seats it, anywhere
    assert _run(env, dev_id, socket=1).step == Step.CERT_VERIFIED
    assert _certificates(env) == 1


def test_ecc_fault_during_sign(env: dict[str, Any]) -> None:
    dev_id = _one_device(env)
    path = env["jig"].insert_blank(0)
    FaultPlan(ecc_fault_on=SIGN).save(path)
    with pytest.raises(ChipCommandError, match="ECC fault"):
        _run(env, dev_id)
    assert env["ledger"].load(dev_id).step == Step.KEY_GENERATED
    assert _certificates(env) == 0
    FaultPlan.clear(path)
    env["jig"].insert(0, path)
    assert _run(env, dev_id).step == Step.CERT_VERIFIED
    assert _certificates(env) == 1


def test_every_response_corrupted_on_the_bus(env: dict[str, Any]) -> None:
    dev_id = _one_device(env)
    path = env["jig"].insert_blank(0)
    FaultPlan(crc_error_rate=1.0).save(path)
    with pytest.raises(ChipCommandError):
        _run(env, dev_id)
    assert env["ledger"].load(dev_id).step == Step.PENDING
    FaultPlan.clear(path)
    env["jig"].insert(0, path)
    assert _run(env, dev_id).step == Step.CERT_VERIFIED


def test_a_noisy_bus_still_ends_with_one_certificate(env: dict[str, Any]) -> None:
    """3 % of responses corrupted (seeded): step-level retries resume until done and
    nothing is issued twice (the library itself does not retry a corrupted response)."""
    dev_id = _one_device(env)
    path = env["jig"].insert_blank(0)
    FaultPlan(seed=7, crc_error_rate=0.03).save(path)
    failures = 0
    for _ in range(40):
        env["jig"].insert(0, path)
        try:
            if _run(env, dev_id).step == Step.CERT_VERIFIED:
                break
        except ChipError:
            failures += 1
    else:
        pytest.fail("never finished on a 3 % noisy bus")
    assert failures > 0, "the seeded noise never hit: the test would prove nothing"
    assert _certificates(env) == 1


def test_chip_provisioned_elsewhere_is_refused(env: dict[str, Any]) -> None:
    """From a foreign tray: locked, keyed, a compressed certificate locked in slot 10."""
    dev_id = _one_device(env)
    config = env["settings"].chip.profile().config_template()
    env["jig"].insert_chip(0, provisioned_elsewhere(config))
    with pytest.raises(ChipStateError, match="provisioned elsewhere"):
        _run(env, dev_id)
    assert env["ledger"].load(dev_id).step == Step.IDENTIFIED
    assert _certificates(env) == 0


def test_chip_with_a_foreign_certificate_left_unlocked_is_refused(env: dict[str, Any]) -> None:
    dev_id = _one_device(env)
    env["jig"].insert_blank(0)
    with env["connector"].open("emulated:line1/0") as chip:  # another line's half-done work
        chip.ensure_configured()
        chip.generate_key()
        chip.lock_data_zone()
        chip.write_zone(ZONE_DATA, 10, 0, bytes(range(64)) + bytes.fromhex("2a0c0e0100800000"))
    with pytest.raises(ChipStateError, match="provisioned elsewhere"):
        _run(env, dev_id)
    assert _certificates(env) == 0


def test_chip_locked_with_another_layout_is_refused(env: dict[str, Any]) -> None:
    dev_id = _one_device(env)
    config = bytearray(env["settings"].chip.profile().config_template())
    config[96:98] = (0x0053).to_bytes(2, "little")  # Trust&GO's slot-0 KeyConfig
    env["jig"].insert_chip(0, provisioned_elsewhere(bytes(config)))
    with pytest.raises(ChipStateError, match="KeyConfig is 0x0053"):
        _run(env, dev_id)
    assert _certificates(env) == 0
