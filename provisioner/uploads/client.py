"""The upload client: :class:`provisioner.ports.RegistryBackend` over Cloud IoT v1 REST.

It speaks to the built-in registry and to any endpoint with Cloud IoT's paths, JSON and
google.rpc errors. Failures are sorted by what the caller should do next:

- connection errors, timeouts, 429 and 5xx -> RegistryUnavailableError: retry later;
- 409 ALREADY_EXISTS -> DeviceAlreadyExists: read the device back and compare;
- any other refusal -> RegistryError carrying the registry's own message: a person must act.

Messages name the registry URL and the device, never the token (it lives only in the
``Authorization`` header of the reused ``httpx.Client``).
"""

from __future__ import annotations

import functools
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import certifi
import httpx

from provisioner.cloud.tokens import read_token
from provisioner.errors import ConfigError, RegistryError, RegistryUnavailableError
from provisioner.metrics import record
from provisioner.ports import Closeable, DeviceAlreadyExists, RegistryDevice
from provisioner.settings import Settings

UPLOAD_FORMAT = "ES256_X509_PEM"  # ATECC608 keys are P-256; the credential is the certificate
# What each request does, as the ``operation`` label of provisioner_registry_calls_total.
_OPERATION = {"POST": "create", "GET": "get", "PATCH": "block"}
NO_EXPIRY = "1970-01-01T00:00:00Z"  # how Cloud IoT writes "this credential never expires"
# google.cloud.iot.v1.PublicKeyFormat: a registry answering with enum numbers is read too.
_KEY_FORMATS = {1: "RSA_X509_PEM", 2: "ES256_PEM", 3: "RSA_PEM", 4: "ES256_X509_PEM"}


@dataclass(frozen=True)
class DeviceCredential:
    """One entry of a Cloud IoT device's ``credentials`` (at most three): the key or
    certificate the registry accepts JWTs for, until ``expiration_time`` (``NO_EXPIRY``:
    never). Key rotation reads and rewrites the list (:mod:`provisioner.field.rotation`)."""

    format: str
    key: str
    expiration_time: str = NO_EXPIRY

    def to_json(self) -> dict[str, Any]:
        return {
            "publicKey": {"format": self.format, "key": self.key},
            "expirationTime": self.expiration_time,
        }

    @classmethod
    def from_json(cls, item: Any) -> DeviceCredential:
        """One credential as a Cloud IoT registry answers it (KeyError/TypeError if not)."""
        fmt = item["publicKey"]["format"]
        return cls(
            format=_KEY_FORMATS[fmt] if isinstance(fmt, int) else str(fmt),
            key=str(item["publicKey"]["key"]),
            expiration_time=str(item.get("expirationTime") or NO_EXPIRY),
        )


@functools.cache
def _system_trust() -> ssl.SSLContext:
    """The default verifying TLS context, built once per process: loading the CA bundle
    costs about 28 ms, which a client made per field enrollment paid every time. Immutable
    once built (nothing loads further certificates into it)."""
    return ssl.create_default_context(cafile=certifi.where())


class CloudIotRegistry(Closeable):
    """One registry (``projects/{project}/locations/{location}/registries/{registry}``) at
    ``base_url``. Holds one HTTP connection pool: reuse the object, then :meth:`close` it."""

    def __init__(
        self,
        base_url: str,
        project: str,
        location: str,
        registry: str,
        token: str,
        timeout_s: float = 10.0,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(
                f"registry.url {base_url!r} must be an http:// or https:// URL with a host"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.parent = "/".join(
            f"{kind}/{quote(value, safe='')}"
            for kind, value in (
                ("projects", project),
                ("locations", location),
                ("registries", registry),
            )
        )
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(timeout_s),
            verify=_system_trust(),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudIotRegistry:
        """The configured registry, authenticated with the token in ``registry.token_file``
        (ConfigError, saying how to create it, when that file is missing)."""
        r = settings.registry
        token = read_token(settings.registry_token_file)
        return cls(settings.registry_url, r.project, r.location, r.registry, token, r.timeout_s)

    # --- RegistryBackend --------------------------------------------------------------------

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        """Create ``device_id`` with the certificate as its only credential."""
        body = {
            "id": device_id,
            "credentials": [{"publicKey": {"format": UPLOAD_FORMAT, "key": certificate_pem}}],
        }
        resp = self._send("POST", "/devices", body)
        if resp.status_code == 409:
            raise DeviceAlreadyExists(device_id)
        if resp.status_code != 200:
            raise self._refused(f"create device {device_id}", resp)
        return self._device(resp)

    def get_device(self, device_id: str) -> RegistryDevice | None:
        """The device by id (or numId); None when the registry has no such device."""
        resp = self._send("GET", f"/devices/{quote(device_id, safe='')}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._refused(f"read device {device_id}", resp)
        return self._device(resp)

    def block_device(self, device_id: str) -> bool:
        """PATCH the device with ``updateMask=blocked``: Cloud IoT then refuses its
        connections (the certificate stays, for the record)."""
        resp = self._send(
            "PATCH",
            f"/devices/{quote(device_id, safe='')}?updateMask=blocked",
            {"blocked": True},
        )
        if resp.status_code == 404:
            return False
        if resp.status_code != 200:
            raise self._refused(f"block device {device_id}", resp)
        if not self._device(resp).blocked:
            raise RegistryError(
                f"registry {self.base_url} answered the block of {device_id} with a device "
                "that is not blocked"
            )
        return True

    # --- key rotation (provisioner.field.rotation) ------------------------------------------

    def registry_certificate_count(self) -> int:
        """How many CA certificates the registry holds (``DeviceRegistry.credentials``).
        With any, Cloud IoT accepts only device certificates those CAs signed, never a bare
        public key."""
        resp = self._send("GET", "", operation="get_registry", retry_hint=_ROTATION_RETRY)
        if resp.status_code != 200:
            raise self._refused(f"read registry {self.parent}", resp)
        try:
            creds = resp.json().get("credentials") or []
            return len(creds) if isinstance(creds, list) else 0
        except (ValueError, AttributeError):
            raise RegistryError(
                f"registry {self.base_url} answered GET {self.parent} with a body that is not "
                "a Cloud IoT DeviceRegistry"
            ) from None

    def device_credentials(self, device_id: str) -> tuple[DeviceCredential, ...] | None:
        """The device's credentials with their expiry; None when it is not in the registry."""
        resp = self._send(
            "GET", f"/devices/{quote(device_id, safe='')}", retry_hint=_ROTATION_RETRY
        )
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise self._refused(f"read device {device_id}", resp)
        return self._credentials(resp)

    def patch_device_credentials(
        self, device_id: str, credentials: tuple[DeviceCredential, ...]
    ) -> tuple[DeviceCredential, ...]:
        """Replace the device's credentials (PATCH ``updateMask=credentials``, the whole list
        as Cloud IoT takes it) and return what the registry now holds."""
        resp = self._send(
            "PATCH",
            f"/devices/{quote(device_id, safe='')}?updateMask=credentials",
            {"credentials": [c.to_json() for c in credentials]},
            operation="credentials",
            retry_hint=_ROTATION_RETRY,
        )
        if resp.status_code != 200:
            raise self._refused(f"update the credentials of device {device_id}", resp)
        return self._credentials(resp)

    def modify_config(self, device_id: str, data: bytes) -> int:
        """``modifyCloudToDeviceConfig`` (no version check): the registry delivers it to the
        device on its config topic. Returns the new config version (the demo sets one)."""
        import base64

        resp = self._send(
            "POST",
            f"/devices/{quote(device_id, safe='')}:modifyCloudToDeviceConfig",
            {"versionToUpdate": "0", "binaryData": base64.b64encode(data).decode()},
            operation="config",
            retry_hint="try again when it answers",
        )
        if resp.status_code != 200:
            raise self._refused(f"set the config of device {device_id}", resp)
        try:
            return int(resp.json()["version"])
        except (ValueError, KeyError, TypeError):
            raise RegistryError(
                f"registry {self.base_url} answered modifyCloudToDeviceConfig with a body that "
                "is not a Cloud IoT DeviceConfig"
            ) from None

    # --- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"CloudIotRegistry({self.base_url}/v1/{self.parent})"

    # --- plumbing ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        operation: str | None = None,
        retry_hint: str = "the upload will be retried",
    ) -> httpx.Response:
        url = f"/v1/{self.parent}{path}"
        where = f"registry {self.base_url}"
        operation = operation or _OPERATION.get(method, method.lower())
        try:
            resp = self._http.request(method, url, json=json)
        except httpx.TimeoutException:
            record.registry_call("cloudiot", operation, None)
            raise RegistryUnavailableError(
                f"{where} did not answer within {self.timeout_s:g} s; {retry_hint} "
                "(raise registry.timeout_s if it is merely slow)"
            ) from None
        except httpx.TransportError as exc:
            record.registry_call("cloudiot", operation, None)
            raise RegistryUnavailableError(
                f"{where} is unreachable ({type(exc).__name__}); {retry_hint}: "
                "is the registry running?"
            ) from None
        record.registry_call("cloudiot", operation, resp.status_code)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RegistryUnavailableError(f"{where} answered {_describe(resp)}; {retry_hint}")
        return resp

    def _refused(self, what: str, resp: httpx.Response) -> RegistryError:
        hint = ""
        if resp.status_code in (401, 403):
            hint = ": check that registry.token_file holds this registry's upload token"
        return RegistryError(f"registry {self.base_url} refused to {what}: {_describe(resp)}{hint}")

    def _credentials(self, resp: httpx.Response) -> tuple[DeviceCredential, ...]:
        try:
            return tuple(
                DeviceCredential.from_json(c) for c in resp.json().get("credentials") or []
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"registry {self.base_url} answered {resp.request.method} "
                f"{resp.request.url.path} with credentials that are not Cloud IoT's"
            ) from None

    def _device(self, resp: httpx.Response) -> RegistryDevice:
        try:
            data = resp.json()
            return RegistryDevice(
                device_id=str(data["id"]),
                num_id=str(data["numId"]),
                certificate_pems=tuple(
                    str(c["publicKey"]["key"]) for c in data.get("credentials") or []
                ),
                blocked=data.get("blocked") is True,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise RegistryError(
                f"registry {self.base_url} answered {resp.request.method} "
                f"{resp.request.url.path} with a body that is not a Cloud IoT Device"
            ) from None


_ROTATION_RETRY = "run the rotation again when it answers (it resumes where it stopped)"


def _describe(resp: httpx.Response) -> str:
    """``409 ALREADY_EXISTS: <message>`` from a google.rpc body, or the bare status line."""
    status = f"{resp.status_code} {resp.reason_phrase}".strip()
    try:
        err = resp.json()["error"]
        return f"{resp.status_code} {err.get('status') or resp.reason_phrase}: {err['message']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return status
