"""A station's records, kept by the line server: each call is a signed request to the
station's gateway on the line server, through the broker, and a signed answer.

Stands where :class:`~provisioner.link.records.LocalRecords` stands on the line server, so
the socket task and the pipeline run unchanged on a station PC that holds no database URL
and no PIN. A call that gets no answer raises ServiceUnavailableError (the socket task waits
and tries again; the records say what was done); a refusal raises what the line raised.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from provisioner import socket_state
from provisioner.ca.chain import ChainMaterial
from provisioner.db.models import BatchMode, Device, PartAction, Step
from provisioner.errors import LinkRefusedError, ServiceUnavailableError, rebuilt
from provisioner.link import wire
from provisioner.link.envelope import open_envelope, seal
from provisioner.link.keys import (
    LINE,
    SigningKey,
    fingerprint,
    pinned_line_certificate,
    station_key,
)
from provisioner.link.records import ChipOwner
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings

Transport = Callable[[dict[str, Any], float], object]
"""Delivers a sealed request to the line and returns its sealed answer (or raises
ServiceUnavailableError): :func:`celery_transport` over the broker; tests may hand the
request to a gateway in the same process."""


# What each request is about, for the operator reading a socket's state.
_WHAT = {
    "sign": "the certificate",
    "show": "the socket's state",
    "identify": "recording the chip's serial",
    "record_key": "recording the key",
    "record_pop": "recording the proof of possession",
    "record_written": "recording the certificate written",
    "record_verified": "recording the read-back",
    "record_factory": "recording the part's certificates",
    "accept_factory": "accepting the part's certificate",
}


def celery_transport(app: Celery) -> Transport:
    """Requests as tasks on this station's ``gateway`` queue, answers as their results."""

    def send(request: dict[str, Any], timeout: float) -> object:
        op = request.get("body", {}).get("op")
        try:
            res = app.send_task(
                wire.REQUEST_TASK, args=[request], queue=wire.GATEWAY_QUEUE, expires=timeout
            )
            try:
                return res.get(timeout=timeout, disable_sync_subtasks=False)
            finally:
                res.forget()
        except CeleryTimeoutError:
            raise ServiceUnavailableError(
                f"the line server did not answer within {timeout:.0f}s ({_WHAT.get(op, op)}): "
                "is it running, and this station's gateway (`provisioner services status` "
                "there)?"
            ) from None
        except (KombuOperationalError, RedisError, OSError) as exc:
            raise ServiceUnavailableError(
                f"the broker was lost while asking the line server ({type(exc).__name__}): "
                "is the line server reachable?"
            ) from None

    return send


class RemoteRecords:
    """The line's records for one socket of this station, over the broker."""

    def __init__(
        self,
        send: Transport | Celery,
        key: SigningKey,
        line_certificate: x509.Certificate,
        socket: int,
        *,
        timeout_s: float,
        sign_timeout_s: float,
    ) -> None:
        self.send = celery_transport(send) if isinstance(send, Celery) else send
        self.key = key
        self.socket = socket
        self.timeout_s = timeout_s
        self.sign_timeout_s = sign_timeout_s
        line_public = line_certificate.public_key()
        assert isinstance(line_public, ec.EllipticCurvePublicKey)
        self._line_public = line_public
        self._line_kid = fingerprint(line_certificate)
        self._chain: ChainMaterial | None = None
        # The mode and part of the last device loaded, as the line's answer carried them
        # (device id, mode, part): the socket task asks them right after loading it.
        self._mode: tuple[int, BatchMode, str | None] | None = None

    # --- the call -------------------------------------------------------------------

    @classmethod
    def of_station(
        cls, send: Transport | Celery, settings: Settings, station_id: str, socket: int
    ) -> RemoteRecords:
        """Station ``station_id``'s records for ``socket``, with this PC's identity (its
        key and the line certificate it pinned) and the configured timeouts."""
        return cls(
            send,
            station_key(settings, station_id),
            pinned_line_certificate(settings),
            socket,
            timeout_s=settings.celery.link_timeout_s,
            sign_timeout_s=settings.celery.sign_timeout_s + 15,
        )

    def _line_key(self, sender: str, kid: str) -> ec.EllipticCurvePublicKey:
        if sender != LINE or kid != self._line_kid:
            raise LinkRefusedError(
                "unknown_sender",
                f"answer refused: not signed by the line server this station enrolled with "
                f"({sender!r})",
            )
        return self._line_public

    def call(self, op: str, args: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        """Send one request and return the line's result (or raise its refusal)."""
        timeout = timeout_s or self.timeout_s
        request = seal(
            self.key.key,
            kid=self.key.kid,
            task=wire.REQUEST_TASK,
            sender=self.key.party,
            recipient=LINE,
            body={"op": op, "socket": self.socket, "args": args},
            ttl_s=wire.REQUEST_TTL_S,
        )
        answer = self.send(request, timeout)
        reply = open_envelope(
            answer, task=wire.REPLY, recipient=self.key.party, key_for=self._line_key
        )
        if reply.body.get("in_reply_to") != request["nonce"]:
            raise LinkRefusedError("wrong_reply", "answer refused: it answers another request")
        if "error" in reply.body:
            message = str(reply.body["error"])
            if reply.body.get("kind") == "LinkRefusedError":
                raise LinkRefusedError(str(reply.body.get("reason", "refused")), message)
            raise rebuilt(reply.body.get("kind"), message)
        return reply.body.get("result")

    def _device(self, op: str, device_id: int, **args: Any) -> Device:
        return wire.device_from_json(self.call(op, {"device": device_id, **args}))

    # --- StationLedger --------------------------------------------------------------

    def load(self, device_id: int) -> Device:
        """The device as the line records it. The answer also carries its batch's mode and
        part (a line server of this version), kept for :meth:`batch_mode`."""
        out = self.call("load", {"device": device_id})
        if isinstance(out, dict) and "mode" in out:
            part = out.get("part")
            mode = BatchMode(str(out["mode"]))
            self._mode = (device_id, mode, None if part is None else str(part))
        return wire.device_from_json(out)

    def identify(self, device_id: int, serial_hex: str, revision_hex: str, locator: str) -> Device:
        return self._device(
            "identify", device_id, serial=serial_hex, revision=revision_hex, locator=locator
        )

    def record_key(self, device_id: int, point: bytes) -> Device:
        return self._device("record_key", device_id, point=point.hex())

    def challenge(self, device_id: int) -> bytes:
        return bytes.fromhex(self.call("challenge", {"device": device_id}))

    def record_pop(self, device_id: int, challenge: bytes, signature: bytes) -> Device:
        return self._device(
            "record_pop", device_id, challenge=challenge.hex(), signature=signature.hex()
        )

    def chip_chain(self) -> ChainMaterial:
        """The line's chain material, asked once and again after the line changed its
        intermediate (a certificate it issued is not the cached intermediate's)."""
        if self._chain is None:
            self._chain = ChainMaterial.from_json(self.call("chip_chain", {}))
        return self._chain

    def _follow(self, cert: IssuedCertificate) -> IssuedCertificate:
        if self._chain is not None:
            try:
                x509.load_der_x509_certificate(cert.der).verify_directly_issued_by(
                    self._chain.intermediate
                )
            except (ValueError, TypeError, InvalidSignature):
                self._chain = None  # rotated: asked again when the chip needs it
        return cert

    def sign(self, request: SigningRequest) -> IssuedCertificate:
        out = self.call(
            "sign",
            {
                "device": request.device_id,
                "public_key": request.public_key.hex(),
                "challenge": request.pop_challenge.hex(),
                "signature": request.pop_signature.hex(),
            },
            timeout_s=self.sign_timeout_s,
        )
        return self._follow(wire.cert_from_json(out))

    def certificate(self, device_id: int) -> IssuedCertificate:
        return self._follow(wire.cert_from_json(self.call("certificate", {"device": device_id})))

    def record_written(self, device_id: int, fingerprint: str) -> Device:
        return self._device("record_written", device_id, fingerprint=fingerprint)

    def record_verified(self, device_id: int, read_back: bytes) -> Device:
        return self._device("record_verified", device_id, read_back=read_back.hex())

    # --- FactoryLedger (pre-provisioned parts) ---------------------------------------

    def batch_mode(self, device_id: int) -> tuple[BatchMode, str | None]:
        """The device's batch's mode and part: from the last ``load`` of this device (a
        batch's mode never changes), else asked of the line (an older line server)."""
        if self._mode is not None and self._mode[0] == device_id:
            return self._mode[1], self._mode[2]
        out = self.call("batch_mode", {"device": device_id})
        part = out.get("part")
        return BatchMode(str(out["mode"])), None if part is None else str(part)

    def manufacturer_root(self) -> bytes:
        """The root the line verifies parts against (public; the line checks again)."""
        return str(self.call("manufacturer_root", {})).encode()

    def record_factory_certificates(
        self, device_id: int, kind: str, device_der: bytes, signer_der: bytes
    ) -> Device:
        return self._device(
            "record_factory",
            device_id,
            kind=kind,
            device_der=device_der.hex(),
            signer_der=signer_der.hex(),
        )

    def accept_factory_certificate(self, device_id: int) -> Device:
        return self._device("accept_factory", device_id)

    # --- the socket task's ----------------------------------------------------------

    def claim(self, device_id: int, holder: str, lease_s: float) -> bool:
        args = {"device": device_id, "holder": holder, "lease_s": lease_s}
        return bool(self.call("claim", args))

    def take_over(self, device_id: int, dead_holder: str, holder: str, lease_s: float) -> bool:
        args = {"device": device_id, "dead_holder": dead_holder, "holder": holder}
        return bool(self.call("take_over", {**args, "lease_s": lease_s}))

    def release(self, device_id: int, holder: str) -> None:
        self.call("release", {"device": device_id, "holder": holder})

    def fail(
        self,
        device_id: int,
        error: str,
        action: PartAction = PartAction.REJECT,
        *,
        incident: str | None = None,
    ) -> None:
        args = {"device": device_id, "error": error, "action": action.value}
        self.call("fail", args if incident is None else {**args, "incident": incident})

    def gate(self, device_id: int, step: Step, *, announce: bool) -> bool:
        args = {"device": device_id, "step": int(step), "announce": announce}
        return bool(self.call("gate", args))

    def chip_owner(self, serial_hex: str) -> ChipOwner | None:
        out = self.call("chip_owner", {"serial": serial_hex})
        return None if out is None else ChipOwner(int(out["device"]), Step(int(out["step"])))

    def show(self, state: socket_state.State, device_id: int | None, detail: str) -> None:
        if device_id is not None:  # a socket row is always about one of this station's devices
            self.call("show", {"device": device_id, "state": state, "detail": detail})

    def resume(self) -> int:
        """Ask the line to send this station the work of its running batches again (after
        the station's worker started or restarted); returns how many devices it sent."""
        return int(self.call("resume", {}))

    def let_go(self, device_id: int) -> None:
        self.call("let_go", {"device": device_id})
