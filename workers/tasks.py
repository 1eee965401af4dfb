"""Thin Celery adapters around :mod:`provisioner.pipeline` and the signing service.

Each task re-reads the device from the database and the pipeline skips completed steps, so
every task here may run twice safely: ``acks_late`` means a task whose worker died is
delivered again rather than lost.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.exceptions import TimeoutError as CeleryTimeoutError

from provisioner import pipeline
from provisioner.errors import (
    CaNotInitialisedError,
    HsmBusyError,
    HsmError,
    HsmUnavailableError,
    NotFoundError,
    PolicyViolationError,
    ProvisionerError,
    RegistryError,
    RegistryUnavailableError,
    ServiceUnavailableError,
)
from provisioner.ledger import DeviceLedger
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.registry.ratelimit import backoff_s
from workers import runtime
from workers.queues import (
    HSM_QUEUE,
    PROVISION_TASK,
    REGISTRY_QUEUE,
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
        res = self.app.send_task(
            SIGN_TASK, args=[request_to_json(request)], queue=HSM_QUEUE, expires=self.timeout_s
        )
        try:
            out = res.get(timeout=self.timeout_s, disable_sync_subtasks=False)
        except CeleryTimeoutError:
            res.revoke()
            raise ServiceUnavailableError(
                f"the signer did not answer within {self.timeout_s:.0f}s: is the hsm worker "
                "running (`provisioner services run`)?"
            ) from None
        if "error" in out:
            kind = _REMOTE_ERRORS.get(out.get("kind", ""), ProvisionerError)
            raise kind(out["error"])
        return IssuedCertificate(
            der=bytes.fromhex(out["der"]),
            serial_number=int(out["serial_number"], 16),
            fingerprint_sha256=out["fingerprint_sha256"],
        )


# Errors the signer may report, rebuilt with their type on the station's side.
_REMOTE_ERRORS: dict[str, type[ProvisionerError]] = {
    cls.__name__: cls
    for cls in (
        PolicyViolationError,
        HsmError,
        HsmUnavailableError,
        HsmBusyError,
        CaNotInitialisedError,
        NotFoundError,
    )
}


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


def register(app: Celery) -> None:
    """Register the product's tasks on ``app``."""

    @app.task(name=PROVISION_TASK, bind=True, acks_late=True, max_retries=None)
    def provision_device(self: Task, device_id: int) -> dict[str, Any]:
        from provisioner.station import open_socket

        rt = runtime.current()
        assert rt.station_id is not None and rt.socket is not None, "not a station worker"
        ledger = DeviceLedger(rt.engine, f"station:{rt.station_id}", rt.station_id, rt.socket)
        registry = rt.settings.registry
        try:
            with open_socket(rt.settings, rt.station_id, rt.socket, ledger.load(device_id)) as chip:
                dev = pipeline.provision_device(
                    device_id,
                    chip,
                    RemoteSigner(app, rt.settings.celery.sign_timeout_s),
                    ledger,
                    registry=f"projects/{registry.project}/locations/{registry.location}"
                    f"/registries/{registry.registry}",
                )
        except (HsmUnavailableError, HsmBusyError) as exc:
            # The signer stopped (token lost) or is saturated: the chip stays in its socket
            # and the device waits at its step, without an error, until the signer is back.
            retries = self.request.retries
            if retries < rt.settings.celery.hsm_wait_retries:
                log.warning("device %s waits for the signer (try %s): %s", device_id, retries, exc)
                raise self.retry(countdown=min(30, 2**retries), exc=exc) from None
            ledger.fail(device_id, f"signer unavailable after {retries + 1} tries: {exc}")
            return {"device_id": device_id, "ok": False, "error": str(exc)}
        except ProvisionerError as exc:
            log.warning("device %s failed: %s", device_id, exc)
            ledger.fail(device_id, str(exc))
            return {"device_id": device_id, "ok": False, "error": str(exc)}
        app.send_task(UPLOAD_TASK, args=[device_id], queue=REGISTRY_QUEUE)
        return {"device_id": device_id, "ok": True, "step": dev.step.name}

    @app.task(name=SIGN_TASK, acks_late=True)
    def sign_certificate(request: dict[str, Any]) -> dict[str, Any]:
        rt = runtime.current()
        assert rt.signer is not None, "not an hsm worker"
        try:
            cert = rt.signer.sign(request_from_json(request))
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
        ledger = DeviceLedger(rt.engine, "registry-uploader")
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
                return {"device_id": device_id, "ok": False, "parked": True, "error": str(exc)}
            raise self.retry(countdown=backoff_s(retries), exc=exc) from None
        except RegistryError as exc:  # a refusal: retrying the same request cannot help
            log.warning("upload of device %s refused by the registry: %s", device_id, exc)
            ledger.refuse_upload(device_id, f"refused: {exc}")
            return {"device_id": device_id, "ok": False, "parked": True, "error": str(exc)}
        return {"device_id": device_id, "ok": dev.error is None, "step": dev.step.name}
