"""One socket's task in-process (provisioner.socket_task): real chips through cryptoauthlib,
a real SoftHSM signer, a real database; only Celery is left out (tests/e2e/test_sockets.py
runs it through real workers).

Covers: an empty socket waits instead of failing; a provisioned chip left in the socket is
asked out; a chip pulled mid-step is waited for; transient chip errors are retried and
persistent ones reject the part; a claimed device is left alone; pause and cancel stop at
step boundaries."""

from __future__ import annotations

import logging
import os
import subprocess
from typing import Any, Literal

import pytest
from sqlalchemy import func, text, update
from sqlmodel import select

from provisioner import batches, socket_state, station
from provisioner.audit.verify import verify_log
from provisioner.chips.emulator.chip import EmulatedChip
from provisioner.chips.emulator.faults import FaultPlan
from provisioner.chips.emulator.tray import provisioned_elsewhere
from provisioner.db.engine import transaction
from provisioner.db.models import AuditEvent, Batch, BatchState, Certificate, PartAction, Step
from provisioner.errors import (
    ChipAbsentError,
    ChipCommandError,
    ConfigError,
    HsmUnavailableError,
    PolicyViolationError,
    WrongChipError,
)
from provisioner.link.records import LocalRecords
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings, StationSettings
from provisioner.socket_task import SocketRun, may_start, part_action

REGISTRY = "projects/p/locations/l/registries/r"
GENKEY, SIGN = 0x40, 0x41


def _settings(
    env: dict[str, Any], feed: Literal["auto", "manual"] = "manual", retries: int = 3
) -> Settings:
    st = StationSettings(sockets=2, feed=feed, chip_retries=retries)
    s: Settings = env["settings"].model_copy(update={"stations": {"line1": st}})
    return s


def _run(env: dict[str, Any], settings: Settings, signer: Any = None, socket: int = 0) -> SocketRun:
    records = LocalRecords(
        env["engine"], "line1", socket, signer or env["signer"], registry=REGISTRY
    )
    return SocketRun(settings, "line1", socket, records, holder=f"line1:{socket}:test")


def _batch(env: dict[str, Any], count: int = 1) -> list[int]:
    bid = batches.create_batch(
        env["engine"], env["settings"], station_id="line1", count=count, actor="t"
    )
    return batches.mark_started(env["engine"], bid, actor="t")


def _set_batch_state(env: dict[str, Any], state: BatchState) -> None:
    with transaction(env["engine"]) as s:
        s.execute(update(Batch).values(state=state))


def _socket(env: dict[str, Any], socket: int = 0) -> Any:
    rows = [r for r in socket_state.read(env["engine"], "line1") if r.socket == socket]
    return rows[0] if rows else None


def _certificates(env: dict[str, Any]) -> int:
    with transaction(env["engine"]) as s:
        assert verify_log(s, None).ok
        return int(s.exec(select(func.count()).select_from(Certificate)).one())


def _events(env: dict[str, Any], kind: str) -> int:
    with transaction(env["engine"]) as s:
        q = select(func.count()).select_from(AuditEvent).where(AuditEvent.event_type == kind)
        return int(s.exec(q).one())


def test_empty_socket_waits_then_the_inserted_chip_is_provisioned(env: dict[str, Any]) -> None:
    settings = _settings(env)
    first, second = _batch(env, count=2)
    run = _run(env, settings)
    out = run.run(first)
    assert (out.kind, out.detail) == ("wait_chip", "insert chip")
    dev = env["ledger"].load(first)
    assert dev.error is None and dev.step == Step.PENDING and dev.claimed_by is None
    row = _socket(env)
    assert (row.state, row.device_id, row.detail) == ("insert_chip", first, "insert chip")

    serial = station.insert_chip(env["engine"], settings, "line1", 0, actor="operator:olga")
    assert run.run(first).kind == "done"
    assert env["ledger"].load(first).step == Step.CERT_VERIFIED
    row = _socket(env)
    assert (row.state, row.chip_serial) == ("idle", serial) and "take the chip out" in row.detail

    # The next device finds the provisioned chip still in the socket: out with it first.
    out = run.run(second)
    assert out.kind == "wait_chip"
    assert out.detail == f"remove chip {serial} (provisioned), then insert chip"
    assert env["ledger"].load(second).error is None
    assert _socket(env).state == "insert_chip"
    station.remove_chip(env["engine"], settings, "line1", 0, actor="operator:olga")
    station.insert_chip(env["engine"], settings, "line1", 0, actor="operator:olga")
    assert run.run(second).kind == "done"
    assert _certificates(env) == 2
    last = station.remove_chip(env["engine"], settings, "line1", 0, actor="operator:olga")
    row = _socket(env)
    assert (row.state, row.detail) == ("empty", f"chip {last} taken out")
    assert _events(env, "station.chip_inserted") == 2 and _events(env, "station.chip_removed") == 2
    assert _events(env, "device.failed") == 0


def test_chip_pulled_mid_step_waits_for_that_chip(env: dict[str, Any]) -> None:
    settings = _settings(env)
    (dev_id,) = _batch(env)
    serial = station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    FaultPlan(remove_during=GENKEY).save(env["jig"].pool_path(serial))
    run = _run(env, settings)
    out = run.run(dev_id)
    assert (out.kind, out.detail) == ("wait_chip", f"insert chip {serial}")
    dev = env["ledger"].load(dev_id)
    assert dev.error is None and dev.step == Step.IDENTIFIED
    # A fresh chip is not this device's: it asks for its own back.
    fresh = station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    out = run.run(dev_id)
    assert out.detail == f"remove chip {fresh} (not this device's), then insert chip {serial}"
    station.remove_chip(env["engine"], settings, "line1", 0, actor="t")
    station.insert_chip(env["engine"], settings, "line1", 0, actor="t", serial=serial)
    assert run.run(dev_id).kind == "done"
    assert _certificates(env) == 1


def test_transient_bus_noise_is_retried_to_success(
    env: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A seeded noisy bus: some responses fail their CRC, the task runs the pipeline again
    (bounded per step) and the device ends with one certificate and no error."""
    settings = _settings(env, retries=5)
    (dev_id,) = _batch(env)
    serial = station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    FaultPlan(seed=11, crc_error_rate=0.02).save(env["jig"].pool_path(serial))
    with caplog.at_level(logging.WARNING, logger="provisioner.station"):
        out = _run(env, settings).run(dev_id)
    assert out.kind == "done", out
    retried = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert retried, "the seeded noise never hit: the test would prove nothing"
    assert all("ATCA_STATUS -27" in r.getMessage() for r in retried)
    assert env["ledger"].load(dev_id).error is None
    assert _certificates(env) == 1


def test_a_persistent_chip_fault_rejects_the_part(env: dict[str, Any]) -> None:
    settings = _settings(env, retries=2)
    (dev_id,) = _batch(env)
    serial = station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    FaultPlan(ecc_fault_on=SIGN).save(env["jig"].pool_path(serial))
    out = _run(env, settings).run(dev_id)
    assert out.kind == "failed"
    dev = env["ledger"].load(dev_id)
    assert dev.action == PartAction.REJECT.value and dev.step == Step.KEY_GENERATED
    assert dev.error is not None and "ECC fault" in dev.error and "after 3 tries" in dev.error
    row = _socket(env)
    assert row.state == "failed" and row.detail.startswith("reject bin: ")
    assert _certificates(env) == 0


def test_a_chip_provisioned_elsewhere_is_rejected_at_once(env: dict[str, Any]) -> None:
    settings = _settings(env)
    (dev_id,) = _batch(env)
    env["jig"].insert_chip(0, provisioned_elsewhere(settings.chip.profile().config_template()))
    out = _run(env, settings).run(dev_id)
    assert out.kind == "failed" and "provisioned elsewhere" in out.detail
    assert env["ledger"].load(dev_id).action == PartAction.REJECT.value


def test_a_claimed_device_is_left_alone(env: dict[str, Any]) -> None:
    settings = _settings(env)
    (dev_id,) = _batch(env)
    live = f"line1:1:{os.getpid()}"  # a holder whose process is alive
    assert env["ledger"].claim(dev_id, live, 60)
    station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    out = _run(env, settings).run(dev_id)
    assert out.kind == "skipped" and "holds it" in out.detail
    dev = env["ledger"].load(dev_id)
    assert dev.step == Step.PENDING and dev.claimed_by == live
    assert _socket(env) is None  # nothing written, not even the socket's row


def test_the_claim_of_a_killed_socket_task_is_taken_over(env: dict[str, Any]) -> None:
    """Celery delivers a killed pool child's message again at once: the device must not
    wait for the dead task's lease to run out."""
    settings = _settings(env)
    (dev_id,) = _batch(env)
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert env["ledger"].claim(dev_id, f"line1:1:{gone.pid}", 600)
    before = env["ledger"].load(dev_id)
    station.insert_chip(env["engine"], settings, "line1", 0, actor="t")
    out = _run(env, settings).run(dev_id)
    assert out.kind == "done", out
    assert before.claimed_by and env["ledger"].load(dev_id).claimed_by is None
    assert _certificates(env) == 1


class PausingSigner:
    """The real signer; the batch is set to ``state`` as it answers (an operator pausing
    or cancelling with the device in flight, during the signing step)."""

    def __init__(self, env: dict[str, Any], state: BatchState, before: bool = False) -> None:
        self.env, self.state, self.before = env, state, before

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        if self.before:
            _set_batch_state(self.env, self.state)
        cert: IssuedCertificate = self.env["signer"].sign(request)
        _set_batch_state(self.env, self.state)
        return cert


def test_pause_mid_flight_stops_at_the_next_step_boundary(env: dict[str, Any]) -> None:
    settings = _settings(env, feed="auto")
    (dev_id,) = _batch(env)
    out = _run(env, settings, PausingSigner(env, BatchState.PAUSED)).run(dev_id)
    assert out.kind == "stopped" and "before CERT_WRITTEN" in out.detail
    dev = env["ledger"].load(dev_id)
    assert dev.step == Step.CERT_ISSUED and dev.error is None and dev.claimed_by is None
    assert _socket(env).state == "idle"
    # While paused a new message does nothing; resumed, the device finishes.
    assert _run(env, settings).run(dev_id).kind == "skipped"
    _set_batch_state(env, BatchState.RUNNING)
    assert _run(env, settings).run(dev_id).kind == "done"
    assert _certificates(env) == 1 and _events(env, "device.cert_issued") == 1


def test_cancel_finishes_a_certified_device(env: dict[str, Any]) -> None:
    settings = _settings(env, feed="auto")
    (dev_id,) = _batch(env)
    out = _run(env, settings, PausingSigner(env, BatchState.CANCELLED)).run(dev_id)
    assert out.kind == "done"
    assert env["ledger"].load(dev_id).step == Step.CERT_VERIFIED


def test_a_cancel_racing_the_signer_stops_the_device(env: dict[str, Any]) -> None:
    """Cancelled after the device passed its last boundary: the signer refuses the batch;
    the device stops (no certificate, no failure, the part is not rejected)."""
    settings = _settings(env, feed="auto")
    (dev_id,) = _batch(env)
    out = _run(env, settings, PausingSigner(env, BatchState.CANCELLED, before=True)).run(dev_id)
    assert out.kind == "stopped" and "cancelled" in out.detail
    dev = env["ledger"].load(dev_id)
    assert dev.error is None and dev.step == Step.POP_VERIFIED
    assert _certificates(env) == 0


class DownSigner:
    def sign(self, request: SigningRequest) -> IssuedCertificate:
        raise HsmUnavailableError("token gone")


def test_cancel_stops_a_device_before_its_certificate(env: dict[str, Any]) -> None:
    settings = _settings(env, feed="auto")
    (dev_id,) = _batch(env)
    out = _run(env, settings, DownSigner()).run(dev_id)
    assert out.kind == "wait_service" and isinstance(out.error, HsmUnavailableError)
    dev = env["ledger"].load(dev_id)
    assert dev.step == Step.POP_VERIFIED and dev.error is None
    assert _socket(env).state == "busy" and "token gone" in _socket(env).detail
    _set_batch_state(env, BatchState.CANCELLED)
    assert _run(env, settings).run(dev_id).kind == "skipped"
    assert env["ledger"].load(dev_id).step == Step.POP_VERIFIED
    assert _certificates(env) == 0


def test_a_paused_batch_starts_no_device(env: dict[str, Any]) -> None:
    settings = _settings(env, feed="auto")
    (dev_id,) = _batch(env)
    _set_batch_state(env, BatchState.PAUSED)
    assert _run(env, settings).run(dev_id).kind == "skipped"
    assert env["jig"].chip_path(0) is None  # the emulated operator did not even feed it
    with transaction(env["engine"]) as s:
        assert s.execute(text("SELECT step, error FROM device")).one() == (0, None)


def test_waits_and_failures_say_what_to_do_with_the_part() -> None:
    assert part_action(ChipAbsentError("x")) is PartAction.REINSERT
    assert part_action(WrongChipError("x")) is PartAction.REINSERT
    assert part_action(ChipCommandError("x", -12)) is PartAction.REJECT
    assert part_action(PolicyViolationError("clone")) is PartAction.REJECT
    assert part_action(HsmUnavailableError("x")) is PartAction.WAIT
    assert part_action(ConfigError("x")) is PartAction.WAIT
    assert may_start(BatchState.RUNNING, False, Step.IDENTIFIED)
    assert not may_start(BatchState.RUNNING, True, Step.IDENTIFIED)
    assert not may_start(BatchState.PAUSED, False, Step.CERT_WRITTEN)
    assert not may_start(BatchState.CANCELLED, False, Step.CERT_ISSUED)
    assert may_start(BatchState.CANCELLED, False, Step.CERT_WRITTEN)
    assert not may_start(BatchState.CREATED, False, Step.IDENTIFIED)


def test_a_fresh_chip_made_by_the_tray_can_be_inserted_by_serial(env: dict[str, Any]) -> None:
    settings = _settings(env)
    chip = EmulatedChip.blank()
    chip.save(env["jig"].pool_path(chip.serial.hex()))
    got = station.insert_chip(
        env["engine"], settings, "line1", 1, actor="t", serial=chip.serial.hex()
    )
    assert got == chip.serial.hex().upper() and env["jig"].serial_in(1) == got
    # One chip is in one socket: putting it in socket 0 takes it out of socket 1.
    env["jig"].insert(0, env["jig"].pool_path(got))
    assert env["jig"].serial_in(1) is None and env["jig"].serial_in(0) == got
