"""Uploads to ClearBlade IoT Core through its own client, ``clearblade-cloud-iot``.

The client is a drop-in for Google's ``iot_v1`` with quirks this adapter absorbs
(research/registry.md):

- it is configured from the environment (``CLEARBLADE_CONFIGURATION``, ``REGISTRY_URL``,
  ``REGISTRY_SYSKEY``, ``REGISTRY_TOKEN``) and reads it when a call is made: the adapter
  sets them in its own process just before each call (never on a command line, never
  logged), from the settings and the token file;
- a client binds to the first registry it sees, so this adapter serves one registry;
- a failed create *returns* the error body, a failed get the raw response, instead of
  raising: the code is
  mapped here (409 -> DeviceAlreadyExists, 404 -> absent, 429/5xx -> retry later, anything
  else -> a refusal a person must read);
- connection failures surface as ``httpx`` errors (the client's transport): retry later.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from provisioner.errors import RegistryError, RegistryUnavailableError
from provisioner.ports import Closeable, DeviceAlreadyExists, RegistryDevice

UPLOAD_FORMAT = "ES256_X509_PEM"
_ENV = ("CLEARBLADE_CONFIGURATION", "REGISTRY_URL", "REGISTRY_SYSKEY", "REGISTRY_TOKEN")


class ClearBladeRegistry(Closeable):
    """One ClearBlade registry, reached with its system key and a registry token."""

    def __init__(
        self,
        url: str,
        project: str,
        location: str,
        registry: str,
        system_key: str,
        token: str,
    ) -> None:
        self.url = url.rstrip("/")
        self.parent = f"projects/{project}/locations/{location}/registries/{registry}"
        self._system_key = system_key
        self._token = token
        self._project = project
        # The admin configuration file the client insists on (it is only read when no
        # registry token is set, which never happens here), written 0600 and removed on close.
        fd, path = tempfile.mkstemp(prefix="clearblade-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(
                {"systemKey": system_key, "token": "unused", "url": self.url, "project": project},
                f,
            )
        self._config_file = Path(path)

    # --- RegistryBackend ------------------------------------------------------------------

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        from clearblade.cloud import iot_v1

        device = iot_v1.Device(
            id=device_id,
            credentials=[{"publicKey": {"format": UPLOAD_FORMAT, "key": certificate_pem}}],
        )
        with self._configured():
            client = iot_v1.DeviceManagerClient()
            out = self._call(
                f"create device {device_id}",
                lambda: client.create_device(
                    request=iot_v1.CreateDeviceRequest(parent=self.parent, device=device)
                ),
            )
        if isinstance(out, dict):
            code = _code(out)
            if code == 409:
                raise DeviceAlreadyExists(device_id)
            raise self._refused(f"create device {device_id}", out)
        return self._device(out, device_id)

    def get_device(self, device_id: str) -> RegistryDevice | None:
        from clearblade.cloud import iot_v1

        with self._configured():
            client = iot_v1.DeviceManagerClient()
            out = self._call(
                f"read device {device_id}",
                lambda: client.get_device(
                    request=iot_v1.GetDeviceRequest(name=f"{self.parent}/devices/{device_id}")
                ),
            )
        if isinstance(out, httpx.Response):  # get returns the raw response on failure
            out = _json(out)
        if isinstance(out, dict):
            if _code(out) == 404:
                return None
            raise self._refused(f"read device {device_id}", out)
        return self._device(out, device_id)

    def block_device(self, device_id: str) -> bool:
        """``update_device`` with ``updateMask=blocked``; like a get, a failure comes back
        as the raw response."""
        from clearblade.cloud import iot_v1

        with self._configured():
            client = iot_v1.DeviceManagerClient()
            out = self._call(
                f"block device {device_id}",
                lambda: client.update_device(
                    request=iot_v1.UpdateDeviceRequest(
                        parent=self.parent,
                        device=iot_v1.Device(id=device_id, blocked=True),
                        updateMask="blocked",
                    )
                ),
            )
        if isinstance(out, httpx.Response):
            out = _json(out)
        if isinstance(out, dict):
            if _code(out) == 404:
                return False
            raise self._refused(f"block device {device_id}", out)
        if not self._device(out, device_id).blocked:
            raise RegistryError(
                f"ClearBlade registry {self.url} answered the block of {device_id} with a "
                "device that is not blocked"
            )
        return True

    def close(self) -> None:
        self._config_file.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"ClearBladeRegistry({self.url!r}, {self.parent!r})"

    # --- internals ------------------------------------------------------------------------

    @contextmanager
    def _configured(self) -> Iterator[None]:
        """The client's configuration, in this process's environment for the call only."""
        saved = {k: os.environ.get(k) for k in _ENV}
        os.environ.update(
            CLEARBLADE_CONFIGURATION=str(self._config_file),
            REGISTRY_URL=self.url,
            REGISTRY_SYSKEY=self._system_key,
            REGISTRY_TOKEN=self._token,
        )
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _call(self, what: str, fn: Any) -> Any:
        try:
            return fn()
        except httpx.TransportError as exc:
            raise RegistryUnavailableError(
                f"ClearBlade registry {self.url} is unreachable ({type(exc).__name__}) while "
                f"trying to {what}; the upload will be retried"
            ) from None

    def _refused(self, what: str, body: dict[str, Any]) -> RegistryError:
        code = _code(body)
        detail = _message(body)
        if code == 429 or (code is not None and code >= 500):
            return RegistryUnavailableError(
                f"ClearBlade registry {self.url} answered {code} to {what} ({detail}); the "
                "upload will be retried"
            )
        return RegistryError(f"ClearBlade registry {self.url} refused to {what}: {code} {detail}")

    def _device(self, dev: Any, device_id: str) -> RegistryDevice:
        pems = []
        for cred in getattr(dev, "credentials", None) or []:
            # dicts when built by us, DeviceCredential objects (with .get) when parsed
            public = cred.get("publicKey") if hasattr(cred, "get") else None
            key = public.get("key") if public is not None and hasattr(public, "get") else None
            if isinstance(key, bytes):
                key = key.decode()
            if isinstance(key, str) and key:
                pems.append(key)
        return RegistryDevice(
            device_id=getattr(dev, "id", None) or device_id,
            num_id=str(getattr(dev, "num_id", "") or ""),
            certificate_pems=tuple(pems),
            blocked=getattr(dev, "blocked", None) is True,
        )


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error" not in body:
        body = {"error": {"code": resp.status_code, "message": resp.text[:200]}}
    return body


def _code(body: dict[str, Any]) -> int | None:
    err = body.get("error", body)
    code = err.get("code") if isinstance(err, dict) else None
    return int(code) if isinstance(code, int | str) and str(code).isdigit() else None


def _message(body: dict[str, Any]) -> str:
    err = body.get("error", body)
    if isinstance(err, dict):
        return str(err.get("status") or err.get("message") or "")[:200]
    return str(err)[:200]
