"""The seams of the product: what the pipeline needs from a chip, a signer and a registry.

The pipeline (``provisioner/pipeline.py``) only ever sees these Protocols and the immutable
values below. Which transport drives the chip (emulator or silicon through cryptoauthlib),
which PKCS#11 module holds the CA key (SoftHSM or a real HSM, in-process or behind the
``hsm`` Celery queue) and which registry receives the device (the built-in one, Cloud IoT,
AWS) is decided at the edges, by configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Self, runtime_checkable

# --- chips -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipIdentity:
    """What a chip says about itself before anything is written to it."""

    serial: bytes  # 9 bytes, 01 23 .. EE on ATECC608
    revision: bytes  # 4 bytes from Info(mode 0), 00 00 60 02 on a 608A

    @property
    def serial_hex(self) -> str:
        """Upper-case hex of the 9-byte serial: the device certificate's CN."""
        return self.serial.hex().upper()


@runtime_checkable
class SecureElement(Protocol):
    """One chip in one socket, opened and woken. Every call talks to the chip."""

    locator: str

    def identity(self) -> ChipIdentity: ...

    def ensure_configured(self) -> None:
        """Bring a blank chip to the profile's configuration (write + lock config zone).

        Idempotent: a chip whose config zone is already locked with the profile's layout is
        left alone; one locked with an incompatible layout raises ChipStateError.
        """

    def generate_key(self) -> bytes:
        """Create a new private key in the profile's key slot; return the public key X||Y."""

    def data_locked(self) -> bool:
        """Whether the data zone is locked (the key slot then can no longer be re-keyed)."""

    def lock_data_zone(self) -> None:
        """Lock the data zone (idempotent): fixes the key and makes data slots readable."""

    def has_certificate(self) -> bool:
        """Whether the certificate slots already hold a certificate."""

    def public_key(self) -> bytes:
        """The public key (X||Y, 64 bytes) of the private key in the key slot."""

    def random(self) -> bytes:
        """32 bytes from the chip's RNG."""

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a 32-byte SHA-256 digest with the key slot's key; return raw R||S (64 bytes)."""

    def write_certificate(self, der: bytes) -> None:
        """Store the device certificate (and its signer's) on the chip, check both read
        back byte-exact, then lock their slots. A chip whose slots are already locked with
        this same certificate is accepted (a resumed device); another certificate raises
        ChipStateError. On an ATECC608 the certificates are stored compressed."""

    def read_certificate(self) -> bytes:
        """The device certificate as the chip gives it back (rebuilt DER)."""

    def close(self) -> None: ...


class ChipConnector(Protocol):
    """Opens a chip from a locator such as ``emulated:line1/0`` or ``i2c:/dev/i2c-1@0x6A``."""

    def open(self, locator: str) -> SecureElement: ...


# --- signing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningRequest:
    """Everything the signer needs to decide whether, and what, to sign for one device."""

    device_id: int
    batch_id: int
    chip_serial_hex: str
    public_key: bytes  # uncompressed SEC1 point, 65 bytes (04 || X || Y)
    pop_challenge: bytes  # the random challenge the chip signed (32 bytes)
    pop_signature: bytes  # raw R||S (64 bytes) over SHA-256(pop_challenge)


@dataclass(frozen=True)
class IssuedCertificate:
    """A device certificate that the signer has issued, verified and recorded."""

    der: bytes
    serial_number: int
    fingerprint_sha256: str  # lower-case hex of SHA-256(DER)


class CertificateSigner(Protocol):
    """Issues device certificates. Idempotent per device: asking twice returns the same one."""

    def sign(self, request: SigningRequest) -> IssuedCertificate: ...


# --- registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryDevice:
    """A device as the registry holds it."""

    device_id: str
    num_id: str
    certificate_pems: tuple[str, ...]
    blocked: bool = False  # the registry refuses the device's connections (revoked)


class RegistryBackend(Protocol):
    """A cloud device registry. Implementations raise RegistryUnavailableError on 5xx/timeouts,
    and ``create_device`` raises DeviceAlreadyExists when the id is taken."""

    def create_device(self, device_id: str, certificate_pem: str) -> RegistryDevice: ...

    def get_device(self, device_id: str) -> RegistryDevice | None: ...

    def block_device(self, device_id: str) -> bool:
        """Make the registry refuse the device from now on (its certificate was revoked).
        Idempotent; False when the registry holds no such device (nothing to block)."""
        ...


class Closeable:
    """A backend holding connections or files: ``with backend:`` closes it."""

    def close(self) -> None:
        """Release what the backend holds (subclasses override)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class DeviceAlreadyExists(Exception):
    """Raised by RegistryBackend.create_device for ALREADY_EXISTS (409); not user-facing."""
