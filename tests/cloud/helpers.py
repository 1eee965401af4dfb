"""Test material for the registry: real certificates and a real registry process."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from provisioner.cloud.tokens import admin_token_file, read_token
from provisioner.uploads.client import CloudIotRegistry
from tests.conftest import Station

START_TIMEOUT_S = 20.0


def certificate_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None) -> str:
    """A self-signed certificate for ``key`` (a fresh P-256 key by default), as PEM."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "0123AABBCCDDEEFF01")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def public_key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """The SubjectPublicKeyInfo PEM (``BEGIN PUBLIC KEY``) of ``key``."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@cache
def rsa_key(bits: int) -> rsa.RSAPrivateKey:
    """RSA keys are slow to make; one per size is enough."""
    return rsa.generate_private_key(65537, bits)


def credential(fmt: str | int, key: str, **extra: Any) -> dict[str, Any]:
    return {"publicKey": {"format": fmt, "key": key}, **extra}


@dataclass
class RegistryProcess:
    """``python -m provisioner.cloud`` for one station, stdout and stderr in files."""

    station: Station
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @classmethod
    def start(cls, station: Station, tag: str = "run") -> RegistryProcess:
        out, err = station.root / f"registry-{tag}.out", station.root / f"registry-{tag}.err"
        with out.open("wb") as o, err.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "provisioner.cloud", "--config", str(station.config)],
                env=station.env(),
                cwd=station.root,
                stdout=o,
                stderr=e,
            )
        rp = cls(station, proc, out, err)
        rp._wait_ready()
        return rp

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"registry exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError(f"registry not ready in {START_TIMEOUT_S} s: {self.output()}")

    @property
    def url(self) -> str:
        return self.station.settings.registry_url

    @property
    def token(self) -> str:
        return read_token(self.station.settings.registry_token_file)

    @property
    def admin_token(self) -> str:
        """The admin token the server creates beside the upload token (manages registries)."""
        return read_token(admin_token_file(self.station.settings.registry_token_file))

    def parent_url(self, registry: str | None = None) -> str:
        r = self.station.settings.registry
        return (
            f"{r.url}/v1/projects/{r.project}/locations/{r.location}"
            f"/registries/{registry or r.registry}"
        )

    def client(self, token: str | None = None, timeout_s: float = 5.0) -> CloudIotRegistry:
        r = self.station.settings.registry
        return CloudIotRegistry(
            self.url, r.project, r.location, r.registry, token or self.token, timeout_s
        )

    def http(self, token: str | None = None) -> httpx.Client:
        """A raw HTTP client authenticated with ``token`` (default: the upload token)."""
        return httpx.Client(headers={"Authorization": f"Bearer {token or self.token}"}, timeout=10)

    def output(self) -> str:
        return self.stdout.read_text(errors="replace") + self.stderr.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"registry ignored {sig.name} for {timeout_s} s") from None
        return self.proc.returncode
