"""The configured upload backend (``registry.kind``): one place that knows every kind.

Each backend implements :class:`provisioner.ports.RegistryBackend` and maps its registry's
answers the same way (already exists -> compare, throttled/5xx/unreachable -> retry later,
anything else -> a refusal), so the pipeline, the store-and-forward drain and the tests
never know which registry they talk to.
"""

from __future__ import annotations

from typing import Any

import redis

from provisioner.cloud.tokens import read_token
from provisioner.errors import ConfigError
from provisioner.ports import Closeable, RegistryDevice
from provisioner.preflight import redis_client
from provisioner.settings import Settings
from provisioner.uploads.ratelimit import LocalPacer, Pacer, RedisPacer

# Pace at 99 % of the registry's limit: slots leave the station evenly spaced, but requests
# reach the registry with a few ms of jitter; 1 % keeps any 60 s window under the limit.
PACE_HEADROOM = 0.99


class PacedBackend(Closeable):
    """A backend whose writes (creates and blocks) take the registry's shared slots
    (:mod:`.ratelimit`); reads are not paced (their quota is ten times larger). Blocks share
    the creates' slots rather than get their own: together they never exceed the rate."""

    def __init__(self, backend: Any, pacer: Pacer, fallback: Pacer) -> None:
        self.backend, self.pacer, self.fallback = backend, pacer, fallback

    def _wait(self) -> None:
        try:
            self.pacer.wait()
        except redis.RedisError:  # Redis down: pace this process on its own
            self.fallback.wait()

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice:
        self._wait()
        result: RegistryDevice = self.backend.create_device(device_id, certificate_pem)
        return result

    def block_device(self, device_id: str) -> bool:
        self._wait()
        return bool(self.backend.block_device(device_id))

    def get_device(self, device_id: str) -> RegistryDevice | None:
        result: RegistryDevice | None = self.backend.get_device(device_id)
        return result

    def close(self) -> None:
        self.backend.close()


def open_backend(settings: Settings) -> PacedBackend:
    """A new, paced backend for ``settings.registry`` (the caller closes it)."""
    r = settings.registry
    key = f"{r.kind}:{settings.registry_url if r.kind != 'aws' else r.aws_region}:{r.project}"
    rate = r.rate_per_minute * PACE_HEADROOM
    return PacedBackend(
        _raw_backend(settings),
        RedisPacer(redis_client(settings), key, rate),
        LocalPacer(rate),
    )


def _raw_backend(settings: Settings) -> Any:
    r = settings.registry
    if r.kind == "cloudiot":
        from provisioner.uploads.client import CloudIotRegistry

        return CloudIotRegistry.from_settings(settings)
    if r.kind == "clearblade":
        from provisioner.uploads.clearblade_backend import ClearBladeRegistry

        if not r.clearblade_system_key:
            raise ConfigError("registry.kind = clearblade needs registry.clearblade_system_key")
        token = read_token(settings.registry_token_file)
        return ClearBladeRegistry(
            settings.registry_url,
            r.project,
            r.location,
            r.registry,
            r.clearblade_system_key,
            token,
        )
    from cryptography.hazmat.primitives import serialization

    from provisioner.ca.store import load_cert_file

    try:
        from provisioner.uploads.aws import AwsIotRegistry
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"registry.kind = aws needs boto3 ({exc.name} is missing): "
            "pip install 'provisioner[aws]'"
        ) from None

    ca = load_cert_file(settings.ca_dir / "intermediate.pem")
    return AwsIotRegistry.connect(
        r.aws_region,
        ca.public_bytes(serialization.Encoding.PEM).decode(),
        endpoint_url=r.aws_endpoint_url,
        policy_name=r.aws_policy,
    )
