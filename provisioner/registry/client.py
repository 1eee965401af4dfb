"""Uploads to a Cloud IoT Core v1 REST endpoint (the built-in registry, or a compatible one).

Implements :class:`provisioner.ports.RegistryBackend`. Transient failures (connection
errors, timeouts, 5xx, 429) raise RegistryUnavailableError so the caller retries later;
409 raises DeviceAlreadyExists so the caller can compare instead of overwriting. Error
messages name the URL, never the token.
"""

from __future__ import annotations

from typing import Any

import httpx

from provisioner.errors import RegistryError, RegistryUnavailableError
from provisioner.ports import DeviceAlreadyExists, RegistryDevice
from provisioner.registry.tokens import read_token
from provisioner.settings import Settings


class CloudIotRegistry:
    def __init__(
        self,
        base_url: str,
        project: str,
        location: str,
        registry: str,
        token: str,
        timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.parent = f"projects/{project}/locations/{location}/registries/{registry}"
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> CloudIotRegistry:
        r = settings.registry
        return cls(
            r.url,
            r.project,
            r.location,
            r.registry,
            read_token(settings.registry_token_file),
            r.timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"CloudIotRegistry({self.base_url}/v1/{self.parent})"

    def _call(self, method: str, path: str, json: Any = None) -> httpx.Response:
        url = f"/v1/{self.parent}{path}"
        try:
            resp = self._http.request(method, url, json=json)
        except httpx.TimeoutException:
            raise RegistryUnavailableError(f"registry {self.base_url} timed out") from None
        except httpx.TransportError as exc:
            raise RegistryUnavailableError(
                f"registry {self.base_url} is unreachable ({type(exc).__name__})"
            ) from None
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RegistryUnavailableError(
                f"registry {self.base_url} answered {resp.status_code} {_message(resp)}"
            )
        return resp

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        body = {
            "id": device_id,
            "credentials": [{"publicKey": {"format": "ES256_X509_PEM", "key": certificate_pem}}],
        }
        resp = self._call("POST", "/devices", body)
        if resp.status_code == 409:
            raise DeviceAlreadyExists(device_id)
        if resp.status_code != 200:
            raise RegistryError(
                f"registry refused device {device_id}: {resp.status_code} {_message(resp)}"
            )
        return _device(resp.json())

    def get_device(self, device_id: str) -> RegistryDevice | None:
        resp = self._call("GET", f"/devices/{device_id}")
        if resp.status_code == 404:
            return None
        if resp.status_code != 200:
            raise RegistryError(
                f"registry refused to read {device_id}: {resp.status_code} {_message(resp)}"
            )
        return _device(resp.json())


def _message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", {})
        return f"{err.get('status', '')}: {err.get('message', '')}".strip(": ")
    except ValueError:
        return resp.reason_phrase


def _device(d: dict[str, Any]) -> RegistryDevice:
    pems = tuple(
        c["publicKey"]["key"]
        for c in d.get("credentials", [])
        if isinstance(c, dict) and isinstance(c.get("publicKey"), dict)
    )
    return RegistryDevice(device_id=d["id"], num_id=str(d.get("numId", "")), certificate_pems=pems)
