"""The signing service: issuance policy + HSM signature + record, in one transaction.

This is what runs behind the ``hsm`` queue (or in-process). It implements
:class:`~provisioner.ports.CertificateSigner` and is idempotent per device: a device that
already has a certificate for the same public key gets that certificate back, never a second
one. Before every signature the policy checks, in this order:

1. the request itself (stateless): a well-formed ATECC serial, a P-256 point on the curve,
   a proof-of-possession signature that verifies with that key;
2. against every batch, in the issuing transaction: the request matches what the station
   recorded, the serial and the public key belong to no other device (a clone, or a key
   reused: refused and recorded as an incident), and the batch's quota has room, claimed
   with a conditional UPDATE so several signer processes together never exceed it.

Every refusal, of either kind, is audited: with its incident type where there is one
(``incident.clone_refused``, ``incident.key_reused``, ``incident.quota_exceeded``,
``incident.batch_not_running``), otherwise as ``sign.refused``, always with a reason code
(``payload.reason``, see :data:`REASONS`). Refusals are aggregated per (signer, event type,
reason) and window (:mod:`provisioner.audit.refusals`): whoever can put messages on the
broker can make the signer refuse without end, but not grow the trail without bound.

After signing, the certificate is verified with the CA public key before it leaves
(:func:`provisioner.ca.issuer.build_device_certificate`).

The token connection is a session pool behind a circuit breaker: when the token is lost,
signing stops (every request fails fast with HsmUnavailableError), the loss and the recovery
each land in the audit trail and in ``<var>/run/hsm-signer-<pid>.json``, and the breaker
reconnects by itself with backoff.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from hsm.breaker import BreakerState, BreakerStatus
from provisioner.audit import chain, refusals
from provisioner.ca.ceremony import LoadedCa, load_ca, store_of
from provisioner.ca.issuer import (
    DeviceIssuer,
    check_public_key,
    check_serial,
    random_serial_number,
    verify_proof_of_possession,
)
from provisioner.ca.store import fingerprint
from provisioner.db.engine import transaction
from provisioner.db.models import MAX_ID, Batch, BatchState, Certificate, Device, Step
from provisioner.errors import (
    BatchNotRunningError,
    NotFoundError,
    PolicyViolationError,
    ProvisionerError,
    QuotaExhaustedError,
    ServiceUnavailableError,
)
from provisioner.ledger import record_step
from provisioner.metrics import record
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import ProfileSettings, Settings

SIGN_REFUSED = "sign.refused"
# The reason codes of refusals (``payload.reason``; the aggregation key with the event type).
REASONS = frozenset(
    {
        "malformed_request",  # fields missing, not hex, ids out of range
        "malformed_serial",  # not an ATECC serial
        "bad_public_key",  # not a P-256 point / acceptable SubjectPublicKeyInfo
        "bad_pop",  # the proof of possession does not verify
        "unknown_device",  # no such device recorded
        "certified_for_another_key",  # the device has a certificate, for another key
        "request_mismatch",  # serial, key or batch differ from the station's records
        "serial_of_another_device",  # a clone
        "key_reused",  # the key is recorded for another device
        "batch_not_running",  # created, cancelled or closed
        "quota_exhausted",
    }
)
_MAX_DETAIL = 200  # a refusal's text may quote the request: the trail keeps its start only


@dataclass(frozen=True)
class _Refusal:
    """A refusal by the policy: it changes nothing, and its (aggregated) event commits in
    the transaction that decided it."""

    event_type: str
    code: str
    reason: str
    error: type[ProvisionerError] = PolicyViolationError


class IssuanceService:
    """Issues device certificates with the intermediate CA key held in the token."""

    def __init__(
        self,
        engine: Engine,
        ca: LoadedCa,
        profile: ProfileSettings,
        actor: str = "signer",
        settings: Settings | None = None,
    ) -> None:
        self.engine = engine
        self.ca = ca
        self.profile = profile
        self.issuer = DeviceIssuer(ca, profile)
        self.actor = actor
        self._settings = settings
        self._ca_mtime = self._intermediate_mtime()
        # Breaker changes seen while this thread holds the issuing transaction wait here:
        # appending to the audit trail from inside it would wait on our own write lock.
        self._local = threading.local()
        self._pending_events: list[BreakerStatus] = []
        self._pending_lock = threading.Lock()

    @classmethod
    def open(cls, engine: Engine, settings: Settings, actor: str = "signer") -> IssuanceService:
        """The signer of a worker process: the CA loaded with its breaker reporting to the
        audit trail and the status file, and reconnecting in the background."""
        holder: list[IssuanceService] = []

        def on_change(status: BreakerStatus) -> None:
            if holder:
                holder[0]._breaker_changed(status)

        ca = load_ca(settings, on_change=on_change)
        svc = cls(engine, ca, settings.profile, actor, settings)
        holder.append(svc)
        svc._write_status(ca.status)
        ca.pool.breaker.start_background_retry()
        return svc

    def close(self) -> None:
        self.ca.close()
        path = self._status_file()
        if path is not None:
            path.unlink(missing_ok=True)

    # --- signing ----------------------------------------------------------------------

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        """One request, counted by result once its transaction has ended (a signature
        whose commit failed was not issued)."""
        t0 = time.perf_counter()
        self._local.issued = 0
        result: IssuedCertificate | ProvisionerError
        try:
            stateless = _stateless_refusal(request)  # nothing is locked for these checks
            if stateless is not None:
                with transaction(self.engine) as s:
                    result = self._refuse(s, request, stateless)
            else:
                with self._health_events_deferred():
                    self._follow_rotation()
                    with transaction(self.engine) as s:
                        result = self._decide(s, request)
        except Exception as exc:
            record.signature(_result_of(exc))
            raise
        if isinstance(result, ProvisionerError):
            record.signature(_result_of(result))
            raise result
        if self._local.issued:
            record.signature("ok", time.perf_counter() - t0)
        else:
            record.signature("repeat")
        return result

    def sign_many(
        self, requests: Sequence[SigningRequest]
    ) -> list[IssuedCertificate | ProvisionerError]:
        """Several requests, decided one by one (a refusal does not fail the others) and
        committed in one transaction, so one commit serves them all. If the token fails
        half-way, nothing of the call is kept and every request gets that error (the
        station retries them)."""
        out: list[IssuedCertificate | ProvisionerError | None] = []
        valid: list[tuple[int, SigningRequest]] = []
        refused: list[tuple[int, SigningRequest, _Refusal]] = []
        self._local.issued = 0
        for i, r in enumerate(requests):
            out.append(None)
            stateless = _stateless_refusal(r)
            if stateless is None:
                valid.append((i, r))
            else:
                refused.append((i, r, stateless))
        if refused:  # audited on their own: a token failure below must not undo them
            with transaction(self.engine) as s:
                for i, r, why in refused:
                    out[i] = self._refuse(s, r, why)
        try:
            with self._health_events_deferred():
                self._follow_rotation()
                with transaction(self.engine) as s:
                    for i, r in valid:
                        try:
                            with s.begin_nested():  # a failure undoes only its own part
                                out[i] = self._decide(s, r)
                        except (PolicyViolationError, NotFoundError) as exc:
                            out[i] = exc
        except ProvisionerError as exc:
            for i, _ in valid:
                out[i] = exc
            self._local.issued = 0
        done = [o for o in out if o is not None]
        fresh = self._local.issued
        for o in done:
            if isinstance(o, ProvisionerError):
                record.signature(_result_of(o))
            elif fresh > 0:
                fresh -= 1  # which ones were new does not matter for a count
                record.signature("ok")
            else:
                record.signature("repeat")
        return done

    def _decide(self, s: Session, request: SigningRequest) -> IssuedCertificate | ProvisionerError:
        """The stateful policy and, if it allows, the signature and its record, in ``s``.
        A refusal changes nothing but its (aggregated) event, so it commits like a success."""
        dev = s.get(Device, request.device_id)
        if dev is None:
            return self._refuse(
                s,
                request,
                _Refusal(
                    SIGN_REFUSED,
                    "unknown_device",
                    f"device {request.device_id} does not exist",
                    NotFoundError,
                ),
            )
        existing = s.exec(
            select(Certificate).where(Certificate.device_id == request.device_id)
        ).first()
        if existing is not None:
            if dev.public_key != request.public_key.hex():
                return self._refuse(
                    s,
                    request,
                    _Refusal(
                        "incident.clone_refused",
                        "certified_for_another_key",
                        f"device {dev.id} already has a certificate for another key",
                    ),
                    dev,
                )
            return _issued(existing)
        refusal = self._clone_check(s, dev, request) or self._claim_quota(s, dev)
        if refusal is None:
            return self._issue(s, dev, request)
        return self._refuse(s, request, refusal, dev)

    def _refuse(
        self, s: Session, req: SigningRequest, refusal: _Refusal, dev: Device | None = None
    ) -> ProvisionerError:
        """Audit ``refusal`` of ``req`` in ``s`` (aggregated per window) and return its
        error. The event's device, batch and serial columns name only what the records
        confirm (``dev``); what the request merely claims stays in the payload, bounded."""
        payload: dict[str, object] = {
            "reason": refusal.code,
            "detail": refusal.reason[:_MAX_DETAIL],
            "public_key_sha256": hashlib.sha256(req.public_key).hexdigest(),
        }
        if dev is None:
            payload["claimed_device"] = _claimed_id(req.device_id)
            payload["claimed_batch"] = _claimed_id(req.batch_id)
        refusals.record(
            s,
            refusal.event_type,
            actor=self.actor,
            reason=refusal.code,
            batch_id=dev.batch_id if dev is not None else None,
            device_id=dev.id if dev is not None else None,
            chip_serial=req.chip_serial_hex if dev is not None else None,
            payload=payload,
        )
        return refusal.error(f"refused to sign: {refusal.reason}")

    def refuse_malformed(self, detail: str) -> PolicyViolationError:
        """Audit a sign request that could not even be read (the task's message lacks a
        field or holds no hex): ``sign.refused`` with reason ``malformed_request``. Returns
        the error to answer with."""
        record.signature("refused")
        with transaction(self.engine) as s:
            refusals.record(
                s,
                SIGN_REFUSED,
                actor=self.actor,
                reason="malformed_request",
                payload={"reason": "malformed_request", "detail": detail[:_MAX_DETAIL]},
            )
        return PolicyViolationError(f"refused to sign: malformed request ({detail[:_MAX_DETAIL]})")

    def _clone_check(self, s: Session, dev: Device, req: SigningRequest) -> _Refusal | None:
        if (
            dev.chip_serial != req.chip_serial_hex
            or dev.public_key != req.public_key.hex()
            or dev.batch_id != req.batch_id
        ):
            return _Refusal(
                "incident.clone_refused",
                "request_mismatch",
                f"request for device {dev.id} does not match what its station recorded",
            )
        other = s.exec(
            select(Device.id).where(Device.chip_serial == req.chip_serial_hex, Device.id != dev.id)
        ).first()
        if other is not None:
            return _Refusal(
                "incident.clone_refused",
                "serial_of_another_device",
                f"serial {req.chip_serial_hex} already belongs to device {other} (clone?)",
            )
        reused = s.exec(
            select(Device.id).where(Device.public_key == req.public_key.hex(), Device.id != dev.id)
        ).first()
        if reused is not None:
            return _Refusal(
                "incident.key_reused",
                "key_reused",
                f"public key already recorded for device {reused}: never certified twice",
            )
        return None

    def _claim_quota(self, s: Session, dev: Device) -> _Refusal | None:
        """Take one certificate from the batch's quota, atomically: the conditional UPDATE
        holds the row lock (PostgreSQL) or the write lock (SQLite's BEGIN IMMEDIATE) until
        the transaction ends, so concurrent signers are serialised on the count."""
        limit = func.coalesce(col(Batch.quota), col(Batch.count))
        res = s.execute(
            update(Batch)
            .where(
                col(Batch.id) == dev.batch_id,
                col(Batch.issued) < limit,
                col(Batch.state).in_([BatchState.RUNNING, BatchState.PAUSED]),
            )
            .values(issued=col(Batch.issued) + 1)
        )
        if res.rowcount == 1:  # type: ignore[attr-defined]
            return None
        batch = s.get(Batch, dev.batch_id)
        if batch is not None and batch.state not in (BatchState.RUNNING, BatchState.PAUSED):
            # A cancelled or closed batch released its quota; a created one never started.
            return _Refusal(
                "incident.batch_not_running",
                "batch_not_running",
                f"batch {dev.batch_id} is {batch.state.value}: no certificate is issued for it",
                BatchNotRunningError,
            )
        quota = batch.quota if batch is not None and batch.quota is not None else "count"
        return _Refusal(
            "incident.quota_exceeded",
            "quota_exhausted",
            f"batch {dev.batch_id} has used its certificate quota ({quota})",
            QuotaExhaustedError,
        )

    def _issue(self, s: Session, dev: Device, req: SigningRequest) -> IssuedCertificate:
        cert = self.issuer.issue(req, random_serial_number(), datetime.now(UTC))
        der = cert.public_bytes(serialization.Encoding.DER)
        issuer_fingerprint = fingerprint(self.ca.intermediate_cert)
        row = Certificate(
            device_id=req.device_id,
            serial_number=format(cert.serial_number, "x"),
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
            der=der,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            issuer_fingerprint_sha256=issuer_fingerprint,
        )
        s.add(row)
        self._local.issued = getattr(self._local, "issued", 0) + 1
        record_step(
            s,
            dev,
            Step.CERT_ISSUED,
            "device.cert_issued",
            actor=self.actor,
            station_id=None,
            payload={
                "serial_number": row.serial_number,
                "fingerprint_sha256": row.fingerprint_sha256,
                "issuer_fingerprint_sha256": issuer_fingerprint,
                "issuer": self.ca.name,
            },
        )
        return _issued(row)

    # --- CA rotation and token health ------------------------------------------------------

    def _intermediate_mtime(self) -> float | None:
        if self._settings is None:
            return None
        try:
            return store_of(self._settings).intermediate_pem.stat().st_mtime
        except OSError:
            return None

    def _follow_rotation(self) -> None:
        """After `ca rotate` / `ca import-cert`, sign with the new intermediate: a running
        signer notices the changed file and reloads (cheap: one stat per request)."""
        mtime = self._intermediate_mtime()
        if self._settings is None or mtime == self._ca_mtime:
            return
        self.ca.follow(self._settings)
        self._ca_mtime = mtime

    def _status_file(self) -> Path | None:
        if self._settings is None:
            return None
        return self._settings.var / "run" / f"hsm-signer-{os.getpid()}.json"

    def _write_status(self, status: BreakerStatus) -> None:
        path = self._status_file()
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        body = {"pid": os.getpid(), "token_label": self.ca.pool.token_label, **status.as_json()}
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)

    @contextmanager
    def _health_events_deferred(self) -> Iterator[None]:
        """While this thread may hold the issuing transaction, breaker events wait; they
        are appended when it ends (success or not)."""
        self._local.in_transaction = True
        try:
            yield
        finally:
            self._local.in_transaction = False
            self._flush_health_events()

    def _breaker_changed(self, status: BreakerStatus) -> None:
        """Token lost or back: status file now, audit event as soon as this thread holds no
        transaction (never a PIN: the breaker's error text is an exception class and the
        module's message)."""
        self._write_status(status)
        with self._pending_lock:
            self._pending_events.append(status)
        if not getattr(self._local, "in_transaction", False):
            self._flush_health_events()

    def _flush_health_events(self) -> None:
        with self._pending_lock:
            pending, self._pending_events = self._pending_events, []
        for status in pending:
            event = "hsm.unavailable" if status.state is BreakerState.OPEN else "hsm.recovered"
            with transaction(self.engine) as s:
                chain.append(
                    s,
                    event,
                    actor=self.actor,
                    payload={
                        "hsm": self.ca.pool.token_label,
                        "trips": status.trips,
                        "error": status.last_error,
                        "since": status.since.isoformat(),
                        "pid": os.getpid(),
                    },
                )


def _result_of(exc: BaseException) -> str:
    """A refused or failed signing request as the ``result`` label of its count."""
    if isinstance(exc, PolicyViolationError | NotFoundError):
        return "refused"
    if isinstance(exc, ServiceUnavailableError):
        return "unavailable"
    return "error"


def _stateless_refusal(request: SigningRequest) -> _Refusal | None:
    """What is wrong with the request itself, before any record is read: ids out of any
    row's range, a malformed serial, an unacceptable key, a proof that does not verify."""
    for name, value in (("device", request.device_id), ("batch", request.batch_id)):
        if _claimed_id(value) is None:
            return _Refusal(SIGN_REFUSED, "malformed_request", f"{name} id out of range")
    checks = (
        ("malformed_serial", lambda: check_serial(request.chip_serial_hex)),
        ("bad_public_key", lambda: check_public_key(request.public_key)),
        (
            "bad_pop",
            lambda: verify_proof_of_possession(
                request.public_key, request.pop_challenge, request.pop_signature
            ),
        ),
    )
    for code, check in checks:
        try:
            check()
        except PolicyViolationError as exc:
            return _Refusal(SIGN_REFUSED, code, str(exc))
    return None


def _claimed_id(value: object) -> int | None:
    """An id as the request claims it, if it could be a row's (1 .. 2**63-1)."""
    return value if isinstance(value, int) and 0 < value <= MAX_ID else None


def _issued(row: Certificate) -> IssuedCertificate:
    return IssuedCertificate(
        der=row.der,
        serial_number=int(row.serial_number, 16),
        fingerprint_sha256=row.fingerprint_sha256,
    )
