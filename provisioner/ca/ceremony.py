"""The CA ceremony, and loading the CA for the signer.

Two tokens: ``root`` holds the root key, ``factory`` the intermediate keys that sign device
certificates. Every key is generated inside its token (sensitive, not extractable). Public
certificates live in ``<var>/ca`` (:mod:`provisioner.ca.store`).

Root and intermediate are P-256, always: an ATECC608 stores the intermediate compressed and
rebuilds it from a 64-byte ECDSA signature and the root's P-256 key, so an RSA root (which
:mod:`hsm.keys` can generate) would give chips a chain they cannot hold.

Two ways to get an intermediate certificate:

* dev / single-site: ``ca init`` makes the root in its own token and signs the intermediate
  with it; ``ca rotate`` makes the next intermediate the same way;
* offline root: ``ca csr`` makes the next intermediate key in the factory token and writes
  its CSR; the root signs it elsewhere; ``ca import-cert`` checks the certificate belongs to
  that key, chains to the root, is a CA and can be stored compressed, then installs it.

The root never touches a station: the stations and the signer only read ``root.pem``.

Every key is made neither modifiable nor destroyable (:mod:`hsm.keys`): the user PIN signs,
it cannot relabel or delete a CA key. ``ca init --force`` therefore cannot destroy the keys
of the CA it replaces: they stay in their tokens, unused, and the new keys take the next
free label (``root-ca-2``, ``intermediate-ca-2`` ...); the rotations find the root key by
its public key, not by its label. Removing old keys for good is the security officer's job
(re-initialising the token with the SO PIN).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import NameOID

from hsm import softhsm
from hsm.breaker import BreakerStatus
from hsm.keys import KeyAlgorithm, KeyRef, delete_keys, find_private_key, generate, key_labels
from hsm.module import Pkcs11Module, TokenSession
from hsm.pins import PinSource, write_new_pin
from hsm.pool import TokenPool
from hsm.signer import HsmEcPrivateKey, token_key
from hsm.tokens import init_token
from provisioner.audit.checkpointer import audit_key_file, ensure_audit_key
from provisioner.ca.issuer import device_validity, key_usage, random_serial_number
from provisioner.ca.manifest_key import ensure_manifest_key, signer_file
from provisioner.ca.store import CaStore, fingerprint, load_cert_file
from provisioner.errors import (
    CaExistsError,
    CaNotInitialisedError,
    HsmError,
    HsmKeyNotFoundError,
    InvalidInputError,
)
from provisioner.settings import Settings

E = TypeVar("E", bound=x509.ExtensionType)

ROOT_YEARS = 30
INTERMEDIATE_YEARS = 25


@dataclass(frozen=True)
class CaInfo:
    created: bool
    root_subject: str
    root_fingerprint_sha256: str
    intermediate_subject: str
    intermediate_fingerprint_sha256: str
    intermediate_name: str = ""
    kept_keys: tuple[str, ...] = ()  # old keys the tokens refused to destroy (--force)


@dataclass
class LoadedCa:
    """The current intermediate, ready to sign: its token key and the public certificates.

    ``name`` is the key's label, which also names the CA's CRL."""

    pool: TokenPool
    key: HsmEcPrivateKey
    intermediate_cert: x509.Certificate
    root_cert: x509.Certificate
    name: str

    @property
    def status(self) -> BreakerStatus:
        return self.pool.status

    def follow(self, settings: Settings) -> bool:
        """Switch to the current intermediate after a rotation or import, on the same token
        connection (a second login in this process would share, and on close end, this
        one's). Returns whether it changed."""
        store = store_of(settings)
        inter = store.intermediate()
        if inter == self.intermediate_cert:
            return False
        name = store.current_name(settings.hsm.ca_key_label)
        key = HsmEcPrivateKey(self.pool, name)
        if key.public_key() != inter.public_key():
            raise HsmError(f"{store.intermediate_pem} does not belong to key {name!r}")
        self.pool.probe = lambda ts: find_private_key(ts, name)
        self.key, self.intermediate_cert, self.root_cert, self.name = (
            key,
            inter,
            store.root(),
            name,
        )
        return True

    def close(self) -> None:
        self.pool.close()


def store_of(settings: Settings) -> CaStore:
    return CaStore(settings.ca_dir)


def use_station_conf(settings: Settings) -> None:
    """Point SoftHSM (read at C_Initialize) at this station's private configuration."""
    softhsm.write_conf(settings.softhsm_conf, settings.token_dir)
    softhsm.use_conf(settings.softhsm_conf)


def open_module(settings: Settings) -> Pkcs11Module:
    """Load the configured module with this station's private SoftHSM configuration."""
    use_station_conf(settings)
    return Pkcs11Module(settings.hsm.module)


def factory_pin(settings: Settings, pin_source: str | None = None) -> PinSource:
    return PinSource.parse(pin_source or settings.pin_source, settings.hsm.factory_token)


def _so_pin_file(pin_file: Path) -> Path:
    return pin_file.with_suffix(".so-pin")


def _info(
    created: bool,
    root: x509.Certificate,
    inter: x509.Certificate,
    name: str,
    kept: tuple[str, ...] = (),
) -> CaInfo:
    return CaInfo(
        created=created,
        root_subject=root.subject.rfc4514_string(),
        root_fingerprint_sha256=fingerprint(root),
        intermediate_subject=inter.subject.rfc4514_string(),
        intermediate_fingerprint_sha256=fingerprint(inter),
        intermediate_name=name,
        kept_keys=kept,
    )


def _numbered(base: str, labels: list[str]) -> list[str]:
    """``base`` and ``base-2``, ``base-3`` ... among ``labels``."""
    pattern = re.compile(rf"^{re.escape(base)}(-[0-9]+)?$")
    return [label for label in labels if pattern.match(label)]


def _free_label(base: str, taken: list[str]) -> str:
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def _destroy(ts: TokenSession, labels: list[str]) -> list[str]:
    """Destroy what may be destroyed; the labels of the keys the token kept."""
    return [label for label in dict.fromkeys(labels) if delete_keys(ts, label)[1]]


def find_root_label(settings: Settings, ts: TokenSession, root: x509.Certificate) -> str:
    """The label of the root token's key that belongs to ``root`` (after ``ca init
    --force`` the old, undestroyable root keys are still in the token under other labels)."""
    for label in _numbered(settings.hsm.root_key_label, key_labels(ts)):
        if token_key(ts, label).public_key() == root.public_key():
            return label
    raise HsmError(f"the root token holds no key for {store_of(settings).root_pem}")


def _ensure_tokens(settings: Settings, labels: list[tuple[str, Path]]) -> None:
    """Create the named tokens if absent (before the module is opened for use). Each new
    token gets random SO and user PINs in 0600 files; a PIN never reaches argv."""
    with open_module(settings) as mod:
        missing = [(label, pin) for label, pin in labels if mod.find_token(label) is None]
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
    public_key: CertificatePublicKeyTypes,
    signing_key: CertificateIssuerPrivateKeyTypes,
    years: int,
    path_length: int | None,
    issuer_ski: x509.SubjectKeyIdentifier | None,
) -> x509.Certificate:
    # On the hour and whole years: the intermediate travels to every chip compressed.
    not_before, not_after = device_validity(datetime.now(UTC), years)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_ski is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
    return b.sign(signing_key, hashes.SHA256())


def _sign_intermediate(
    settings: Settings,
    root_key: CertificateIssuerPrivateKeyTypes,
    root: x509.Certificate,
    inter_public: ec.EllipticCurvePublicKey,
) -> x509.Certificate:
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    inter = _ca_cert(
        _name(settings, settings.profile.ca_common_name),
        root.subject,
        inter_public,
        root_key,
        INTERMEDIATE_YEARS,
        0,
        root_ski,
    )
    inter.verify_directly_issued_by(root)
    return inter


def _existing(settings: Settings, mod: Pkcs11Module) -> CaInfo | None:
    """The CA's info if it exists *and* is consistent; None if nothing exists at all.
    Raises CaExistsError for a partial or inconsistent CA (needs --force)."""
    store = store_of(settings)
    have_files = store.root_pem.exists() or store.intermediate_pem.exists()
    have_key = False
    if mod.find_token(settings.hsm.factory_token) is not None and settings.pin_file.exists():
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings))
        try:
            name = settings.hsm.ca_key_label
            if store.intermediate_pem.exists():
                name = store.current_name(name)
            find_private_key(ts, name)
            have_key = True
            if store.root_pem.exists() and store.intermediate_pem.exists():
                root, inter = store.root(), store.intermediate()
                if HsmEcPrivateKey(ts, name).public_key() == inter.public_key():
                    inter.verify_directly_issued_by(root)
                    return _info(False, root, inter, name)
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
    """Create the dev CA (root in its own token), or report the existing one
    (``created=False``). With ``force``, the existing CA is replaced: its certificates are
    forgotten and its keys destroyed where the token allows (``kept_keys``: those it kept,
    made undestroyable; the new keys take the next free labels)."""
    if not force:
        with open_module(settings) as mod:
            existing = _existing(settings, mod)
        if existing is not None:
            if not (audit_key_file(settings).exists() and signer_file(settings).exists()):
                # a CA made before the audit and manifest keys
                with open_module(settings) as mod:
                    ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings))
                    try:
                        ensure_audit_key(settings, ts)
                        ensure_manifest_key(settings, ts)
                    finally:
                        ts.close()
            return existing
    _ensure_tokens(
        settings,
        [
            (settings.hsm.root_token, settings.root_pin_file),
            (settings.hsm.factory_token, settings.pin_file),
        ],
    )
    store = store_of(settings)
    name = settings.hsm.ca_key_label
    with open_module(settings) as mod:
        root_ts = mod.open_token(settings.hsm.root_token, settings.root_pin_file)
        fac_ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings))
        try:
            root_labels = key_labels(root_ts)
            kept = _destroy(root_ts, _numbered(settings.hsm.root_key_label, root_labels))
            kept += _destroy(fac_ts, [name, *store.intermediates(), *store.pending()])
            store.clear()
            root_label = _free_label(settings.hsm.root_key_label, key_labels(root_ts))
            root_ref = KeyRef(root_label, os.urandom(16))
            name = store.next_name(name, set(key_labels(fac_ts)))
            generate(root_ts, root_ref, KeyAlgorithm.EC_P256)
            generate(fac_ts, KeyRef(name, os.urandom(16)), KeyAlgorithm.EC_P256)
            root_key = token_key(root_ts, root_ref)
            inter_key = HsmEcPrivateKey(fac_ts, name)
            root_name = _name(settings, settings.profile.root_common_name)
            root = _ca_cert(
                root_name, root_name, root_key.public_key(), root_key, ROOT_YEARS, None, None
            )
            inter = _sign_intermediate(settings, root_key, root, inter_key.public_key())
            store.write_root(root)
            store.install_intermediate(name, inter)
            ensure_audit_key(settings, fac_ts)
            ensure_manifest_key(settings, fac_ts)
        finally:
            root_ts.close()
            fac_ts.close()
    return _info(True, root, inter, name, tuple(kept))


def _new_factory_key(settings: Settings, ts: TokenSession) -> tuple[str, HsmEcPrivateKey]:
    """The next intermediate key (P-256: chips verify and store its certificates)."""
    store = store_of(settings)
    name = store.next_name(settings.hsm.ca_key_label, set(key_labels(ts)))
    generate(ts, KeyRef(name, os.urandom(16)), KeyAlgorithm.EC_P256)
    return name, HsmEcPrivateKey(ts, name)


def make_csr(settings: Settings, pin_source: str | None = None) -> tuple[str, Path]:
    """Generate the next intermediate key in the factory token and write its CSR (for a
    root kept offline). Returns the key's name and the CSR file."""
    _ensure_tokens(settings, [(settings.hsm.factory_token, settings.pin_file)])
    with open_module(settings) as mod:
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings, pin_source))
        try:
            name, key = _new_factory_key(settings, ts)
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(_name(settings, settings.profile.ca_common_name))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(key_usage(ca=True), critical=True)
                .sign(key, hashes.SHA256())
            )
        finally:
            ts.close()
    return name, store_of(settings).write_csr(name, csr)


def import_certificate(
    settings: Settings,
    cert_file: Path,
    root_file: Path | None = None,
    pin_source: str | None = None,
) -> CaInfo:
    """Install a root-signed intermediate certificate for a key made by :func:`make_csr`.

    Refused unless the certificate's key is one of the pending keys (and still in the
    token), it chains to the root, it is a CA certificate limited to signing end entities,
    and chips can store it compressed. ``root_file`` is needed the first time (no
    ``root.pem`` yet) and must otherwise be the same root."""
    from provisioner.chips.certdef import signer_definition

    store = store_of(settings)
    cert = load_cert_file(cert_file)
    root = _root_for_import(store, root_file)
    try:
        cert.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError):
        raise InvalidInputError(
            f"{cert_file} is not signed by the root {root.subject.rfc4514_string()}"
        ) from None
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise InvalidInputError(f"{cert_file} is not a CA certificate (basicConstraints)")
    ku = _ext(cert, x509.KeyUsage)
    if ku is None or not ku.key_cert_sign:
        raise InvalidInputError(f"{cert_file} does not allow keyCertSign")
    for what, c in (("the intermediate", cert), ("the root", root)):
        pub = c.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
            raise InvalidInputError(
                f"{what} must have a P-256 key: chips verify the chain and store the "
                "intermediate compressed, with its P-256 ECDSA signature"
            )
    pending = store.pending()
    name = next((n for n, csr in pending.items() if csr.public_key() == cert.public_key()), None)
    if name is None:
        raise InvalidInputError(
            f"{cert_file} does not belong to any pending key "
            f"({', '.join(pending) or 'none: run `provisioner ca csr` first'})"
        )
    try:
        signer_definition(
            cert.public_bytes(serialization.Encoding.DER),
            key_slot=settings.chip.signer_key_slot,
            cert_slot=settings.chip.signer_cert_slot,
            template_id=settings.chip.signer_template_id,
            chain_id=settings.chip.chain_id,
        )
    except InvalidInputError as exc:
        raise InvalidInputError(f"{cert_file}: chips cannot store it: {exc}") from None
    with open_module(settings) as mod:
        ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings, pin_source))
        try:
            if HsmEcPrivateKey(ts, name).public_key() != cert.public_key():
                raise InvalidInputError(f"the key {name!r} in the token does not match")
        finally:
            ts.close()
    if not store.root_pem.exists():
        store.write_root(root)
    store.install_intermediate(name, cert)
    return _info(True, root, cert, name)


def _root_for_import(store: CaStore, root_file: Path | None) -> x509.Certificate:
    have = store.root() if store.root_pem.exists() else None
    if root_file is None:
        if have is None:
            raise InvalidInputError("no root.pem yet: pass --root ROOT.pem (the root cert)")
        return have
    given = load_cert_file(root_file)
    if have is not None and given != have:
        raise InvalidInputError(
            f"{root_file} is not this CA's root ({store.root_pem}); a new root needs "
            "`provisioner ca init --force`"
        )
    try:
        given.verify_directly_issued_by(given)
    except (InvalidSignature, ValueError, TypeError):
        raise InvalidInputError(f"{root_file} is not a self-signed root") from None
    return given


def _ext(cert: x509.Certificate, kind: type[E]) -> E | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def rotate(settings: Settings, pin_source: str | None = None) -> CaInfo:
    """Make the next intermediate, signed by the root token, and make it current. The
    previous intermediate stays archived (and its key in the token) for CRLs. With the root
    kept offline, use ``ca csr`` + ``ca import-cert`` instead."""
    store = store_of(settings)
    root = store.root()
    with open_module(settings) as mod:
        if mod.find_token(settings.hsm.root_token) is None or not settings.root_pin_file.exists():
            raise HsmError(
                f"the root token {settings.hsm.root_token!r} is not on this machine (root "
                "kept offline): run `provisioner ca csr`, have the root sign it, then "
                "`provisioner ca import-cert`"
            )
        root_ts = mod.open_token(settings.hsm.root_token, settings.root_pin_file)
        fac_ts = mod.open_token(settings.hsm.factory_token, factory_pin(settings, pin_source))
        try:
            key_of_root = token_key(root_ts, find_root_label(settings, root_ts, root))
            if not store.intermediates():  # a CA from before rotations: archive it first
                store.install_intermediate(settings.hsm.ca_key_label, store.intermediate())
            name, key = _new_factory_key(settings, fac_ts)
            inter = _sign_intermediate(settings, key_of_root, root, key.public_key())
            store.install_intermediate(name, inter)
        finally:
            root_ts.close()
            fac_ts.close()
    return _info(True, root, inter, name)


def load_ca(
    settings: Settings,
    *,
    pin_source: str | None = None,
    on_change: Callable[[BreakerStatus], None] | None = None,
) -> LoadedCa:
    """Open the factory token (a session pool behind a circuit breaker) and the current
    intermediate key for signing; the caller closes it."""
    store = store_of(settings)
    for path in (store.root_pem, store.intermediate_pem):
        if not path.exists():
            raise CaNotInitialisedError(f"{path} is missing")
    source = factory_pin(settings, pin_source)
    if source.path is not None and not source.path.exists():
        raise CaNotInitialisedError(f"PIN file {source.path} is missing")
    name = store.current_name(settings.hsm.ca_key_label)
    use_station_conf(settings)
    h = settings.hsm
    pool = TokenPool(
        h.module,
        h.factory_token,
        source,
        size=h.session_pool_size,
        acquire_timeout_s=h.acquire_timeout_s,
        retry_base_s=h.retry_base_s,
        retry_max_s=h.retry_max_s,
        on_change=on_change,
        probe=lambda ts: find_private_key(ts, name),
    )
    try:
        try:
            pool.open()
            key = HsmEcPrivateKey(pool, name)
        except HsmKeyNotFoundError:
            raise CaNotInitialisedError(f"no key {name!r} in token {h.factory_token!r}") from None
    except BaseException:
        pool.close()
        raise
    inter, root = store.intermediate(), store.root()
    if key.public_key() != inter.public_key():
        pool.close()
        raise HsmError(
            f"{store.intermediate_pem} does not belong to key {name!r} in token "
            f"{h.factory_token!r}: re-run `provisioner ca init --force`"
        )
    return LoadedCa(pool, key, inter, root, name)
