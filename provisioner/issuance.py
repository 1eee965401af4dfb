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

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, or_, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
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


@dataclass(frozen=True)
class _Dev:
    """What the policy reads of a device (a Core row, not an ORM object: the group's
    devices are read in one statement and never written through the ORM)."""

    id: int
    batch_id: int
    chip_serial: str | None
    public_key: str | None
    socket: int | None


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
        self._fingerprint_of: tuple[x509.Certificate, str] | None = None

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
        whose commit failed was not issued). The same decision as :meth:`sign_many` for a
        group of one."""
        t0 = time.perf_counter()
        self._local.issued = 0
        result: IssuedCertificate | ProvisionerError
        try:
            stateless = _stateless_refusal(request)  # nothing is locked for these checks
            if stateless is not None:
                with transaction(self.engine) as s:
                    result = self._refuse(s, request, stateless)
            else:
                result = self._decide_committed([request])[0]
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
        station retries them).

        Decide, then write: every request is judged on what the records hold (one read of
        the devices with their certificates, one of the serials and keys they claim), the
        quota is claimed per batch, the allowed ones are signed, and only then are the
        certificate rows, the device steps and the audit events written, each kind in one
        statement. A refusal therefore never has anything of another request to undo."""
        t0 = time.perf_counter()
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
        if valid:
            try:
                decided = self._decide_committed([r for _, r in valid])
            except ProvisionerError as exc:
                decided = [exc] * len(valid)
                self._local.issued = 0
            for (i, _), res in zip(valid, decided, strict=True):
                out[i] = res
        done = [o for o in out if o is not None]
        fresh = self._local.issued
        elapsed = time.perf_counter() - t0
        for o in done:
            if isinstance(o, ProvisionerError):
                record.signature(_result_of(o))
            elif fresh > 0:
                fresh -= 1  # which ones were new does not matter for a count
                # Each new certificate's request waited for the whole group: its latency.
                record.signature("ok", elapsed)
            else:
                record.signature("repeat")
        return done

    def _decide_committed(
        self, requests: Sequence[SigningRequest]
    ) -> list[IssuedCertificate | ProvisionerError]:
        """:meth:`_decide_group` in its own transaction, with breaker events deferred. A
        unique-constraint conflict means another signer process recorded one of these
        devices (or a serial number) between our read and our write: the group is decided
        once more, on the records as they are now (that device's certificate comes back as
        a repeat); the signatures of the first try never leave this process."""
        with self._health_events_deferred():
            self._follow_rotation()
            for attempt in (1, 2):
                try:
                    with transaction(self.engine) as s:
                        return self._decide_group(s, requests)
                except IntegrityError:
                    self._local.issued = 0
                    if attempt == 2:
                        raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _decide_group(
        self, s: Session, requests: Sequence[SigningRequest]
    ) -> list[IssuedCertificate | ProvisionerError]:
        """The stateful policy for requests that passed the stateless checks, in ``s``:
        each one judged in order exactly as a lone request would be (unknown device,
        certified for another key, repeat, request mismatch, clone, key reuse, quota),
        then the allowed ones signed and recorded with batched statements."""
        conn = s.connection()
        ids = sorted({r.device_id for r in requests})
        devs: dict[int, _Dev] = {}
        certs: dict[int, IssuedCertificate] = {}
        for row in conn.execute(
            select(  # type: ignore[call-overload]
                Device.id,
                Device.batch_id,
                Device.chip_serial,
                Device.public_key,
                Device.socket,
                Certificate.der,
                Certificate.serial_number,
                Certificate.fingerprint_sha256,
            )
            .outerjoin(Certificate, col(Certificate.device_id) == col(Device.id))
            .where(col(Device.id).in_(ids))
        ):
            devs[row[0]] = _Dev(row[0], row[1], row[2], row[3], row[4])
            if row[5] is not None:
                certs[row[0]] = IssuedCertificate(
                    der=bytes(row[5]), serial_number=int(row[6], 16), fingerprint_sha256=row[7]
                )
        # Who holds each serial and key claimed (unique columns: at most one device each).
        serials = sorted({r.chip_serial_hex for r in requests})
        keys = sorted({r.public_key.hex() for r in requests})
        by_serial: dict[str, int] = {}
        by_key: dict[str, int] = {}
        for dev_id, serial, key in conn.execute(
            select(Device.id, Device.chip_serial, Device.public_key).where(
                or_(col(Device.chip_serial).in_(serials), col(Device.public_key).in_(keys))
            )
        ):
            if serial is not None:
                by_serial[serial] = dev_id
            if key is not None:
                by_key[key] = dev_id

        results: list[IssuedCertificate | ProvisionerError | None] = [None] * len(requests)
        first_of: dict[int, int] = {}  # device id -> the request of this group that issues
        same_as: dict[int, int] = {}  # request -> the earlier one for the same device
        claims: dict[int, list[int]] = {}  # batch id -> requests that passed, in order
        # Refusals are audited last: every group then takes its batches' row locks before
        # the audit log's lock, in that order, so two signer processes cannot deadlock.
        refused: list[tuple[int, _Refusal, _Dev | None]] = []
        for k, req in enumerate(requests):
            dev = devs.get(req.device_id)
            if dev is None:
                refused.append(
                    (
                        k,
                        _Refusal(
                            SIGN_REFUSED,
                            "unknown_device",
                            f"device {req.device_id} does not exist",
                            NotFoundError,
                        ),
                        None,
                    )
                )
                continue
            key_hex = req.public_key.hex()
            if dev.id in certs or dev.id in first_of:
                if dev.public_key != key_hex:
                    refused.append(
                        (
                            k,
                            _Refusal(
                                "incident.clone_refused",
                                "certified_for_another_key",
                                f"device {dev.id} already has a certificate for another key",
                            ),
                            dev,
                        )
                    )
                elif dev.id in certs:
                    results[k] = certs[dev.id]
                else:
                    same_as[k] = first_of[dev.id]
                continue
            refusal = _clone_refusal(dev, req, by_serial, by_key)
            if refusal is not None:
                refused.append((k, refusal, dev))
                continue
            first_of[dev.id] = k
            claims.setdefault(dev.batch_id, []).append(k)

        allowed = self._claim_quotas(requests, s, devs, claims, refused)
        self._issue_group(s, requests, devs, allowed, results)
        for k, refusal, rdev in sorted(refused, key=lambda r: r[0]):
            results[k] = self._refuse(s, requests[k], refusal, rdev)
        for k, earlier in same_as.items():
            results[k] = results[earlier]
        done = [r for r in results if r is not None]
        assert len(done) == len(requests), "every request is decided"
        return done

    def _claim_quotas(
        self,
        requests: Sequence[SigningRequest],
        s: Session,
        devs: dict[int, _Dev],
        claims: dict[int, list[int]],
        refused: list[tuple[int, _Refusal, _Dev | None]],
    ) -> list[int]:
        """Claim one certificate per allowed request from its batch's quota: one
        conditional UPDATE per batch for all of them (batches in id order, so two signer
        processes lock them in the same order); when that does not fit, request by request
        as a lone request would, so the first ones in the group get what is left and the
        rest are refused with the batch's reason."""
        allowed: list[int] = []
        for batch_id in sorted(claims):
            wanted = claims[batch_id]
            if self._claim(s, batch_id, len(wanted)):
                allowed.extend(wanted)
                continue
            for k in wanted:
                dev = devs[requests[k].device_id]
                refusal = self._claim_quota(s, dev)
                if refusal is None:
                    allowed.append(k)
                else:
                    refused.append((k, refusal, dev))
        return sorted(allowed)

    def _claim(self, s: Session, batch_id: int, n: int) -> bool:
        """Take ``n`` certificates from the batch's quota if all of them fit, atomically
        (the row lock, or SQLite's write lock, is held until the transaction ends)."""
        limit = func.coalesce(col(Batch.quota), col(Batch.count))
        res = s.execute(
            update(Batch)
            .where(
                col(Batch.id) == batch_id,
                col(Batch.issued) + n <= limit,
                col(Batch.state).in_([BatchState.RUNNING, BatchState.PAUSED]),
            )
            .values(issued=col(Batch.issued) + n)
        )
        return res.rowcount == 1  # type: ignore[attr-defined, no-any-return]

    def _issue_group(
        self,
        s: Session,
        requests: Sequence[SigningRequest],
        devs: dict[int, _Dev],
        allowed: list[int],
        results: list[IssuedCertificate | ProvisionerError | None],
    ) -> None:
        """Sign the allowed requests, then record them: the certificate rows in one
        INSERT, the device steps in one UPDATE, their audit events in one chained append.
        A request the issuer itself refuses gives its quota back; a token failure raises
        (the caller's transaction, quota claims included, is rolled back)."""
        if not allowed:
            return
        issuer_fingerprint = self._issuer_fingerprint()
        now = datetime.now(UTC)
        cert_rows: list[dict[str, object]] = []
        events: list[dict[str, object]] = []
        give_back: dict[int, int] = {}
        for k in allowed:
            req = requests[k]
            dev = devs[req.device_id]
            try:
                cert = self.issuer.issue(req, random_serial_number(), now)
            except (PolicyViolationError, NotFoundError) as exc:
                results[k] = exc
                give_back[dev.batch_id] = give_back.get(dev.batch_id, 0) + 1
                continue
            der = cert.public_bytes(serialization.Encoding.DER)
            serial_hex = format(cert.serial_number, "x")
            fp = hashlib.sha256(der).hexdigest()
            cert_rows.append(
                {
                    "device_id": req.device_id,
                    "serial_number": serial_hex,
                    "fingerprint_sha256": fp,
                    "der": der,
                    "not_before": cert.not_valid_before_utc,
                    "not_after": cert.not_valid_after_utc,
                    "issuer_fingerprint_sha256": issuer_fingerprint,
                    "created_at": now,
                }
            )
            events.append(
                {
                    "event_type": "device.cert_issued",
                    "actor": self.actor,
                    "station_id": None,
                    "socket": dev.socket,
                    "batch_id": dev.batch_id,
                    "device_id": dev.id,
                    "chip_serial": dev.chip_serial,
                    "payload": {
                        "serial_number": serial_hex,
                        "fingerprint_sha256": fp,
                        "issuer_fingerprint_sha256": issuer_fingerprint,
                        "issuer": self.ca.name,
                    },
                }
            )
            results[k] = IssuedCertificate(
                der=der, serial_number=cert.serial_number, fingerprint_sha256=fp
            )
        for batch_id, n in sorted(give_back.items()):
            s.execute(
                update(Batch).where(col(Batch.id) == batch_id).values(issued=col(Batch.issued) - n)
            )
        if not cert_rows:
            return
        conn = s.connection()
        chain.insert_rows(conn, Certificate.__table__, cert_rows)  # type: ignore[attr-defined]
        # record_step's device update, for all of them in one statement.
        conn.execute(
            update(Device)
            .where(col(Device.id).in_([r["device_id"] for r in cert_rows]))
            .values(step=Step.CERT_ISSUED, error=None, action=None, updated_at=now)
        )
        chain.append_many(s, events)
        self._local.issued = getattr(self._local, "issued", 0) + len(cert_rows)

    def _issuer_fingerprint(self) -> str:
        """The intermediate's fingerprint, computed once per intermediate (it changes only
        with a rotation, which replaces the certificate object)."""
        cert = self.ca.intermediate_cert
        held = self._fingerprint_of
        if held is None or held[0] is not cert:
            held = (cert, fingerprint(cert))
            self._fingerprint_of = held
        return held[1]

    def _refuse(
        self, s: Session, req: SigningRequest, refusal: _Refusal, dev: _Dev | None = None
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

    def _claim_quota(self, s: Session, dev: _Dev) -> _Refusal | None:
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


class GroupSigner:
    """Group commit for the sign requests that one signer process receives concurrently.

    The hsm worker handles requests on several threads (``celery worker -P threads``); each
    calls :meth:`sign`. One of them at a time leads: it takes every request queued so far
    (at most ``max_group``) and signs them with one :meth:`IssuanceService.sign_many`, one
    transaction; the others wait for their answer, and whatever arrives meanwhile forms
    the next group. No window is waited for: alone, a request is signed at once (a group
    of one); under load, groups grow by themselves to what arrived during the previous
    commit, which is what amortises the commit and the statements (PostgreSQL's own
    group commit works the same way). A refused request is answered with its own error;
    the others of its group are not affected (``sign_many`` decides each on its own).

    Why not a fixed window or a task that drains the queue: a window adds its length to
    every answer even when the line is idle, and draining the broker behind Celery's back
    loses the acks_late redelivery of what was drained if the worker dies."""

    def __init__(self, service: IssuanceService, max_group: int = 100) -> None:
        self.service = service
        self.max_group = max_group
        self._cond = threading.Condition()
        self._queue: list[_Waiting] = []
        self._leading = False

    def pending(self) -> int:
        """Requests waiting for the next group (for tests and status)."""
        with self._cond:
            return len(self._queue)

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        """Sign ``request`` in the next group; raises its refusal or the group's failure."""
        me = _Waiting(request)
        with self._cond:
            self._queue.append(me)
        while True:
            with self._cond:
                while me.result is None and self._leading:
                    self._cond.wait()
                if me.result is not None:
                    break
                self._leading = True  # ours is still queued and nobody leads: lead
                group = self._queue[: self.max_group]
                del self._queue[: self.max_group]
            self._run(group)
        return _answer(me.result)

    def _run(self, group: list[_Waiting]) -> None:
        answers: list[IssuedCertificate | ProvisionerError] | BaseException
        try:
            answers = self.service.sign_many([w.request for w in group])
        except BaseException as exc:  # nothing of the group was committed: all get it
            answers = exc
        with self._cond:
            for k, w in enumerate(group):
                w.result = answers if isinstance(answers, BaseException) else answers[k]
            self._leading = False
            self._cond.notify_all()


@dataclass(eq=False)
class _Waiting:
    request: SigningRequest
    result: IssuedCertificate | BaseException | None = None


def _answer(result: IssuedCertificate | BaseException | None) -> IssuedCertificate:
    if isinstance(result, BaseException):
        raise result
    assert result is not None
    return result


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


def _clone_refusal(
    dev: _Dev, req: SigningRequest, by_serial: dict[str, int], by_key: dict[str, int]
) -> _Refusal | None:
    """The request against the station's records and every other device: a mismatch, a
    serial of another device (a clone), a key recorded for another device (never
    certified twice). ``by_serial``/``by_key``: the device holding each claimed serial
    and key (unique columns)."""
    key_hex = req.public_key.hex()
    if (
        dev.chip_serial != req.chip_serial_hex
        or dev.public_key != key_hex
        or dev.batch_id != req.batch_id
    ):
        return _Refusal(
            "incident.clone_refused",
            "request_mismatch",
            f"request for device {dev.id} does not match what its station recorded",
        )
    other = by_serial.get(req.chip_serial_hex)
    if other is not None and other != dev.id:
        return _Refusal(
            "incident.clone_refused",
            "serial_of_another_device",
            f"serial {req.chip_serial_hex} already belongs to device {other} (clone?)",
        )
    reused = by_key.get(key_hex)
    if reused is not None and reused != dev.id:
        return _Refusal(
            "incident.key_reused",
            "key_reused",
            f"public key already recorded for device {reused}: never certified twice",
        )
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
