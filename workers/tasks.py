"""Thin Celery adapters around :mod:`provisioner.pipeline` and the signing service.

Each task re-reads the device from the database and the pipeline skips completed steps, so
every task here may run twice safely: ``acks_late`` means a task whose worker died is
delivered again rather than lost.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, Task
from celery.exceptions import Retry
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from provisioner import pipeline
from provisioner.errors import (
    LinkRefusedError,
    ProvisionerError,
    RegistryError,
    RegistryUnavailableError,
    ServiceUnavailableError,
    rebuilt,
)
from provisioner.ledger import DeviceLedger
from provisioner.link.wire import REQUEST_TASK
from provisioner.logs import log_context
from provisioner.metrics import record
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings
from provisioner.uploads.ratelimit import backoff_s
from workers import runtime
from workers.queues import (
    HSM_QUEUE,
    PROVISION_TASK,
    SIGN_TASK,
    SIGNER_STATUS_TASK,
    UPLOAD_TASK,
)

log = logging.getLogger("provisioner.worker")


class RemoteSigner:
    """The station's view of the signer: a call to the ``hsm`` queue, waiting for the answer.

    Waiting inside a task is safe here because the signer runs in a different worker (it
    consumes only ``hsm``), so a station can never wait on itself."""

    def __init__(self, app: Celery, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        try:
            res = self.app.send_task(
                SIGN_TASK, args=[request_to_json(request)], queue=HSM_QUEUE, expires=self.timeout_s
            )
            out = res.get(timeout=self.timeout_s, disable_sync_subtasks=False)
        except CeleryTimeoutError:
            res.revoke()
            raise ServiceUnavailableError(
                f"the signer did not answer within {self.timeout_s:.0f}s: is the hsm worker "
                "running (`provisioner services run`)?"
            ) from None
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise ServiceUnavailableError(
                f"the broker was lost while asking the signer ({type(exc).__name__}): "
                "is Redis running (`provisioner services status`)?"
            ) from None
        if "error" in out:
            raise rebuilt(out.get("kind"), out["error"])
        return IssuedCertificate(
            der=bytes.fromhex(out["der"]),
            serial_number=int(out["serial_number"], 16),
            fingerprint_sha256=out["fingerprint_sha256"],
        )


def request_to_json(r: SigningRequest) -> dict[str, Any]:
    return {
        "device_id": r.device_id,
        "batch_id": r.batch_id,
        "chip_serial_hex": r.chip_serial_hex,
        "public_key": r.public_key.hex(),
        "pop_challenge": r.pop_challenge.hex(),
        "pop_signature": r.pop_signature.hex(),
    }


def request_from_json(d: dict[str, Any]) -> SigningRequest:
    return SigningRequest(
        device_id=int(d["device_id"]),
        batch_id=int(d["batch_id"]),
        chip_serial_hex=str(d["chip_serial_hex"]),
        public_key=bytes.fromhex(d["public_key"]),
        pop_challenge=bytes.fromhex(d["pop_challenge"]),
        pop_signature=bytes.fromhex(d["pop_signature"]),
    )


def _retry_or_leave(
    task: Task, result: dict[str, Any], *, countdown: float, signer_waits: int
) -> None:
    """Run ``task`` again in ``countdown`` seconds; if even that cannot be sent (the broker
    is down), leave the device as it is (released, no error): the supervisor re-dispatches
    the running batches once the broker is back."""
    try:
        raise task.retry(countdown=countdown, kwargs={"signer_waits": signer_waits})
    except Retry:
        raise
    except Exception as exc:  # the broker refused the retry message
        log.warning("device %s left for re-dispatch (%s): %s", result["device_id"], exc, result)


def registry_path(settings: Settings) -> str:
    """The registry every verified device is uploaded to (Cloud IoT resource path)."""
    reg = settings.registry
    return f"projects/{reg.project}/locations/{reg.location}/registries/{reg.registry}"


def register_station(app: Celery) -> None:
    """The station PC's task: one device on this child's socket."""

    @app.task(name=PROVISION_TASK, bind=True, acks_late=True, max_retries=None)
    def provision_device(
        self: Task, order: dict[str, Any], signer_waits: int = 0
    ) -> dict[str, Any]:
        """One device on this child's socket (provisioner.socket_task), ordered by the line
        server (``order``: a signed envelope naming the device). A socket waiting for a
        chip tries again every ~2 s while the batch runs; a line server or broker that does
        not answer is waited for with backoff (``signer_waits`` so far), then the device
        fails with its part left in the socket."""
        from provisioner.socket_task import SocketRun

        rt = runtime.current()
        assert rt.station_id is not None and rt.socket is not None, "not a station worker"
        try:
            device_id = _ordered_device(rt.settings, rt.station_id, order)
        except LinkRefusedError as exc:
            log.error("provision order refused: %s", exc)
            return {"ok": False, "outcome": "refused", "detail": str(exc)}
        run = SocketRun(
            rt.settings,
            rt.station_id,
            rt.socket,
            rt.records,
            holder=f"{rt.station_id}:{rt.socket}:{os.getpid()}",
        )
        out = run.run(device_id)
        if out.kind == "wait_chip":
            _retry_or_leave(self, out.as_json(), countdown=2.0, signer_waits=signer_waits)
        elif out.kind == "wait_service":
            if signer_waits < rt.settings.celery.hsm_wait_retries:
                log.warning("device %s waits (try %s): %s", device_id, signer_waits, out.detail)
                _retry_or_leave(
                    self,
                    out.as_json(),
                    countdown=float(min(30, 2**signer_waits)),
                    signer_waits=signer_waits + 1,
                )
            else:
                out = run.fail_waiting(
                    device_id, f"unavailable after {signer_waits + 1} tries: {out.detail}"
                )
        return out.as_json()


def _ordered_device(settings: Settings, station_id: str, order: object) -> int:
    """The device a provision order names, once it checks out as the line server's (the
    certificate pinned at enrollment), for this station, unexpired. A replayed order is
    harmless (a message only says "look at device N"; the records decide)."""
    from provisioner.link.envelope import open_envelope
    from provisioner.link.keys import LINE, fingerprint, pinned_line_certificate, station_party

    line_cert = pinned_line_certificate(settings)

    def line_key(sender: str, kid: str) -> Any:
        if sender != LINE or kid != fingerprint(line_cert):
            raise LinkRefusedError(
                "unknown_sender", f"order refused: not from the line ({sender!r})"
            )
        return line_cert.public_key()

    opened = open_envelope(
        order, task=PROVISION_TASK, recipient=station_party(station_id), key_for=line_key
    )
    device_id = opened.body.get("device")
    if not isinstance(device_id, int):
        raise LinkRefusedError("bad_request", "order refused: no device")
    return device_id


def register_gateway(app: Celery) -> None:
    """The line server's task in a station's namespace: that station's requests."""

    @app.task(name=REQUEST_TASK, bind=True, acks_late=True)
    def station_request(self: Task, message: dict[str, Any]) -> dict[str, Any]:
        rt = runtime.current()
        assert rt.gateway is not None, "not a gateway worker"
        answer: dict[str, Any] = rt.gateway.handle(message, task=self.name)
        return answer


def register(app: Celery) -> None:
    """Register the line server's own tasks on ``app`` (namespace ``line:``)."""

    @app.task(name=SIGN_TASK, acks_late=True)
    def sign_certificate(request: dict[str, Any]) -> dict[str, Any]:
        rt = runtime.current()
        assert rt.signer is not None, "not an hsm worker"
        try:
            req = request_from_json(request)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # audited, answered
            refused = rt.signer.refuse_malformed(f"{type(exc).__name__}: {exc}")
            return {"error": str(refused), "kind": type(refused).__name__}
        # The signer's log lines name the device like the station's do.
        with log_context(batch=req.batch_id, device=req.device_id, chip_serial=req.chip_serial_hex):
            try:
                # Through the group signer: with several requests in flight (a threads
                # pool), they are signed and committed together.
                cert = (rt.sign_group or rt.signer).sign(req)
            except ProvisionerError as exc:
                return {"error": str(exc), "kind": type(exc).__name__}
        return {
            "der": cert.der.hex(),
            "serial_number": format(cert.serial_number, "x"),
            "fingerprint_sha256": cert.fingerprint_sha256,
        }

    @app.task(name=SIGNER_STATUS_TASK)
    def signer_status() -> dict[str, Any]:
        """What the signer holds: the current intermediate and its token's breaker state.
        Operators' commands and the health monitor ask this instead of opening the token
        (they have no PIN); public information only."""
        rt = runtime.current()
        assert rt.signer is not None, "not an hsm worker"
        ca = rt.signer.ca
        breaker = ca.status
        return {
            "ca": ca.name,
            "subject": ca.intermediate_cert.subject.rfc4514_string(),
            "breaker": breaker.state.value,
            "last_error": breaker.last_error,
        }

    @app.task(name=UPLOAD_TASK, bind=True, acks_late=True, max_retries=None)
    def upload_device(self: Task, device_id: int) -> dict[str, Any]:
        rt = runtime.current()
        assert rt.registry is not None, "not a registry worker"
        ledger = DeviceLedger(rt.db, "registry-uploader")
        try:
            dev = pipeline.upload_device(device_id, rt.registry, ledger)
        except RegistryUnavailableError as exc:
            ledger.note_upload_retry(device_id, str(exc))
            retries = self.request.retries
            if retries >= rt.settings.celery.task_retry_max:
                log.warning(
                    "upload of device %s parked after %s tries: %s", device_id, retries + 1, exc
                )
                ledger.park_upload(device_id, f"parked after {retries + 1} tries: {exc}")
                record.upload("parked")
                return {"device_id": device_id, "ok": False, "parked": True, "error": str(exc)}
            record.upload("retry")
            raise self.retry(countdown=backoff_s(retries), exc=exc) from None
        except RegistryError as exc:  # a refusal: retrying the same request cannot help
            log.warning("upload of device %s refused by the registry: %s", device_id, exc)
            ledger.refuse_upload(device_id, f"refused: {exc}")
            record.upload("refused")
            return {"device_id": device_id, "ok": False, "parked": True, "error": str(exc)}
        return {"device_id": device_id, "ok": dev.error is None, "step": dev.step.name}

    from workers.queues import BLOCK_TASK  # here, to keep this task's edit in one place

    @app.task(name=BLOCK_TASK, bind=True, acks_late=True, max_retries=None)
    def block_device(self: Task, device_id: int) -> dict[str, Any]:
        """Block a revoked device in the registry (provisioner.uploads.blocking): paced
        like creates, retried with backoff, then parked for the periodic sync."""
        from provisioner.uploads import blocking

        rt = runtime.current()
        assert rt.registry is not None, "not a registry worker"
        done = blocking.task_attempt(
            rt.db,
            rt.registry,
            device_id,
            self.request.retries,
            rt.settings.celery.task_retry_max,
        )
        if done.retry_in_s is not None:
            raise self.retry(countdown=done.retry_in_s)
        return done.result
