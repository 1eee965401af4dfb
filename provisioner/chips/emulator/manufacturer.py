"""An emulated chip manufacturer's CA, for emulated pre-provisioned parts (tests only).

It is NOT Microchip's and never claims to be: its root has its own subject ("Emulated
Manufacturer Root CA (test)", O=provisioner emulator) and its own key. The signer and
device certificates, however, come from the library's own TNG templates (the wheel's
``g_tngtls_cert_def_1_signer`` and the device definitions ``tng_map_get_device_cert_def``
returns): their subject and issuer *names* are the templates' ("Crypto Authentication
Signer XXXX", O=Microchip Technology Inc), because a compressed certificate can only
change the fields its definition marks as variable. What ties the chain together is
cryptographic: each certificate is signed by the key above it and its authority key
identifier is that key's (the library computes it from the CA public key on read). A
verifier must chain by signature and key identifiers; chaining by names stops at the
signer, whose issuer name is the template's Microchip root, not this root.

How a certificate is made: the template is patched with the variable fields (public key,
dates, signer ID) through the library's ``atcacert_set_*`` helpers, stored on a chip with
``atcacert_write_cert_ext``, rebuilt by ``atcacert_read_cert_ext`` (which fills in what the
library derives: serial number from the public key hash, key identifiers, the chip's serial
number in the subject), then signed over that TBS, and stored again. So the certificate
is by construction what the library rebuilds from the chip.
"""

from __future__ import annotations

import fcntl
import os
from ctypes import (
    POINTER,
    Structure,
    byref,
    c_int,
    c_size_t,
    c_uint8,
    c_uint16,
    c_void_p,
    sizeof,
    string_at,
)
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from provisioner.chips import tng
from provisioner.chips.library import ZONE_DATA, buf, cryptoauth
from provisioner.private_files import write_private

if TYPE_CHECKING:
    from provisioner.chips.device import CryptoAuthChip

ROOT_SUBJECT = x509.Name(
    [
        x509.NameAttribute(NameOID.COMMON_NAME, "Emulated Manufacturer Root CA (test)"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "provisioner emulator"),
    ]
)


class _TmUtc(Structure):
    """``atcacert_tm_utc_t`` (atcacert_date.h; struct tm's fields, year since 1900). Our
    own mirror: the wheel's refuses day 31."""

    _fields_ = [(name, c_int) for name in ("sec", "min", "hour", "mday", "mon", "year")]


_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "atcacert_set_subj_public_key": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_set_issue_date": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_set_expire_date": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_set_signer_id": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_get_signer_id": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_set_cert_element": (
        c_int,
        [c_void_p, c_void_p, c_void_p, c_size_t, c_void_p, c_size_t],
    ),
    "atcacert_get_comp_cert": (c_int, [c_void_p, c_void_p, c_size_t, c_void_p]),
    "atcacert_set_signature": (
        c_int,
        [c_void_p, c_void_p, POINTER(c_size_t), c_size_t, c_void_p],
    ),
}


def _lib() -> Any:
    lib = cryptoauth()
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def _ok(status: int, what: str) -> None:
    if status:
        raise tng.TngError(what, status)


def _field(definition: int, name: str) -> int:
    """The address of a field of the wheel's ``atcacert_def_t`` at ``definition``."""
    from cryptoauthlib.atcacert import atcacert_def_t

    return definition + int(getattr(atcacert_def_t, name).offset)


def template(definition: int) -> bytes:
    """The definition's certificate template, as the wheel holds it."""
    pointer = c_void_p.from_address(_field(definition, "cert_template")).value
    length = c_uint16.from_address(_field(definition, "cert_template_size")).value
    return string_at(pointer or 0, length)


def expire_years(definition: int) -> int:
    return int(c_uint8.from_address(_field(definition, "expire_years")).value)


def _element_cert_loc(definition: int, name: str) -> int:
    """The address of the ``cert_loc`` of the definition's cert element called ``name``
    (e.g. "EUI-48"); KeyError if the definition has none."""
    from cryptoauthlib.atcacert import atcacert_cert_element_t

    elements = c_void_p.from_address(_field(definition, "cert_elements")).value or 0
    count = c_uint8.from_address(_field(definition, "cert_elements_count")).value
    element_id = atcacert_cert_element_t.id
    for index in range(count):
        address = elements + index * sizeof(atcacert_cert_element_t)
        if string_at(address + element_id.offset, element_id.size).rstrip(b"\0") == name.encode():
            return address + int(atcacert_cert_element_t.cert_loc.offset)
    raise KeyError(f"the definition has no cert element {name!r}")


def _tm(when: datetime) -> _TmUtc:
    return _TmUtc(when.second, when.minute, when.hour, when.day, when.month - 1, when.year - 1900)


def issue_hour(now: datetime | None = None) -> datetime:
    """A compressed certificate keeps the issue date to the hour, years 2000-2031
    (atcacert_date.c, atcacert_date_enc_compcert), and expires N whole years later: the
    date a certificate is issued on (a 29 February reads as the 28th, so that N years
    later exists)."""
    when = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    return when.replace(day=28) if (when.month, when.day) == (2, 29) else when


def signer_id_of(definition: int, der: bytes) -> bytes:
    """The 2-byte signer ID a certificate carries (``atcacert_get_signer_id``)."""
    out = buf(2)
    _ok(_lib().atcacert_get_signer_id(definition, buf(der), len(der), out), "get signer ID")
    return bytes(out)


def provisional(
    definition: int,
    public_key: bytes,
    issued: datetime,
    signer_id: bytes,
    elements: dict[str, bytes] | None = None,
) -> bytes:
    """The template with its variable fields set: subject public key (and key ID), issue
    and expire dates, signer ID, and ``elements`` (name -> bytes) of the definition's
    cert elements that the chip stores in a data slot (e.g. TNGTLS's "EUI-48", slot 5)."""
    from cryptoauthlib.library import cal_buffer

    lib = _lib()
    cert = buf(template(definition))
    size = len(cert)
    key = bytearray(public_key)
    _ok(
        lib.atcacert_set_subj_public_key(definition, cert, size, byref(cal_buffer(64, key))),
        "set public key",
    )
    expires = issued.replace(year=issued.year + expire_years(definition))
    _ok(lib.atcacert_set_issue_date(definition, cert, size, byref(_tm(issued))), "issue date")
    _ok(lib.atcacert_set_expire_date(definition, cert, size, byref(_tm(expires))), "expiry")
    _ok(lib.atcacert_set_signer_id(definition, cert, size, buf(signer_id)), "set signer ID")
    for name, value in (elements or {}).items():
        loc = _element_cert_loc(definition, name)
        _ok(
            lib.atcacert_set_cert_element(definition, loc, cert, size, buf(value), len(value)),
            "set cert element",
        )
    return bytes(cert)


def raw_signature(key: ec.EllipticCurvePrivateKey, tbs: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over ``tbs`` as R||S (the compressed certificate's form)."""
    r, s = decode_dss_signature(key.sign(tbs, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def with_signature(definition: int, der: bytes, signature: bytes) -> bytes:
    """``der`` with its signature replaced (``atcacert_set_signature``: the DER lengths
    follow the signature's encoding)."""
    from cryptoauthlib.library import cal_buffer

    capacity = len(der) + 16
    cert = buf(der + bytes(16))
    size = c_size_t(len(der))
    sig = bytearray(signature)
    _ok(
        _lib().atcacert_set_signature(
            definition, cert, byref(size), capacity, byref(cal_buffer(64, sig))
        ),
        "set signature",
    )
    return bytes(cert)[: size.value]


def sign_rebuilt(
    chip: CryptoAuthChip, definition: int, ca_key: ec.EllipticCurvePrivateKey
) -> bytes:
    """The certificate the library rebuilds from ``chip`` under ``definition`` (its
    authority key ID from ``ca_key``), signed by ``ca_key``; not stored yet."""
    rebuilt = tng.read_cert(chip._dev, definition, public_key_xy(ca_key.public_key()))
    tbs = x509.load_der_x509_certificate(rebuilt).tbs_certificate_bytes
    return with_signature(definition, rebuilt, raw_signature(ca_key, tbs))


def compressed(definition: int, der: bytes) -> bytes:
    """The compressed certificate (``atcacert_get_comp_cert``, the library's compressor)."""
    out = buf(128)  # ATCACERT_COMP_CERT_MAX_SIZE is 72 for ECC parts; room to spare
    _ok(_lib().atcacert_get_comp_cert(definition, buf(der), len(der), out), "compress")
    return bytes(out)[:72]


def store_compressed(chip: CryptoAuthChip, definition: int, der: bytes) -> None:
    """Write only ``der``'s compressed certificate to the definition's slot (for a part
    whose other certificate locations, e.g. TNGTLS's slot 5, can no longer be written)."""
    from cryptoauthlib.atcacert import atcacert_device_loc_t

    loc = atcacert_device_loc_t.from_address(_field(definition, "comp_cert_dev_loc"))
    slot, offset = int(getattr(loc, "slot", 0)), int(getattr(loc, "offset", 0))
    chip.write_zone(ZONE_DATA, slot, offset, compressed(definition, der))


def check_rebuilt(
    chip: CryptoAuthChip, definition: int, der: bytes, ca_key: ec.EllipticCurvePrivateKey
) -> None:
    """Refuse unless the library rebuilds exactly ``der`` from ``chip``."""
    if tng.read_cert(chip._dev, definition, public_key_xy(ca_key.public_key())) != der:
        raise tng.TngError("the library rebuilds another certificate than the one signed", 10)


def issue_on(
    chip: CryptoAuthChip,
    definition: int,
    draft: bytes,
    ca_key: ec.EllipticCurvePrivateKey,
) -> bytes:
    """Store ``draft`` on ``chip`` (``atcacert_write_cert_ext``), let the library rebuild
    it, sign that with ``ca_key`` and store the signed certificate the same way. Returns
    the signed DER, checked to be what the library now reads back."""
    tng.write_cert(chip._dev, definition, draft)
    signed = sign_rebuilt(chip, definition, ca_key)
    tng.write_cert(chip._dev, definition, signed)
    check_rebuilt(chip, definition, signed, ca_key)
    return signed


def public_key_xy(key: ec.EllipticCurvePublicKey) -> bytes:
    """X||Y (64 bytes), the chip's and the library's public key form."""
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _root_certificate(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(ROOT_SUBJECT)
        .issuer_name(ROOT_SUBJECT)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=40 * 365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class EmulatedManufacturer:
    """A root and a signer (intermediate) whose certificate is the library's TNG signer
    template, signed by the root. Keys in memory: this is test equipment."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    signer_key: ec.EllipticCurvePrivateKey
    signer_cert: x509.Certificate  # TNG template (g_tngtls_cert_def_1_signer)

    @classmethod
    def create(cls) -> EmulatedManufacturer:
        """A fresh manufacturer. The signer certificate is assembled by the library on a
        scratch emulated chip (see the module doc), so it is what a part rebuilds."""
        from provisioner.chips.emulator.tray import scratch_chip

        root_key = ec.generate_private_key(ec.SECP256R1())
        signer_key = ec.generate_private_key(ec.SECP256R1())
        issued = issue_hour()
        signer_def = tng.signer_definition(tng.definition_for("tngtls"))
        draft = provisional(
            signer_def, public_key_xy(signer_key.public_key()), issued, os.urandom(2)
        )
        with scratch_chip() as chip:
            der = issue_on(chip, signer_def, draft, root_key)
        return cls(
            root_key=root_key,
            root_cert=_root_certificate(root_key, issued),
            signer_key=signer_key,
            signer_cert=x509.load_der_x509_certificate(der),
        )

    def root_pem(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.PEM)

    def root_public_key(self) -> bytes:
        """X||Y of the root key, as ``read_factory_certificates`` takes it."""
        return public_key_xy(self.root_key.public_key())

    def signer_der(self) -> bytes:
        return self.signer_cert.public_bytes(serialization.Encoding.DER)

    def signer_id(self) -> bytes:
        return signer_id_of(tng.signer_definition(tng.definition_for("tngtls")), self.signer_der())

    # --- the emulated line's own manufacturer (files under the chips directory) ------------

    def save(self, directory: Path) -> None:
        """Keep this manufacturer in ``directory`` (0700; keys 0600): an emulated line makes
        every part of its trays under one manufacturer, so the line trusts one root."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, key in (("root.key", self.root_key), ("signer.key", self.signer_key)):
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            write_private(directory / name, pem)
        write_private(directory / "signer.pem", self.signer_cert.public_bytes(_PEM))
        write_private(directory / ROOT_FILE, self.root_pem())  # last: marks a whole set

    @classmethod
    def load(cls, directory: Path) -> EmulatedManufacturer:
        def key(name: str) -> ec.EllipticCurvePrivateKey:
            loaded = serialization.load_pem_private_key((directory / name).read_bytes(), None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            return loaded

        return cls(
            root_key=key("root.key"),
            root_cert=x509.load_pem_x509_certificate((directory / ROOT_FILE).read_bytes()),
            signer_key=key("signer.key"),
            signer_cert=x509.load_pem_x509_certificate((directory / "signer.pem").read_bytes()),
        )

    @classmethod
    def of_line(cls, chips_dir: Path) -> EmulatedManufacturer:
        """The emulated line's manufacturer (``<chips_dir>/manufacturer``), made on first
        use. Its root is not trusted by anything until an admin runs ``provisioner
        manufacturer trust <chips_dir>/manufacturer/root.pem``."""
        directory = chips_dir / MANUFACTURER_DIR
        if (directory / ROOT_FILE).exists():
            return cls.load(directory)
        chips_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(chips_dir / ".manufacturer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # two sockets' first parts: one manufacturer
            if (directory / ROOT_FILE).exists():
                return cls.load(directory)
            made = cls.create()
            made.save(directory)
            return made
        finally:
            os.close(fd)


MANUFACTURER_DIR = "manufacturer"
ROOT_FILE = "root.pem"
_PEM = serialization.Encoding.PEM
