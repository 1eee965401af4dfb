"""Uploads to AWS IoT Core through boto3: one *thing* per device, its certificate as principal.

AWS has no single "create device" call, so one upload is four idempotent steps, ordered so
that a crash between any two leaves something the next attempt completes rather than
duplicates (research/registry.md):

1. ``RegisterCertificate`` with the intermediate as ``caCertificatePem`` (the CA itself is
   registered once, when the backend connects: ``RegisterCACertificate``). Registering the
   same certificate again answers ResourceAlreadyExists, which names the existing one.
2. ``CreateThing`` named after the chip, with the certificate's SHA-256 fingerprint as a
   thing attribute. A thing that already exists with the *same* fingerprint is an earlier,
   interrupted attempt of ours and is completed; one with another fingerprint (or none) is
   someone else's device: :class:`~provisioner.ports.DeviceAlreadyExists`, and the pipeline
   compares certificates and records a conflict, never overwriting.
3. ``AttachThingPrincipal`` (attaching twice is a no-op).
4. ``AttachPolicy`` when ``registry.aws_policy`` names one (idempotent too).

A revoked device is blocked by setting every certificate attached to its thing to REVOKED
(UpdateCertificate): AWS IoT has no per-thing switch, and a revoked certificate can never be
made active again.

Credentials come from boto3's own chain (environment, shared files, instance role); none
are in the settings, argv or logs. botocore's retries are off: throttling, 5xx and network
errors become :class:`~provisioner.errors.RegistryUnavailableError`, and the upload task's
bounded retries, the pacer and store-and-forward handle them like any other registry's.

Tested only against moto's server (``moto[server]``), which implements these calls loosely
(no signature or CA-chain checks, no SNI); not against AWS itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, NoReturn

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.errors import RegistryError, RegistryUnavailableError
from provisioner.ports import Closeable, DeviceAlreadyExists, RegistryDevice

# The thing attribute that ties a thing to the certificate it was made for.
FINGERPRINT_ATTRIBUTE = "certSha256"
_RETRY_LATER = {
    "ThrottlingException",
    "ServiceUnavailableException",
    "InternalFailureException",
    "InternalException",
    "LimitExceededException",
    "RequestTimeoutException",
}


class AwsIotRegistry(Closeable):
    """AWS IoT Core in one region, with the intermediate CA registered there."""

    def __init__(self, client: Any, ca_pem: str, *, policy_name: str | None, where: str) -> None:
        self._iot = client
        self._ca_pem = ca_pem
        self._policy = policy_name
        self.where = where

    @classmethod
    def connect(
        cls,
        region: str,
        ca_pem: str,
        *,
        endpoint_url: str | None = None,
        policy_name: str | None = None,
        timeout_s: float = 10.0,
    ) -> AwsIotRegistry:
        """A client for ``region`` (or ``endpoint_url``) with the CA registered.

        The CA is registered once: if a CA with the same fingerprint is already there (for
        example registered by an admin in DEFAULT mode with a verification certificate),
        it is used as it is; otherwise it is registered active in SNI_ONLY mode, which
        needs no proof signed by the CA key (that key never leaves the HSM, and upload
        workers have no HSM access).
        """
        client = boto3.client(
            "iot",
            region_name=region,
            endpoint_url=endpoint_url,
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
            ),
        )
        reg = cls(client, ca_pem, policy_name=policy_name, where=endpoint_url or region)
        reg._ensure_ca()
        return reg

    # --- RegistryBackend ------------------------------------------------------------------

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        fingerprint = certificate_fingerprint(certificate_pem)
        existing = self._thing(device_id)
        if existing is not None:
            attrs = existing.get("attributes") or {}
            if attrs.get(FINGERPRINT_ATTRIBUTE) != fingerprint:
                raise DeviceAlreadyExists(device_id)
        cert_arn = self._register_certificate(device_id, certificate_pem)
        if existing is None:
            self._call(
                f"create thing {device_id}",
                lambda: self._iot.create_thing(
                    thingName=device_id,
                    attributePayload={"attributes": {FINGERPRINT_ATTRIBUTE: fingerprint}},
                ),
                on={"ResourceAlreadyExistsException": _raise(DeviceAlreadyExists(device_id))},
            )
            existing = self._thing(device_id)
            if existing is None:
                raise RegistryUnavailableError(
                    f"AWS IoT ({self.where}) created thing {device_id} but cannot read it "
                    "back yet; the upload will be retried"
                )
        self._call(
            f"attach the certificate to thing {device_id}",
            lambda: self._iot.attach_thing_principal(thingName=device_id, principal=cert_arn),
        )
        if self._policy:
            policy = self._policy
            self._call(
                f"attach policy {policy} to the certificate of {device_id}",
                lambda: self._iot.attach_policy(policyName=policy, target=cert_arn),
            )
        return RegistryDevice(
            device_id=device_id,
            num_id=str(existing.get("thingId") or ""),
            certificate_pems=(certificate_pem,),
        )

    def get_device(self, device_id: str) -> RegistryDevice | None:
        thing = self._thing(device_id)
        if thing is None:
            return None
        pems: list[str] = []
        statuses: list[str] = []
        for desc in self._certificates(device_id):
            pem = desc.get("certificatePem")
            if pem:
                pems.append(pem)
            statuses.append(str(desc.get("status")))
        return RegistryDevice(
            device_id=device_id,
            num_id=str(thing.get("thingId") or ""),
            certificate_pems=tuple(pems),
            blocked=bool(statuses) and "ACTIVE" not in statuses,
        )

    def block_device(self, device_id: str) -> bool:
        """UpdateCertificate ``newStatus=REVOKED`` for every certificate attached to the
        thing: AWS IoT then refuses (and within minutes disconnects) anything using them. A
        certificate already revoked is left alone (AWS refuses to leave REVOKED)."""
        if self._thing(device_id) is None:
            return False
        for desc in self._certificates(device_id):
            if desc.get("status") == "REVOKED":
                continue
            cert_id = str(desc.get("certificateId"))
            self._call(
                f"revoke certificate {cert_id} of {device_id}",
                partial(self._iot.update_certificate, certificateId=cert_id, newStatus="REVOKED"),
            )
        return True

    def _certificates(self, device_id: str) -> list[dict[str, Any]]:
        """The descriptions of the certificates attached to the thing."""
        out = self._call(
            f"list the principals of thing {device_id}",
            lambda: self._iot.list_thing_principals(thingName=device_id),
        )
        found: list[dict[str, Any]] = []
        for arn in out.get("principals", []):
            if ":cert/" not in arn:
                continue
            cert_id = arn.rsplit("/", 1)[1]
            desc = self._call(
                f"read certificate {cert_id}",
                partial(self._iot.describe_certificate, certificateId=cert_id),
            )
            found.append(dict(desc.get("certificateDescription", {})))
        return found

    def close(self) -> None:
        self._iot.close()

    def __repr__(self) -> str:
        return f"AwsIotRegistry({self.where!r})"

    # --- internals ------------------------------------------------------------------------

    def _ensure_ca(self) -> None:
        # AWS names a certificate by the SHA-256 of its DER: the CA is looked up directly.
        ca_id = certificate_fingerprint(self._ca_pem)
        desc = self._call(
            "read the registered CA certificate",
            lambda: self._iot.describe_ca_certificate(certificateId=ca_id),
            on={"ResourceNotFoundException": _none},
        )
        if desc is not None:
            status = desc.get("certificateDescription", {}).get("status")
            if status != "ACTIVE":
                raise RegistryError(
                    f"AWS IoT ({self.where}) holds the intermediate CA certificate {ca_id} "
                    f"with status {status}; an admin must activate it (UpdateCACertificate) "
                    "before devices can be registered"
                )
            return
        self._call(
            "register the intermediate CA certificate",
            lambda: self._iot.register_ca_certificate(
                caCertificate=self._ca_pem,
                setAsActive=True,
                allowAutoRegistration=False,
                certificateMode="SNI_ONLY",
            ),
            # An earlier registration whose answer was lost landed after the lookup.
            on={"ResourceAlreadyExistsException": _none},
        )

    def _register_certificate(self, device_id: str, pem: str) -> str:
        what = f"register the certificate of {device_id}"

        def already_registered(exc: ClientError) -> dict[str, Any]:
            """AWS names the existing certificate in the error; an older answer may only
            carry its id."""
            arn = exc.response.get("resourceArn")
            if isinstance(arn, str) and arn:
                return {"certificateArn": arn}
            cert_id = exc.response.get("resourceId")
            if not (isinstance(cert_id, str) and cert_id):
                raise self._mapped(what, exc)
            desc = self._call(
                f"read the certificate of {device_id}",
                lambda: self._iot.describe_certificate(certificateId=cert_id),
            )
            return {"certificateArn": desc["certificateDescription"]["certificateArn"]}

        out = self._call(
            what,
            lambda: self._iot.register_certificate(
                certificatePem=pem, caCertificatePem=self._ca_pem, status="ACTIVE"
            ),
            on={"ResourceAlreadyExistsException": already_registered},
        )
        return str(out["certificateArn"])

    def _thing(self, device_id: str) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self._call(
            f"read thing {device_id}",
            lambda: self._iot.describe_thing(thingName=device_id),
            on={"ResourceNotFoundException": _none},
        )
        return out

    def _call(
        self,
        what: str,
        fn: Callable[[], Any],
        *,
        on: Mapping[str, Callable[[ClientError], Any]] | None = None,
    ) -> Any:
        """``fn()``, with AWS's errors mapped (:meth:`_mapped`), except the error codes in
        ``on``, whose handler answers instead (or raises its own error)."""
        try:
            return fn()
        except ClientError as exc:
            handler = (on or {}).get(_code(exc))
            if handler is not None:
                return handler(exc)
            raise self._mapped(what, exc) from None
        except BotoCoreError as exc:
            raise self._mapped(what, exc) from None

    def _mapped(self, what: str, exc: Exception) -> RegistryError:
        """A registry error that names the call and AWS's error code, never credentials."""
        if isinstance(exc, NoCredentialsError):
            return RegistryError(
                f"AWS IoT ({self.where}): no AWS credentials found to {what}; configure them "
                "for the worker through boto3's usual sources (environment, shared "
                "credentials file, instance role)"
            )
        if isinstance(exc, ClientError):
            code = _code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if code in _RETRY_LATER or status == 429 or status >= 500:
                return RegistryUnavailableError(
                    f"AWS IoT ({self.where}) answered {code} ({status}) to {what}; the "
                    "upload will be retried"
                )
            message = str(exc.response.get("Error", {}).get("Message", ""))[:200]
            return RegistryError(f"AWS IoT ({self.where}) refused to {what}: {code} {message}")
        return RegistryUnavailableError(
            f"AWS IoT ({self.where}) is unreachable ({type(exc).__name__}) while trying to "
            f"{what}; the upload will be retried"
        )


def _none(_: ClientError) -> None:
    return None


def _raise(error: Exception) -> Callable[[ClientError], NoReturn]:
    def handler(_: ClientError) -> NoReturn:
        raise error from None

    return handler


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _der(pem: str) -> bytes:
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def certificate_fingerprint(pem: str) -> str:
    """SHA-256 of the certificate's DER, hex: the value of the thing attribute."""
    return hashlib.sha256(_der(pem)).hexdigest()
