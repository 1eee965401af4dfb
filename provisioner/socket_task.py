"""One device on one socket of a station: what a station worker's task does, minus Celery.

The pipeline (:mod:`provisioner.pipeline`) knows the steps; this module knows the socket
around them:

- the device is claimed first (a lease on its row), so two messages for the same device
  never work on it at once; the claim is released whatever happens;
- its batch says whether it may start (running), stops at the next step boundary (paused;
  cancelled before its certificate is issued) or finishes (cancelled after that);
- a socket without the right chip waits for one (``insert_chip``) instead of failing the
  device; on an auto-fed emulated station the emulator's operator puts it in;
- a chip error that can pass (no answer, CRC noise on the bus, an ECC fault) is retried up to
  ``chip_retries`` times per step by running the pipeline again (it resumes idempotently);
- a failure says what the operator does with the part (:class:`PartAction`);
- every certificate is checked against the CA chain the station pins before it is written
  (:mod:`provisioner.ca.pinned`); a forged one is refused, nothing written, the device
  failed with the part left in its socket and ``incident.forged_certificate`` recorded;
- the socket's ``socket_state`` row says what it is doing, on every change.

The Celery task (``workers/tasks.py``) turns the :class:`Outcome` into a retry, an upload
or nothing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from cryptoauthlib.status import Status

from provisioner import pipeline, socket_state
from provisioner.ca.chain import chip_chain, local_material
from provisioner.ca.manufacturer_chain import ManufacturerChainError
from provisioner.ca.pinned import PinnedChain
from provisioner.chips.certdef import ChipCertChain
from provisioner.chips.connector import Connector
from provisioner.chips.device import CryptoAuthChip
from provisioner.db.models import BatchMode, Device, PartAction, Step
from provisioner.errors import (
    BatchNotRunningError,
    ChipAbsentError,
    ChipCommandError,
    ChipError,
    ChipStateError,
    ConfigError,
    DeviceStopped,
    ForgedCertificateError,
    PolicyViolationError,
    ProvisionerError,
    QuotaExhaustedError,
    ServiceUnavailableError,
    WrongChipError,
)
from provisioner.link.records import StationRecords, may_start
from provisioner.logs import bind, log_context
from provisioner.ports import IssuedCertificate, SecureElement
from provisioner.settings import Settings
from provisioner.station import auto_fed, feed_auto, locator

log = logging.getLogger("provisioner.station")

# Chip errors that can pass when the command is sent again: noise or a bad contact on the
# bus (cryptoauthlib's host-side codes), and the status bytes the datasheet says to retry
# on (bus CRC error 0xFF, ECC fault 0x05). Anything else the chip answers is its verdict.
TRANSIENT_STATUSES = frozenset(
    int(s)
    for s in (
        Status.ATCA_STATUS_CRC,
        Status.ATCA_STATUS_ECC,
        Status.ATCA_BAD_CRC,
        Status.ATCA_RX_FAIL,
        Status.ATCA_RX_NO_RESPONSE,
        Status.ATCA_RESYNC_WITH_WAKEUP,
        Status.ATCA_PARITY_ERROR,
        Status.ATCA_TX_TIMEOUT,
        Status.ATCA_RX_TIMEOUT,
        Status.ATCA_COMM_FAIL,
        Status.ATCA_TIMEOUT,
        Status.ATCA_TX_FAIL,
        Status.ATCA_HEALTH_TEST_ERROR,
    )
)

_PART = {
    PartAction.REJECT: "reject bin",
    PartAction.REINSERT: "take the part out and insert it again, then `batch retry`",
    PartAction.WAIT: "leave the part in the socket",
}


def next_step(step: Step) -> Step:
    """The step a device at ``step`` works towards next."""
    return min((s for s in Step if s > step), default=Step.DONE)


def transient(exc: ChipError) -> bool:
    """Whether a chip error can pass when the step is tried again."""
    return isinstance(exc, ChipAbsentError) or (
        isinstance(exc, ChipCommandError) and exc.status in TRANSIENT_STATUSES
    )


def part_action(exc: ProvisionerError) -> PartAction:
    """What the operator does with the part of a device that failed with ``exc``: a chip
    that does not answer or is not the device's goes back in; a chip the line refuses (bad
    state, provisioned elsewhere, clone, reused key, read-back mismatch, errors that
    persisted) goes to the reject bin; anything else (a service, the setup) is not the
    part's fault: it waits in its socket."""
    if isinstance(exc, ChipAbsentError | WrongChipError):
        return PartAction.REINSERT
    if isinstance(exc, QuotaExhaustedError | BatchNotRunningError):
        return PartAction.WAIT  # the order, not the part: an admin raises the quota
    if isinstance(exc, ChipError | PolicyViolationError):
        return PartAction.REJECT
    return PartAction.WAIT


Kind = Literal["done", "skipped", "stopped", "wait_chip", "wait_service", "failed"]


@dataclass(frozen=True)
class Outcome:
    """How one run of a device's socket task ended.

    done: verified on its chip (queue the upload); skipped: nothing touched (already done,
    held by another task, or its batch not running); stopped: at a step boundary (batch
    paused or cancelled); wait_chip: the socket needs a chip (try again soon); wait_service:
    the signer or the broker did not answer (``error``; try again with backoff); failed:
    recorded on the device with the part's action."""

    kind: Kind
    device_id: int
    detail: str = ""
    error: ServiceUnavailableError | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "ok": self.kind == "done",
            "outcome": self.kind,
            "detail": self.detail,
        }


class SocketRun:
    """Runs devices on one socket of a station (one per worker child). ``records`` are the
    line's (:mod:`provisioner.link`): the database on the line server, the gateway through
    the broker on a station PC."""

    def __init__(
        self,
        settings: Settings,
        station_id: str,
        socket: int,
        records: StationRecords,
        *,
        holder: str,
    ) -> None:
        self.settings = settings
        self.station_id = station_id
        self.socket = socket
        self.holder = holder
        self.ledger = records
        self.lease_s = settings.celery.sign_timeout_s + 120
        self.release_patience_s = settings.celery.link_timeout_s
        self.chip_retries = settings.station(station_id).chip_retries
        self.auto = auto_fed(settings, station_id)
        self.locator = locator(settings, station_id, socket)
        self.connector = Connector(settings, chain_source=self._chain)

    # --- the task --------------------------------------------------------------------

    def run(self, device_id: int) -> Outcome:
        """Claim the device, run it as far as its batch allows, release it. Every line
        logged meanwhile carries the device, its batch, its chip and this socket."""
        with log_context(station=self.station_id, socket=self.socket, device=device_id):
            out = self._run(device_id)
            log.info(
                "device %s: %s%s",
                device_id,
                out.kind,
                f" ({out.detail})" if out.detail else "",
                extra={"fields": {"outcome": out.kind}},
            )
            return out

    def _run(self, device_id: int) -> Outcome:
        dev = self.ledger.load(device_id)
        bind(batch=dev.batch_id, chip_serial=dev.chip_serial)
        if dev.step >= Step.CERT_VERIFIED:  # (by another socket, while this one waited)
            self._quietly(self.ledger.let_go, device_id)
            return Outcome("skipped", device_id, "already verified on its chip")
        if dev.error is not None:  # a stray message: a failed device waits for `batch retry`
            return Outcome("skipped", device_id, "failed: waits for `batch retry`")
        if not self._claim(device_id):
            return Outcome("skipped", device_id, "another socket's task holds it")
        try:
            if not self.ledger.gate(device_id, next_step(dev.step), announce=False):
                self.ledger.let_go(device_id)
                return Outcome("skipped", device_id, "its batch is not running")
            return self._attempts(device_id, dev.step)
        finally:
            self._release(device_id)

    def _release(self, device_id: int) -> None:
        """Give the device back. A broker lost mid-device usually returns within seconds
        (the supervisor restarts Redis), so the release is tried again for up to the link
        timeout before it is left to the lease (minutes): the supervisor's second re-dispatch
        after the restart then finds the device free."""
        deadline = time.monotonic() + self.release_patience_s
        while True:
            try:
                self.ledger.release(device_id, self.holder)
                return
            except ServiceUnavailableError as exc:
                if time.monotonic() >= deadline:  # its lease runs out by itself
                    log.warning("device %s not released (%s)", device_id, exc)
                    return
            time.sleep(1.0)

    def _claim(self, device_id: int) -> bool:
        """Claim the device; a claim left by a task of this station whose process is gone
        (a pool child killed mid-device, whose message Celery delivers again) is taken
        over at once rather than after its lease."""
        if self.ledger.claim(device_id, self.holder, self.lease_s):
            return True
        holder = self.ledger.load(device_id).claimed_by
        return (
            holder is not None
            and _dead_local_holder(holder, self.station_id)
            and self.ledger.take_over(device_id, holder, self.holder, self.lease_s)
        )

    def fail_waiting(self, device_id: int, reason: str) -> Outcome:
        """The service the device waited for stayed away: fail it; the part stays put."""
        return self._fail(device_id, reason, PartAction.WAIT)

    # --- attempts --------------------------------------------------------------------

    def _attempts(self, device_id: int, step: Step) -> Outcome:
        """Run the pipeline until it ends one way or another; chip errors that can pass
        are tried again, ``chip_retries`` times per step (``step``: where the device was
        when the task loaded it, the start of the count)."""
        failures, feed, renew = 0, self.auto, False
        while True:
            try:
                return self._attempt(device_id, feed, renew=renew)
            except DeviceStopped as exc:
                self._socket("idle", device_id, f"{exc}: batch paused or cancelled")
                return Outcome("stopped", device_id, str(exc))
            except ServiceUnavailableError as exc:
                self._socket("busy", device_id, f"waiting: {exc}")
                return Outcome("wait_service", device_id, str(exc), error=exc)
            except ManufacturerChainError as exc:
                # A part whose certificates do not chain to the trusted manufacturer root:
                # refused, recorded as an incident, nothing uploaded.
                return self._fail(device_id, str(exc), PartAction.REJECT, incident="untrusted_part")
            except ChipAbsentError as exc:
                if not self.auto:  # a person feeds this socket: wait for the chip
                    return self._wait_chip(device_id, self._wanted(self.ledger.load(device_id)))
                error: ChipError = exc
            except ChipError as exc:
                if not transient(exc):
                    return self._fail(device_id, str(exc), part_action(exc))
                error = exc
            except ForgedCertificateError as exc:
                # Nothing was written: the chip is fine and keeps its key (its record stands);
                # the part stays in its socket so that `batch retry`, once the incident is
                # understood, writes the certificate the CA really issued for that key.
                return self._fail(
                    device_id, str(exc), PartAction.WAIT, incident="forged_certificate"
                )
            except PolicyViolationError as exc:
                # The signer refuses a batch cancelled since the last step boundary: that is
                # the batch stopping, not the part's fault.
                now = self.ledger.load(device_id).step
                if not self.ledger.gate(device_id, next_step(now), announce=False):
                    self._socket("idle", device_id, f"stopped: {exc}")
                    return Outcome("stopped", device_id, str(exc))
                return self._fail(device_id, str(exc), part_action(exc))
            except ProvisionerError as exc:
                return self._fail(device_id, str(exc), part_action(exc))
            now = self.ledger.load(device_id).step
            failures, step = (1, now) if now > step else (failures + 1, step)
            if failures > self.chip_retries:
                return self._fail(
                    device_id,
                    f"{error} (still failing after {failures} tries)",
                    part_action(error),
                )
            log.warning("device %s: %s; trying again (%s)", device_id, error, failures)
            feed, renew = self.auto and isinstance(error, ChipAbsentError), True

    def _attempt(self, device_id: int, feed: bool, *, renew: bool) -> Outcome:
        """One run of the pipeline. ``renew``: the lease is renewed first (a retry; the
        first attempt follows the claim itself). The device's batch mode comes with the
        device (a station PC's ``load`` answer carries it), not in a round trip of its own."""
        if renew and not self.ledger.claim(device_id, self.holder, self.lease_s):
            return Outcome("skipped", device_id, "its lease ran out and another task holds it")
        dev = self.ledger.load(device_id)
        mode, part = self.ledger.batch_mode(device_id)
        if mode is BatchMode.PREPROVISIONED:
            return self._attempt_part(device_id, dev, part, feed)
        if feed:
            feed_auto(self.settings, self.station_id, self.socket, dev)
        with self.connector.open(self.locator) as chip:
            misplaced = self._misplaced(chip, dev)
            if misplaced is not None:
                return self._wait_chip(device_id, misplaced)
            done = pipeline.provision_device(
                device_id,
                chip,
                self.ledger,
                self.ledger,
                proceed=partial(self.ledger.gate, device_id, announce=True),
                check=self._check_certificate,
            )
        self._socket(
            "idle", device_id, "provisioned" if self.auto else "provisioned: take the chip out"
        )
        return Outcome("done", done.id or device_id)

    def _attempt_part(self, device_id: int, dev: Device, part: str | None, feed: bool) -> Outcome:
        """A device of a preprovisioned batch: the part is addressed where its kind answers
        (Trust&GO 0x6A, TrustFLEX 0x6C) and its own certificate is taken, verified, as it is
        (:func:`pipeline.provision_preprovisioned`)."""
        from provisioner.chips.tng import PART_ADDRESSES

        if part not in PART_ADDRESSES:
            raise ConfigError(f"device {device_id}: its batch names no known part ({part!r})")
        if feed:  # the emulated operator: a new part of the batch's kind, or the device's own
            feed_auto(self.settings, self.station_id, self.socket, dev, part=part)
        address = PART_ADDRESSES[part]
        with self._open_part(address) as chip:
            try:
                chip.identity()
            except ChipAbsentError:
                self._refuse_other_address(part, address)
                if dev.chip_serial is None:  # nothing in the socket yet: someone inserts
                    return self._wait_chip(device_id, f"insert a {part} part")
                raise
            misplaced = self._misplaced(chip, dev)
            if misplaced is not None:
                return self._wait_chip(device_id, misplaced)
            done = pipeline.provision_preprovisioned(
                device_id,
                chip,
                self.ledger,
                part=part,
                proceed=partial(self.ledger.gate, device_id, announce=True),
            )
        self._socket(
            "idle", device_id, "provisioned" if self.auto else "provisioned: take the chip out"
        )
        return Outcome("done", done.id or device_id)

    def _open_part(self, address: int | None) -> CryptoAuthChip:
        """The chip in this socket at ``address`` (None: where the station's locator says);
        an I2C locator names its address, so it is rewritten for the part's."""
        if self.locator.startswith("i2c:") and address is not None:
            bus = self.locator.rsplit("@", 1)[0]
            return self.connector.open(f"{bus}@0x{address:02X}")
        return self.connector.open(self.locator, address=address)

    def _refuse_other_address(self, part: str, address: int) -> None:
        """Nothing answers at the part's address: a chip answering at the station's own
        address (a blank chip, 0xC0) is not this batch's kind of part, refused clearly."""
        try:
            with self._open_part(None) as other:
                serial = other.identity().serial_hex
        except ChipError:
            return  # the socket is empty: wait for the part as usual
        raise ChipStateError(
            f"chip {serial} in {self.locator} does not answer at 0x{address:02X}: not a "
            f"{part} part (a blank chip?); this batch is in mode `preprovisioned`, blank "
            "chips go in an `issue` batch"
        )

    # --- the chip in the socket ------------------------------------------------------

    def _chain(self) -> ChipCertChain:
        """The compressed-certificate definitions: from the line's material on a station
        PC, from this PC's CA files on the line server."""
        return chip_chain(self.settings, self.ledger.chip_chain())

    def _check_certificate(self, cert: IssuedCertificate, point: bytes, serial: str) -> None:
        """Refuse (ForgedCertificateError) a certificate the pinned CA chain does not vouch
        for, with the chain material the chip is about to store."""
        material = self.ledger.chip_chain() or local_material(self.settings)
        PinnedChain.of(self.settings).check(
            cert.der, public_point=point, serial_hex=serial, material=material
        )

    def _misplaced(self, chip: SecureElement, dev: Device) -> str | None:
        """What to do first when the socket holds a chip that is not this device's to use
        (None: go): a chip already provisioned, or another device's, comes out; a resumed
        device needs its own chip back."""
        serial = chip.identity().serial_hex
        if serial == dev.chip_serial:
            return None
        owner = self.ledger.chip_owner(serial)
        if owner is None and dev.chip_serial is None:
            bind(chip_serial=serial)  # the logs of this device's run name its chip from now
            return None  # a new chip for a new device (the pipeline judges the chip itself)
        if owner is None:
            why = "not this device's"
        elif owner.step >= Step.CERT_VERIFIED:
            why = "provisioned"
        else:
            why = f"device {owner.device_id}'s"
        return f"remove chip {serial} ({why}), then {self._wanted(dev)}"

    @staticmethod
    def _wanted(dev: Device) -> str:
        return f"insert chip {dev.chip_serial}" if dev.chip_serial else "insert chip"

    def _wait_chip(self, device_id: int, detail: str) -> Outcome:
        self._socket("insert_chip", device_id, detail)
        return Outcome("wait_chip", device_id, detail)

    # --- failures, the socket's row ----------------------------------------------------

    def _fail(
        self, device_id: int, reason: str, action: PartAction, incident: str | None = None
    ) -> Outcome:
        log.warning("device %s failed (%s): %s", device_id, action.value, reason)
        self.ledger.fail(device_id, reason, action, incident=incident)
        self._socket("failed", device_id, f"{_PART[action]}: {reason}")
        return Outcome("failed", device_id, reason)

    def _socket(self, state: socket_state.State, device_id: int, detail: str) -> None:
        self._quietly(self.ledger.show, state, device_id, detail)

    @staticmethod
    def _quietly(call: Callable[..., None], *args: Any) -> None:
        """The socket's live row is a view, not a record: a line server that cannot be
        reached for it must not turn a wait into a lost task."""
        try:
            call(*args)
        except ServiceUnavailableError as exc:
            log.warning("socket state not updated: %s", exc)


def _dead_local_holder(holder: str, station_id: str) -> bool:
    """Whether ``holder`` (``station:socket:pid``) is a task of this station's worker
    whose process no longer exists (the station's children share one host)."""
    parts = holder.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != station_id or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


__all__ = ["Outcome", "SocketRun", "may_start", "part_action", "transient"]
