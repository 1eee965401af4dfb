"""What a station's socket task needs from the line's records, and the line server's own
implementation of it (the database).

:class:`StationRecords` is the seam: on the line server :class:`LocalRecords` reads and
writes the database (the gateway uses it after checking a station's request); on a station
PC :class:`~provisioner.link.remote.RemoteRecords` sends each call to that gateway. One
instance serves one socket of one station.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives import serialization
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection, Engine

from provisioner import socket_state
from provisioner.ca.chain import ChainMaterial
from provisioner.db.models import (
    Batch,
    BatchMode,
    BatchState,
    Device,
    PartAction,
    SocketState,
    Step,
    utcnow,
)
from provisioner.errors import ConfigError, NotFoundError
from provisioner.ledger import DeviceLedger, ManufacturerRoot
from provisioner.pipeline import FactoryLedger, StationLedger
from provisioner.ports import CertificateSigner, IssuedCertificate, SigningRequest


def may_start(state: BatchState, device_cancelled: bool, step: Step) -> bool:
    """Whether a device of a batch in ``state`` may start working towards ``step``.

    Paused: no step starts (the one in progress has finished when this is asked). Cancelled:
    a device whose certificate is issued finishes (the certificate exists; the chip should
    carry it), any other stops before the signer is asked."""
    if device_cancelled:
        return False
    if state is BatchState.RUNNING:
        return True
    if state is BatchState.CANCELLED:
        return step > Step.CERT_ISSUED
    return False


# A socket row that says the socket is working on (or waiting for) a device; "failed" and
# "idle" rows say what happened and stay until the socket does something else.
_WORKING = frozenset({"busy", "insert_chip"})

# The gateway's most frequent records (gate, show, chip_owner: a third of a device's
# requests) as Core statements built once: a few columns, no ORM objects to load or flush.
_DEVICE = Device.__table__  # type: ignore[attr-defined]
_BATCH = Batch.__table__  # type: ignore[attr-defined]
_SOCKET = SocketState.__table__  # type: ignore[attr-defined]
_GATE = (
    select(_DEVICE.c.cancelled_at, _DEVICE.c.chip_serial, _BATCH.c.state)
    .select_from(_DEVICE.outerjoin(_BATCH, _BATCH.c.id == _DEVICE.c.batch_id))
    .where(_DEVICE.c.id == bindparam("device_id"))
)
_SERIAL_OF = select(_DEVICE.c.chip_serial).where(_DEVICE.c.id == bindparam("device_id"))
_OWNER = select(_DEVICE.c.id, _DEVICE.c.step).where(_DEVICE.c.chip_serial == bindparam("serial"))


def _put_socket(conn: Connection, station_id: str, socket: int, **values: Any) -> None:
    """:func:`provisioner.socket_state.put` in Core, in ``conn``'s transaction: the row
    updated, or made if the socket has none yet (the same row, the same columns)."""
    values["updated_at"] = utcnow()
    where = (_SOCKET.c.station_id == station_id) & (_SOCKET.c.socket == socket)
    if not conn.execute(update(_SOCKET).where(where).values(**values)).rowcount:
        conn.execute(insert(_SOCKET).values(station_id=station_id, socket=socket, **values))


@dataclass(frozen=True)
class ChipOwner:
    """The device a chip serial is recorded for."""

    device_id: int
    step: Step


class StationRecords(StationLedger, FactoryLedger, CertificateSigner, Protocol):
    """Everything one socket of a station reads and records (beside the chip itself)."""

    def load(self, device_id: int) -> Device: ...

    def identify(
        self, device_id: int, serial_hex: str, revision_hex: str, locator: str
    ) -> Device: ...

    def challenge(self, device_id: int) -> bytes: ...

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device: ...

    def batch_mode(self, device_id: int) -> tuple[BatchMode, str | None]:
        """The device's batch's mode and the kind of part it takes."""
        ...

    def claim(self, device_id: int, holder: str, lease_s: float) -> bool: ...

    def take_over(self, device_id: int, dead_holder: str, holder: str, lease_s: float) -> bool: ...

    def release(self, device_id: int, holder: str) -> None: ...

    def fail(
        self, device_id: int, error: str, action: PartAction, *, incident: str | None = None
    ) -> None:
        """Record the failure and the part's action; ``incident``: also an incident the
        station saw (:data:`~provisioner.ledger.STATION_INCIDENTS`)."""
        ...

    def gate(self, device_id: int, step: Step, *, announce: bool) -> bool:
        """Whether the device may start towards ``step`` now (its batch read afresh);
        ``announce``: mark the socket busy with it if so."""
        ...

    def chip_owner(self, serial_hex: str) -> ChipOwner | None: ...

    def show(self, state: socket_state.State, device_id: int | None, detail: str) -> None:
        """Set the socket's live row (``socket_state``)."""
        ...

    def let_go(self, device_id: int) -> None:
        """The device is not to run now: a socket row still naming it no longer does."""
        ...

    def chip_chain(self) -> ChainMaterial | None:
        """What the chips' compressed certificates are defined from, as the line holds it;
        None: this PC's own CA files (it is the line server)."""
        ...


class LocalRecords(DeviceLedger):
    """The records in the line's database, for one socket of one station. The signer is
    the line's (the hsm worker behind the ``hsm`` queue, or in process in tests);
    ``on_verified`` is told of each device verified on its chip (the gateway queues its
    upload)."""

    def __init__(
        self,
        engine: Engine,
        station_id: str,
        socket: int,
        signer: CertificateSigner,
        *,
        registry: str,
        on_verified: Callable[[int], None] | None = None,
        manufacturer_root: ManufacturerRoot | None = None,
    ) -> None:
        super().__init__(
            engine,
            f"station:{station_id}",
            station_id,
            socket,
            registry=registry,
            manufacturer_root=manufacturer_root,
        )
        self.signer = signer
        self.on_verified = on_verified

    @property
    def station(self) -> str:
        assert self.station_id is not None
        return self.station_id

    @property
    def socket_no(self) -> int:
        assert self.socket is not None
        return self.socket

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        cert = self.signer.sign(request)
        with self.engine.begin() as conn:  # the challenge is spent
            spent = conn.execute(
                update(_DEVICE).where(_DEVICE.c.id == request.device_id).values(pop_challenge=None)
            )
            if not spent.rowcount:
                raise NotFoundError(f"device {request.device_id} does not exist")
        return cert

    def record_verified(self, device_id: int, read_back: bytes) -> Device:
        dev = super().record_verified(device_id, read_back)
        if self.on_verified is not None:
            self.on_verified(device_id)
        return dev

    def accept_factory_certificate(self, device_id: int) -> Device:
        dev = super().accept_factory_certificate(device_id)
        if self.on_verified is not None:
            self.on_verified(device_id)
        return dev

    def manufacturer_root(self) -> bytes:
        if self.manufacturer_root_source is None:
            raise ConfigError("this line server has no manufacturer root configured")
        return self.manufacturer_root_source().public_bytes(serialization.Encoding.PEM)

    def fail(
        self,
        device_id: int,
        error: str,
        action: PartAction = PartAction.REJECT,
        *,
        incident: str | None = None,
    ) -> None:
        super().fail(device_id, error, action, incident=incident)

    def gate(self, device_id: int, step: Step, *, announce: bool) -> bool:
        with self.engine.begin() as conn:
            return self.gate_in(conn, device_id, step, announce=announce)

    def gate_in(self, conn: Connection, device_id: int, step: Step, *, announce: bool) -> bool:
        """:meth:`gate` in ``conn``'s transaction (the gateway's, with the request's nonce):
        the batch read and the socket row set together."""
        row = conn.execute(_GATE, {"device_id": device_id}).first()
        if row is None:
            raise NotFoundError(f"device {device_id} does not exist")
        ok = row.state is not None and may_start(
            BatchState(row.state), row.cancelled_at is not None, step
        )
        if ok and announce:
            _put_socket(
                conn,
                self.station,
                self.socket_no,
                state="busy",
                device_id=device_id,
                chip_serial=row.chip_serial,
                detail=f"step {step.name.lower()}",
            )
        return ok

    def chip_owner(self, serial_hex: str) -> ChipOwner | None:
        with self.engine.begin() as conn:
            owner = conn.execute(_OWNER, {"serial": serial_hex}).first()
        if owner is None:
            return None
        return ChipOwner(owner.id, Step(owner.step))

    def show(self, state: socket_state.State, device_id: int | None, detail: str) -> None:
        with self.engine.begin() as conn:
            self.show_in(conn, state, device_id, detail)

    def show_in(
        self, conn: Connection, state: socket_state.State, device_id: int | None, detail: str
    ) -> None:
        """:meth:`show` in ``conn``'s transaction: the serial read and the row set together."""
        serial = None
        if device_id is not None:
            found = conn.execute(_SERIAL_OF, {"device_id": device_id}).first()
            if found is None:
                raise NotFoundError(f"device {device_id} does not exist")
            serial = found.chip_serial
        _put_socket(
            conn,
            self.station,
            self.socket_no,
            state=state,
            device_id=device_id,
            chip_serial=serial,
            detail=detail,
        )

    def chip_chain(self) -> ChainMaterial | None:
        return None

    def let_go(self, device_id: int) -> None:
        rows = socket_state.read(self.engine, self.station)
        if any(
            r.socket == self.socket and r.device_id == device_id and r.state in _WORKING
            for r in rows
        ):
            socket_state.record(self.engine, self.station, self.socket_no, "idle")
