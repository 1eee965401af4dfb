"""The development CA ceremony on SoftHSM, and loading the CA for the signer.

Two tokens: ``root`` holds the root key, ``factory`` the intermediate key that signs device
certificates. Both keys are generated inside their token (sensitive, not extractable).
Public certificates go to ``<var>/ca``. In production the root stays offline (issue 4 adds
CSR export/import); here both tokens live under ``<var>/hsm`` for the demo and the tests.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from hsm import softhsm
from hsm.keys import delete_keys, find_private_key, generate_ec_p256
from hsm.module import Pkcs11Module, TokenSession
from hsm.pins import write_new_pin
from hsm.signer import HsmEcPrivateKey
from hsm.tokens import init_token
from provisioner.ca.issuer import device_validity, key_usage, random_serial_number
from provisioner.errors import (
    CaExistsError,
    CaNotInitialisedError,
    HsmError,
    HsmKeyNotFoundError,
)
from provisioner.settings import Settings

ROOT_YEARS = 30
INTERMEDIATE_YEARS = 25


@dataclass(frozen=True)
class CaInfo:
    created: bool
    root_subject: str
    root_fingerprint_sha256: str
    intermediate_subject: str
    intermediate_fingerprint_sha256: str


@dataclass
class LoadedCa:
    """The intermediate CA, ready to sign: its token key and the public certificates."""

    module: Pkcs11Module
    session: TokenSession
    key: HsmEcPrivateKey
    intermediate_cert: x509.Certificate
    root_cert: x509.Certificate

    def close(self) -> None:
        self.session.close()
        self.module.close()


def _paths(settings: Settings) -> tuple[Path, Path]:
    return settings.ca_dir / "root.pem", settings.ca_dir / "intermediate.pem"


def open_module(settings: Settings) -> Pkcs11Module:
    """Load the configured module with this station's private SoftHSM configuration."""
    softhsm.write_conf(settings.softhsm_conf, settings.token_dir)
    softhsm.use_conf(settings.softhsm_conf)
    return Pkcs11Module(settings.hsm.module)


def _so_pin_file(pin_file: Path) -> Path:
    return pin_file.with_suffix(".so-pin")


def _fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _info(created: bool, root: x509.Certificate, inter: x509.Certificate) -> CaInfo:
    return CaInfo(
        created=created,
        root_subject=root.subject.rfc4514_string(),
        root_fingerprint_sha256=_fingerprint(root),
        intermediate_subject=inter.subject.rfc4514_string(),
        intermediate_fingerprint_sha256=_fingerprint(inter),
    )


def _ensure_tokens(settings: Settings) -> None:
    """Create the root and factory tokens if absent (before the module is opened)."""
    with open_module(settings) as mod:
        missing = [
            (label, pin_file)
            for label, pin_file in (
                (settings.hsm.root_token, settings.root_pin_file),
                (settings.hsm.factory_token, settings.pin_file),
            )
            if mod.find_token(label) is None
        ]
    for label, pin_file in missing:
        so_pin = write_new_pin(_so_pin_file(pin_file))
        user_pin = write_new_pin(pin_file)
        init_token(settings.hsm.module, label, so_pin, user_pin)
        del so_pin, user_pin


def _name(settings: Settings, cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, settings.profile.organization),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_cert(
    subject: x509.Name,
    issuer: x509.Name,
    subject_key: HsmEcPrivateKey,
    signing_key: HsmEcPrivateKey,
    years: int,
    path_length: int | None,
    issuer_ski: x509.SubjectKeyIdentifier | None,
) -> x509.Certificate:
    # On the hour and whole years: the intermediate travels to every chip compressed.
    not_before, not_after = device_validity(datetime.now(UTC), years)
    pub = subject_key.public_key()
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )
    if issuer_ski is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    return b.sign(signing_key, hashes.SHA256())


def _write_pem(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(tmp, path)


def _existing(settings: Settings, mod: Pkcs11Module) -> CaInfo | None:
    """The CA's info if it exists *and* is consistent; None if nothing exists at all.
    Raises CaExistsError for a partial or inconsistent CA (needs --force)."""
    root_pem, inter_pem = _paths(settings)
    have_files = root_pem.exists() or inter_pem.exists()
    have_key = False
    if mod.find_token(settings.hsm.factory_token) is not None and settings.pin_file.exists():
        ts = mod.open_token(settings.hsm.factory_token, settings.pin_file)
        try:
            find_private_key(ts, settings.hsm.ca_key_label)
            have_key = True
            if have_files and root_pem.exists() and inter_pem.exists():
                root = x509.load_pem_x509_certificate(root_pem.read_bytes())
                inter = x509.load_pem_x509_certificate(inter_pem.read_bytes())
                key = HsmEcPrivateKey(ts, settings.hsm.ca_key_label)
                if key.public_key() == inter.public_key():
                    inter.verify_directly_issued_by(root)
                    return _info(False, root, inter)
        except HsmKeyNotFoundError:
            pass
        finally:
            ts.close()
    if have_files or have_key:
        raise CaExistsError(
            f"a CA already exists in {settings.ca_dir} / token "
            f"{settings.hsm.factory_token!r} but is incomplete or inconsistent; pass --force "
            "to replace it (this invalidates every certificate issued so far)"
        )
    return None


def init_ca(settings: Settings, *, force: bool = False) -> CaInfo:
    """Create the dev CA, or report the existing one (``created=False``).

    With ``force``, the existing keys and certificates are destroyed and made anew."""
    if not force:
        with open_module(settings) as mod:
            existing = _existing(settings, mod)
        if existing is not None:
            return existing
    _ensure_tokens(settings)
    with open_module(settings) as mod:
        root_ts = mod.open_token(settings.hsm.root_token, settings.root_pin_file)
        fac_ts = mod.open_token(settings.hsm.factory_token, settings.pin_file)
        try:
            delete_keys(root_ts, settings.hsm.root_key_label)
            delete_keys(fac_ts, settings.hsm.ca_key_label)
            generate_ec_p256(root_ts, settings.hsm.root_key_label, b"\x01")
            generate_ec_p256(fac_ts, settings.hsm.ca_key_label, b"\x02")
            root_key = HsmEcPrivateKey(root_ts, settings.hsm.root_key_label)
            inter_key = HsmEcPrivateKey(fac_ts, settings.hsm.ca_key_label)
            root_name = _name(settings, settings.profile.root_common_name)
            root = _ca_cert(root_name, root_name, root_key, root_key, ROOT_YEARS, None, None)
            root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            inter = _ca_cert(
                _name(settings, settings.profile.ca_common_name),
                root_name,
                inter_key,
                root_key,
                INTERMEDIATE_YEARS,
                0,
                root_ski,
            )
            inter.verify_directly_issued_by(root)
            root_pem, inter_pem = _paths(settings)
            _write_pem(root_pem, root)
            _write_pem(inter_pem, inter)
        finally:
            root_ts.close()
            fac_ts.close()
        return _info(True, root, inter)


def load_ca(settings: Settings) -> LoadedCa:
    """Open the factory token and the intermediate key for signing (caller closes)."""
    root_pem, inter_pem = _paths(settings)
    if not inter_pem.exists() or not root_pem.exists():
        raise CaNotInitialisedError(f"{inter_pem} is missing")
    if not settings.pin_file.exists():
        raise CaNotInitialisedError(f"PIN file {settings.pin_file} is missing")
    mod = open_module(settings)
    try:
        if mod.find_token(settings.hsm.factory_token) is None:
            raise CaNotInitialisedError(f"no token {settings.hsm.factory_token!r}")
        ts = mod.open_token(settings.hsm.factory_token, settings.pin_file)
        try:
            key = HsmEcPrivateKey(ts, settings.hsm.ca_key_label)
        except HsmKeyNotFoundError:
            ts.close()
            raise CaNotInitialisedError(f"no key {settings.hsm.ca_key_label!r}") from None
    except BaseException:
        mod.close()
        raise
    inter = x509.load_pem_x509_certificate(inter_pem.read_bytes())
    root = x509.load_pem_x509_certificate(root_pem.read_bytes())
    if key.public_key() != inter.public_key():
        ts.close()
        mod.close()
        raise HsmError(
            f"{inter_pem} does not belong to key {settings.hsm.ca_key_label!r} in token "
            f"{settings.hsm.factory_token!r}: re-run `provisioner ca init --force`"
        )
    return LoadedCa(mod, ts, key, inter, root)
