"""The line server's side of the link: one gateway per station checks every request the
station sends and only then records it.

A request must be (:mod:`.envelope`) signed by a current, unrevoked certificate of the
station whose queue it arrived on, addressed to the line, for this task, unexpired and not
seen before (its nonce is kept until it expires). Then what it asks must agree with the
records (:meth:`Gateway._check`): the device is one of this station's batches; the step it
records follows the device's last one; the proof of possession answers the challenge the
line gave out, with the recorded key; the certificate written and read back is the one
issued. A refusal is answered (so the station stops waiting) and audited as
``link.refused``; nothing is recorded for it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from provisioner import socket_state
from provisioner.audit import chain
from provisioner.db.engine import transaction
from provisioner.db.models import (
    MAX_ID,
    Batch,
    BatchMode,
    BatchState,
    Device,
    LinkNonce,
    PartAction,
    StationIdentity,
    Step,
    aware,
    utcnow,
)
from provisioner.errors import LinkRefusedError, PolicyViolationError, ProvisionerError
from provisioner.ledger import STATION_INCIDENTS, ManufacturerRoot
from provisioner.link import wire
from provisioner.link.envelope import CLOCK_SKEW_S, Opened, open_envelope, seal
from provisioner.link.keys import LINE, SigningKey, station_party
from provisioner.link.records import LocalRecords, may_start
from provisioner.link.wire import DeviceRow
from provisioner.ports import CertificateSigner, SigningRequest

log = logging.getLogger("provisioner.gateway")

_SERIAL = re.compile(r"^[0-9A-F]{18}$")
_HEX = re.compile(r"^[0-9a-f]*$")
_SOCKET_STATES = frozenset({"busy", "idle", "insert_chip", "failed", "empty"})
_MAX_TEXT = 500
_MAX_HEX = 8192  # a certificate read back, in hex
_PRUNE_EVERY = 500

# Each request runs these few statements besides its operation's own, so they are Core
# statements built once (SQLAlchemy caches their compiled form): the ORM's identity map,
# flush and attribute events cost more than the queries themselves here.
_DEVICE = Device.__table__  # type: ignore[attr-defined]
_BATCH = Batch.__table__  # type: ignore[attr-defined]
_IDENTITY = StationIdentity.__table__  # type: ignore[attr-defined]
_NONCE = LinkNonce.__table__  # type: ignore[attr-defined]
# The device and what the checks need of its batch, in one statement.
_CHECK = (
    select(
        *_DEVICE.columns,
        _BATCH.c.station_id.label("batch_station_id"),
        _BATCH.c.state.label("batch_state"),
        _BATCH.c.mode.label("batch_mode"),
        _BATCH.c.part.label("batch_part"),
    )
    .select_from(_DEVICE.outerjoin(_BATCH, _BATCH.c.id == _DEVICE.c.batch_id))
    .where(_DEVICE.c.id == bindparam("device_id"))
)
# Whether a station certificate is still there and unrevoked (read with each nonce).
_REVOKED = select(_IDENTITY.c.revoked_at).where(_IDENTITY.c.fingerprint_sha256 == bindparam("kid"))
_SPEND = insert(_NONCE)


@dataclass(frozen=True)
class _BatchFacts:
    """What the checks and the ``load`` answer need of a device's batch."""

    station_id: str
    state: BatchState
    mode: str
    part: str | None


@dataclass(frozen=True)
class _Rule:
    """Which steps a device may be at for an operation (None: any), and whether the
    operation starts new work (then the batch must let it start)."""

    at: frozenset[Step] | None
    starts: Step | None = None


_ANY = _Rule(None)
_RULES: dict[str, _Rule] = {
    "load": _ANY,
    "claim": _ANY,
    "take_over": _ANY,
    "release": _ANY,
    "fail": _ANY,
    "gate": _ANY,
    "show": _ANY,
    "let_go": _ANY,
    "identify": _Rule(frozenset({Step.PENDING}), starts=Step.IDENTIFIED),
    "record_key": _Rule(frozenset({Step.IDENTIFIED})),
    "challenge": _Rule(frozenset({Step.KEY_GENERATED, Step.POP_VERIFIED})),
    "record_pop": _Rule(frozenset({Step.KEY_GENERATED})),
    "sign": _Rule(frozenset({Step.POP_VERIFIED}), starts=Step.CERT_ISSUED),
    "certificate": _Rule(frozenset(s for s in Step if s >= Step.CERT_ISSUED)),
    "record_written": _Rule(frozenset({Step.CERT_ISSUED})),
    "record_verified": _Rule(frozenset({Step.CERT_WRITTEN})),
    "batch_mode": _ANY,
    "record_factory": _Rule(frozenset({Step.IDENTIFIED})),
    "accept_factory": _Rule(frozenset({Step.POP_VERIFIED})),
}

# Which operations belong to one mode only: a station cannot have our CA issue a
# certificate for a device of a preprovisioned batch, nor record a part's own certificate
# for a device of an issue batch.
_MODE_OF: dict[str, BatchMode] = {
    "record_key": BatchMode.ISSUE,
    "sign": BatchMode.ISSUE,
    "record_written": BatchMode.ISSUE,
    "record_verified": BatchMode.ISSUE,
    "record_factory": BatchMode.PREPROVISIONED,
    "accept_factory": BatchMode.PREPROVISIONED,
}


class Gateway:
    """Serves the requests of one station (``station_id``) on the line server."""

    def __init__(
        self,
        engine: Engine,
        station_id: str,
        key: SigningKey,
        signer: CertificateSigner,
        *,
        registry: str,
        on_verified: Callable[[int], None] | None = None,
        on_resume: Callable[[], int] | None = None,
        chain_material: Callable[[], dict[str, Any]] | None = None,
        manufacturer_root: ManufacturerRoot | None = None,
    ) -> None:
        self.manufacturer_root = manufacturer_root
        self.on_resume = on_resume
        self.chain_material = chain_material
        self.engine = engine
        self.station_id = station_id
        self.party = station_party(station_id)
        self.key = key
        self.signer = signer
        self.registry = registry
        self.on_verified = on_verified
        self._accepted = 0
        # What a station certificate says never changes (its key, its station, its expiry):
        # kept per key id once read; whether it is revoked is read afresh with each nonce.
        self._keys: dict[str, tuple[ec.EllipticCurvePublicKey, datetime]] = {}

    # --- one message ----------------------------------------------------------------

    def handle(self, message: object, *, task: str = wire.REQUEST_TASK) -> dict[str, Any]:
        """Check and carry out one request; the answer is signed for the station.
        ``task``: the name the message was delivered under (a relabelled one is refused)."""
        nonce = message.get("nonce") if isinstance(message, dict) else None
        body: dict[str, Any] = {"in_reply_to": nonce if isinstance(nonce, str) else None}
        op: object = None
        try:
            opened = open_envelope(message, task=task, recipient=LINE, key_for=self._station_key)
            op = opened.body.get("op")
            body["result"] = self._serve(opened)
        except LinkRefusedError as exc:
            self._refused(exc, message, op)
            body.update(error=str(exc), kind="LinkRefusedError", reason=exc.reason)
        except ProvisionerError as exc:
            body.update(error=str(exc), kind=type(exc).__name__)
        return seal(
            self.key.key,
            kid=self.key.kid,
            task=wire.REPLY,
            sender=LINE,
            recipient=self.party,
            body=body,
            ttl_s=wire.REPLY_TTL_S,
        )

    def _station_key(self, sender: str, kid: str) -> ec.EllipticCurvePublicKey:
        if sender != self.party:
            raise LinkRefusedError(
                "wrong_sender",
                f"message refused: {sender!r} sent it on the queue of {self.party}",
            )
        known = self._keys.get(kid)
        if known is not None:
            public, not_after = known
            self._unexpired(not_after)
            return public  # revocation: checked in the nonce's transaction (_spend)
        with transaction(self.engine) as s:
            row = s.get(StationIdentity, kid)
        if row is None or row.station_id != self.station_id:
            raise LinkRefusedError(
                "unknown_sender",
                f"message refused: no certificate of {self.party} has id {kid[:16]}…",
            )
        self._not_revoked(True, row.revoked_at)
        self._unexpired(aware(row.not_after))
        key = x509.load_pem_x509_certificate(row.certificate_pem.encode()).public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        self._keys[kid] = (key, aware(row.not_after))
        return key

    def _not_revoked(self, found: bool, revoked_at: datetime | None) -> None:
        """``found``: the certificate's row exists (gone: as good as revoked)."""
        if not found:
            raise LinkRefusedError(
                "unknown_sender", f"message refused: no such certificate of {self.party}"
            )
        if revoked_at is not None:
            raise LinkRefusedError(
                "revoked",
                f"message refused: the certificate of {self.party} was revoked "
                f"({revoked_at:%Y-%m-%d %H:%M} UTC)",
            )

    def _unexpired(self, not_after: datetime) -> None:
        if not_after < datetime.now(UTC):
            raise LinkRefusedError(
                "expired_certificate",
                f"message refused: the certificate of {self.party} has expired: enroll the "
                "station again",
            )

    def _serve(self, opened: Opened) -> Any:
        """The request's nonce spent, then what it asks. The socket's live row (``gate``,
        ``show``: 8 of a device's ~21 requests) is written in the nonce's own transaction,
        one commit instead of two; a refusal or failure there rolls both back, and the
        nonce is then spent on its own, as for every other request (a refused request's
        nonce stays spent)."""
        op = opened.body.get("op")
        if not isinstance(op, str) or op not in _IN_NONCE_TRANSACTION:
            seen = self._spend(opened)
            return self._carry_out(opened.body, seen)
        try:
            with self.engine.begin() as conn:
                seen = self._spend_in(conn, opened)
                out = self._carry_out(opened.body, seen, conn)
        except LinkRefusedError as exc:
            if exc.reason in _SPENDS_NOTHING:
                raise
            self._spend(opened)
            raise
        except ProvisionerError:
            self._spend(opened)
            raise
        self._spent()
        return out

    def _spend(self, opened: Opened) -> DeviceRow | None:
        """Remember the nonce until the message expires, in a transaction of its own
        (:meth:`_spend_in`); returns the device row it read."""
        with self.engine.begin() as conn:  # SQLite: BEGIN IMMEDIATE, like transaction()
            seen = self._spend_in(conn, opened)
        self._spent()
        return seen

    def _spend_in(self, conn: Connection, opened: Opened) -> DeviceRow | None:
        """Remember the nonce until the message expires; seen before: a replay. In the same
        transaction, the sender's certificate is checked to be still unrevoked (a revoked
        station's message spends no nonce and changes nothing), and the device a device
        operation names is read with its batch for :meth:`_check` (returned; None when the
        request names no well-formed device): one transaction per request for all three
        instead of one each."""
        expires = datetime.fromtimestamp(opened.expires_at + CLOCK_SKEW_S, UTC)
        args = opened.body.get("args")
        device_id = args.get("device") if isinstance(args, dict) else None
        op = opened.body.get("op")
        wanted = isinstance(op, str) and op in _OPS and _well_formed(device_id)
        row = conn.execute(_REVOKED, {"kid": opened.kid}).first()
        self._not_revoked(row is not None, None if row is None else row.revoked_at)
        try:
            conn.execute(
                _SPEND, {"nonce": opened.nonce, "sender": opened.sender, "expires_at": expires}
            )
        except IntegrityError:  # the transaction is rolled back as this leaves it
            raise LinkRefusedError(
                "replayed", f"message refused: {opened.nonce[:12]}… was already received"
            ) from None
        if not wanted:
            return None
        return conn.execute(_CHECK, {"device_id": device_id}).first()

    def _spent(self) -> None:
        """One more nonce kept: now and then, the expired ones go."""
        self._accepted += 1
        if self._accepted % _PRUNE_EVERY == 1:
            with transaction(self.engine) as s:
                s.execute(delete(LinkNonce).where(LinkNonce.expires_at < utcnow()))  # type: ignore[arg-type]

    def _refused(self, exc: LinkRefusedError, message: object, op: object) -> None:
        log.warning("%s: %s", self.party, exc)
        claimed = message.get("task") if isinstance(message, dict) else None
        args = message.get("body", {}).get("args") if isinstance(message, dict) else None
        device = args.get("device") if isinstance(args, dict) else None
        with transaction(self.engine) as s:
            chain.append(
                s,
                "link.refused",
                actor=self.party,
                role="station",
                station_id=self.station_id,
                payload={
                    "reason": exc.reason,
                    "detail": str(exc)[:_MAX_TEXT],
                    "op": str(op)[:40] if op is not None else None,
                    "task": str(claimed)[:80] if claimed is not None else None,
                    "device": device if isinstance(device, int) else None,
                },
            )

    # --- what it asks ---------------------------------------------------------------

    def _carry_out(
        self, body: dict[str, Any], seen: DeviceRow | None, conn: Connection | None = None
    ) -> Any:
        """``seen``: the device the request names, with its batch, as :meth:`_spend_in`
        read it; ``conn``: the nonce's transaction, for the operations that write in it."""
        op, args, socket = body.get("op"), body.get("args"), body.get("socket")
        known = isinstance(op, str) and (op in _OPS or op in _STATION_OPS)
        if not known or not isinstance(args, dict):
            raise LinkRefusedError("bad_request", f"request refused: unknown operation {op!r}")
        if not isinstance(socket, int) or not 0 <= socket < 64:
            raise LinkRefusedError("bad_request", f"request refused: bad socket {socket!r}")
        assert isinstance(op, str)
        records = LocalRecords(
            self.engine,
            self.station_id,
            socket,
            self.signer,
            registry=self.registry,
            on_verified=self.on_verified,
            manufacturer_root=self.manufacturer_root,
        )
        if op in _STATION_OPS:  # about the station, not one of its devices
            return _STATION_OPS[op](self, records, args)
        dev, batch = self._check(op, args.get("device"), seen)
        if conn is not None and op in _IN_NONCE_TRANSACTION:
            return _IN_NONCE_TRANSACTION[op](self, records, conn, dev, args)
        out = _OPS[op](self, records, dev, args)
        if op == "load":
            # The device comes with its batch's mode and part (fixed when the batch was
            # made), so a station attempt needs no batch_mode round trip of its own; the
            # line still refuses each mode's operations for the other's devices (_MODE_OF).
            out = {**out, "mode": str(batch.mode), "part": batch.part}
        return out

    def resume(self) -> int:
        return self.on_resume() if self.on_resume is not None else 0

    def chip_chain(self) -> dict[str, Any]:
        if self.chain_material is None:
            raise LinkRefusedError("bad_request", "request refused: no chain material here")
        return self.chain_material()

    def _check(
        self, op: str, device_id: object, row: DeviceRow | None
    ) -> tuple[DeviceRow, _BatchFacts]:
        """The device is this station's, and at a step where ``op`` may happen; with its
        batch. ``row``: the device and its batch as read in the nonce's transaction
        (:data:`_CHECK`); the operations write through the records, in their own
        transactions, reading the row again there."""
        if not _well_formed(device_id):
            raise LinkRefusedError("bad_request", f"request refused: bad device {device_id!r}")
        dev: DeviceRow | None = row
        batch: _BatchFacts | None = None
        if row is not None and row.batch_station_id is not None:
            batch = _BatchFacts(
                row.batch_station_id, BatchState(row.batch_state), row.batch_mode, row.batch_part
            )
        if dev is None or batch is None or batch.station_id != self.station_id:
            raise LinkRefusedError(
                "not_yours",
                f"request refused: device {device_id} is not one of {self.party}'s",
            )
        rule = _RULES[op]
        if rule.at is not None and dev.step not in rule.at:
            raise LinkRefusedError(
                "out_of_order",
                f"request refused: {op} for device {device_id} at step {dev.step.name} "
                "(steps are recorded in order)",
            )
        mode = _MODE_OF.get(op)
        if mode is not None and batch.mode != mode:
            raise LinkRefusedError(
                "wrong_mode",
                f"request refused: {op} for device {device_id}, whose batch is in mode "
                f"`{batch.mode}`",
            )
        if rule.starts is not None and not may_start(
            batch.state, dev.cancelled_at is not None, rule.starts
        ):
            raise LinkRefusedError(
                "not_running",
                f"request refused: device {device_id}'s batch is {batch.state.value}",
            )
        return dev, batch


def _well_formed(device_id: object) -> bool:
    return isinstance(device_id, int) and 0 < device_id <= MAX_ID


# --- the operations (records already checked to be this station's device) ----------
# ``dev`` is the device's row as the checks read it (its columns by name).
_Dev = DeviceRow


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str):
        raise LinkRefusedError("bad_request", f"request refused: {name} must be text")
    return value[:_MAX_TEXT]


def _hex(args: dict[str, Any], name: str, size: int | None = None) -> bytes:
    value = args.get(name)
    if not isinstance(value, str) or len(value) > _MAX_HEX:
        raise LinkRefusedError("bad_request", f"request refused: {name} must be hex")
    value = value.lower()
    if not _HEX.match(value) or len(value) % 2 or (size is not None and len(value) != 2 * size):
        raise LinkRefusedError("bad_request", f"request refused: {name} must be hex")
    return bytes.fromhex(value)


def _number(args: dict[str, Any], name: str, top: float) -> float:
    value = args.get(name)
    if not isinstance(value, int | float) or not 0 < value <= top:
        raise LinkRefusedError("bad_request", f"request refused: {name} out of range")
    return float(value)


def _holder(gw: Gateway, args: dict[str, Any], name: str = "holder") -> str:
    holder = _text(args, name)
    if not holder.startswith(gw.station_id + ":") or len(holder) > 80:
        raise LinkRefusedError("bad_request", f"request refused: {name} is not this station's")
    return holder


def _load(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return wire.device_to_json(dev)


def _claim(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return r.claim(_id(dev), _holder(gw, a), _number(a, "lease_s", 3600))


def _take_over(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return r.take_over(
        _id(dev), _holder(gw, a, "dead_holder"), _holder(gw, a), _number(a, "lease_s", 3600)
    )


def _release(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    r.release(_id(dev), _holder(gw, a))


def _fail(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    try:
        action = PartAction(_text(a, "action"))
    except ValueError:
        raise LinkRefusedError("bad_request", "request refused: unknown part action") from None
    incident = a.get("incident")
    if incident is not None and (
        not isinstance(incident, str) or incident not in STATION_INCIDENTS
    ):
        raise LinkRefusedError("bad_request", "request refused: unknown incident")
    r.fail(_id(dev), _text(a, "error"), action, incident=incident)


def _gate(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return r.gate(_id(dev), _step(a), announce=bool(a.get("announce")))


def _gate_in(gw: Gateway, r: LocalRecords, conn: Connection, dev: _Dev, a: dict[str, Any]) -> Any:
    return r.gate_in(conn, _id(dev), _step(a), announce=bool(a.get("announce")))


def _show_in(gw: Gateway, r: LocalRecords, conn: Connection, dev: _Dev, a: dict[str, Any]) -> Any:
    r.show_in(conn, _state(a), _id(dev), _text(a, "detail"))


def _step(a: dict[str, Any]) -> Step:
    try:
        return Step(int(a.get("step", -1)))
    except (TypeError, ValueError):
        raise LinkRefusedError("bad_request", "request refused: unknown step") from None


def _state(a: dict[str, Any]) -> socket_state.State:
    state = _text(a, "state")
    if state not in _SOCKET_STATES:
        raise LinkRefusedError("bad_request", "request refused: unknown socket state")
    return state  # type: ignore[return-value]


def _show(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    r.show(_state(a), _id(dev), _text(a, "detail"))


def _let_go(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    r.let_go(_id(dev))


def _identify(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    serial = _text(a, "serial")
    if not _SERIAL.match(serial):
        raise LinkRefusedError("bad_request", "request refused: malformed chip serial")
    revision = _hex(a, "revision", 4).hex()
    return wire.device_to_json(r.identify(_id(dev), serial, revision, _text(a, "locator")))


def _record_key(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    point = _hex(a, "point", 65)
    if point[0] != 4:
        raise LinkRefusedError("bad_request", "request refused: not an uncompressed point")
    return wire.device_to_json(r.record_key(_id(dev), point))


def _challenge(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return r.challenge(_id(dev)).hex()


def _record_pop(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    try:
        done = r.record_pop(_id(dev), _hex(a, "challenge", 32), _hex(a, "signature", 64))
    except PolicyViolationError as exc:
        raise LinkRefusedError("bad_proof", f"request refused: {exc}") from None
    return wire.device_to_json(done)


def _sign(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    challenge = _hex(a, "challenge", 32)
    if dev.pop_challenge is None or challenge.hex() != dev.pop_challenge:
        raise LinkRefusedError(
            "bad_proof",
            f"request refused: the proof for device {dev.id} answers a challenge the line "
            "did not give out for it (replayed or forged)",
        )
    request = SigningRequest(
        device_id=_id(dev),
        batch_id=dev.batch_id,
        chip_serial_hex=dev.chip_serial or "",
        public_key=_hex(a, "public_key", 65),
        pop_challenge=challenge,
        pop_signature=_hex(a, "signature", 64),
    )
    return wire.cert_to_json(r.sign(request))


def _certificate(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return wire.cert_to_json(r.certificate(_id(dev)))


def _record_written(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    try:
        done = r.record_written(_id(dev), _text(a, "fingerprint"))
    except PolicyViolationError as exc:
        raise LinkRefusedError("bad_certificate", f"request refused: {exc}") from None
    return wire.device_to_json(done)


def _record_verified(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    return wire.device_to_json(r.record_verified(_id(dev), _hex(a, "read_back")))


def _batch_mode(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    mode, part = r.batch_mode(_id(dev))
    return {"mode": mode.value, "part": part}


def _record_factory(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    try:
        done = r.record_factory_certificates(
            _id(dev), _text(a, "kind"), _hex(a, "device_der"), _hex(a, "signer_der")
        )
    except PolicyViolationError as exc:  # the chain does not verify here: nothing recorded
        raise LinkRefusedError("bad_certificate", f"request refused: {exc}") from None
    return wire.device_to_json(done)


def _accept_factory(gw: Gateway, r: LocalRecords, dev: _Dev, a: dict[str, Any]) -> Any:
    try:
        done = r.accept_factory_certificate(_id(dev))
    except PolicyViolationError as exc:
        raise LinkRefusedError("bad_certificate", f"request refused: {exc}") from None
    return wire.device_to_json(done)


def _id(dev: _Dev) -> int:
    return int(dev.id)


_Handler = Callable[[Gateway, LocalRecords, _Dev, dict[str, Any]], Any]
_OPS: dict[str, _Handler] = {
    "load": _load,
    "claim": _claim,
    "take_over": _take_over,
    "release": _release,
    "fail": _fail,
    "gate": _gate,
    "show": _show,
    "let_go": _let_go,
    "identify": _identify,
    "record_key": _record_key,
    "challenge": _challenge,
    "record_pop": _record_pop,
    "sign": _sign,
    "certificate": _certificate,
    "record_written": _record_written,
    "record_verified": _record_verified,
    "batch_mode": _batch_mode,
    "record_factory": _record_factory,
    "accept_factory": _accept_factory,
}


def _chip_owner(gw: Gateway, r: LocalRecords, a: dict[str, Any]) -> Any:
    serial = _text(a, "serial")
    if not _SERIAL.match(serial):
        raise LinkRefusedError("bad_request", "request refused: malformed chip serial")
    owner = r.chip_owner(serial)
    return None if owner is None else {"device": owner.device_id, "step": int(owner.step)}


# The operations written in the request's nonce transaction (Gateway._serve).
_InNonceHandler = Callable[[Gateway, LocalRecords, Connection, _Dev, dict[str, Any]], Any]
_IN_NONCE_TRANSACTION: dict[str, _InNonceHandler] = {"gate": _gate_in, "show": _show_in}
# Refusals in the nonce's own checks: the nonce is not spent for these (revoked, gone) or
# already was (replayed).
_SPENDS_NOTHING = frozenset({"revoked", "unknown_sender", "replayed"})

_StationHandler = Callable[[Gateway, LocalRecords, dict[str, Any]], Any]
_STATION_OPS: dict[str, _StationHandler] = {
    "chip_owner": _chip_owner,  # which device a chip in a socket is recorded for
    "resume": lambda gw, r, a: gw.resume(),  # the station (re)started: its work again
    "chip_chain": lambda gw, r, a: gw.chip_chain(),  # public CA material and profile
    # the manufacturer root pre-provisioned parts are verified against (public)
    "manufacturer_root": lambda gw, r, a: r.manufacturer_root().decode(),
}
