"""The root's CRL: the list of intermediates the root has revoked.

``openssl verify -crl_check_all`` (and any relying party that checks the whole chain)
wants a CRL for every CA in the path, the root included. The product revokes no
intermediate today (a rotation keeps the old one valid for its certificates), so this CRL
is empty; what matters is that it exists, is signed by the root and is fresh.

Published at ``<var>/ca/crl/root.crl`` (DER) and served by the API at ``/crl/root.crl`` like
the intermediates' CRLs; it lasts ``crl.root_next_update_days`` (a year by default) and is
re-signed when half of that has passed (:mod:`provisioner.ca.crl_schedule`).

Two ways to get it, as for the intermediate certificate:

* dev / single site: the root key is in the ``root`` token on this machine, and
  :func:`publish_root` signs it there;
* root kept offline: :func:`publish_root` says so (:class:`OfflineRootError`); the root's
  custodian signs a CRL at the root, and ``ca crl --import-root FILE`` installs it after
  checking it is the root's, its signature, its CRL number and that it is still current.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import Engine

from hsm.signer import token_key
from provisioner.ca.ceremony import find_root_label, open_module, store_of
from provisioner.ca.revocation import PublishedCrl, crl_path, sign_crl, write_crl
from provisioner.ca.store import load_cert_file
from provisioner.db.engine import transaction
from provisioner.errors import HsmError, InvalidInputError
from provisioner.settings import Settings

ROOT_CRL = "root"  # the file root.crl; the CRL number's counter


class OfflineRootError(HsmError):
    """The root key is not on this machine: the root's CRL must be imported."""


def root_crl_path(settings: Settings) -> Path:
    return crl_path(settings, ROOT_CRL)


def root_key_here(settings: Settings) -> bool:
    """Whether this machine holds the root token's PIN file (the dev / single-site CA);
    the token itself is checked when the CRL is signed."""
    return settings.root_pin_file.exists()


def _offline(settings: Settings) -> OfflineRootError:
    return OfflineRootError(
        f"the root token {settings.hsm.root_token!r} is not on this machine (root kept "
        "offline): have the root sign its CRL (empty: no intermediate is revoked) and "
        "install it with `provisioner ca crl --import-root ROOT.crl`"
    )


def publish_root(settings: Settings, engine: Engine, actor: str) -> PublishedCrl:
    """Sign the root's CRL with the root key in the ``root`` token and publish it.

    Raises :class:`OfflineRootError` when the root token is not here."""
    if not root_key_here(settings):
        raise _offline(settings)
    root = store_of(settings).root()
    next_update = timedelta(days=settings.crl.root_next_update_days)
    with open_module(settings) as mod:
        if mod.find_token(settings.hsm.root_token) is None:
            raise _offline(settings)
        ts = mod.open_token(settings.hsm.root_token, settings.root_pin_file)
        try:
            key = token_key(ts, find_root_label(settings, ts, root))
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise HsmError("the root key is not an EC key")
            with transaction(engine) as s:
                crl = sign_crl(s, ROOT_CRL, root, key, datetime.now(UTC), [], next_update)
                tmp, published = write_crl(s, settings, ROOT_CRL, crl, actor)
        finally:
            ts.close()
    os.replace(tmp, published.path)  # after the commit: a served number is never reused
    return published


def _number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def load_crl_file(path: Path) -> x509.CertificateRevocationList:
    """A CRL in DER or PEM, or InvalidInputError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise InvalidInputError(f"{path} is not a CRL (DER or PEM)") from None


def import_root(
    settings: Settings, engine: Engine, source: Path, actor: str, root_file: Path | None = None
) -> PublishedCrl:
    """Install a root CRL signed elsewhere (the offline root). Refused unless the root
    (``root.pem``, or ``root_file``) issued and signed it, it has a CRL number higher than
    the installed one's and its nextUpdate is still ahead."""
    root = load_cert_file(root_file) if root_file is not None else store_of(settings).root()
    crl = load_crl_file(source)
    if crl.issuer != root.subject:
        raise InvalidInputError(
            f"{source} is issued by {crl.issuer.rfc4514_string()!r}, not by the root "
            f"{root.subject.rfc4514_string()!r}"
        )
    pub = root.public_key()
    if not isinstance(pub, ec.EllipticCurvePublicKey):
        raise InvalidInputError("the root must have a P-256 key")
    algorithm = crl.signature_hash_algorithm
    if not isinstance(algorithm, hashes.HashAlgorithm):
        raise InvalidInputError(f"{source}: not an ECDSA signature with a hash the root uses")
    try:
        pub.verify(crl.signature, crl.tbs_certlist_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        raise InvalidInputError(
            f"{source}: the signature does not verify with the root key"
        ) from None
    number = _number(crl)
    if number is None:
        raise InvalidInputError(f"{source} has no CRL number (RFC 5280 5.2.3)")
    now = datetime.now(UTC)
    if crl.next_update_utc is None or crl.next_update_utc <= now:
        raise InvalidInputError(f"{source} is out of date (nextUpdate {crl.next_update_utc})")
    path = root_crl_path(settings)
    if path.exists():
        try:
            installed = _number(x509.load_der_x509_crl(path.read_bytes()))
        except ValueError:
            installed = None
        if installed is not None and number <= installed:
            raise InvalidInputError(
                f"{source} has CRL number {number}, not above the installed one's "
                f"({installed}): a relying party would keep the newer one"
            )
    with transaction(engine) as s:
        tmp, published = write_crl(s, settings, ROOT_CRL, crl, actor, "ca.root_crl_imported")
    os.replace(tmp, published.path)
    return published


def root_crl_status(settings: Settings) -> x509.CertificateRevocationList | None:
    """The installed root CRL, or None when there is none (or it cannot be read)."""
    path = root_crl_path(settings)
    try:
        return x509.load_der_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        return None
