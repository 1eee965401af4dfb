"""The CA's public files under ``<var>/ca``: certificates and CSRs, never keys.

::

    root.pem                    the root (its key is in the root token, or offline)
    intermediate.pem            the current intermediate: what signs, what chips store
    intermediates/<name>.pem    every intermediate ever installed (kept after a rotation,
                                for verification and CRLs); <name> is its key's label
    pending/<name>.csr.pem      CSRs of keys waiting for the root's certificate

Writes are atomic (temporary file + rename), so a station reading ``intermediate.pem``
never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from provisioner.errors import CaNotInitialisedError, InvalidInputError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def load_cert_file(path: Path) -> x509.Certificate:
    """A PEM or DER certificate from a file the admin handed us."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError
        raise InvalidInputError(f"{path} is not an X.509 certificate (PEM or DER)") from None


@dataclass(frozen=True)
class CaStore:
    """Paths and reads/writes of the public CA material in one directory."""

    root_dir: Path

    @property
    def root_pem(self) -> Path:
        return self.root_dir / "root.pem"

    @property
    def intermediate_pem(self) -> Path:
        return self.root_dir / "intermediate.pem"

    def archived(self, name: str) -> Path:
        return self.root_dir / "intermediates" / f"{name}.pem"

    def pending_csr(self, name: str) -> Path:
        return self.root_dir / "pending" / f"{name}.csr.pem"

    # --- reads --------------------------------------------------------------------------

    def root(self) -> x509.Certificate:
        return self._load(self.root_pem)

    def intermediate(self) -> x509.Certificate:
        return self._load(self.intermediate_pem)

    def _load(self, path: Path) -> x509.Certificate:
        if not path.exists():
            raise CaNotInitialisedError(f"{path} is missing")
        return x509.load_pem_x509_certificate(path.read_bytes())

    def intermediates(self) -> dict[str, x509.Certificate]:
        """Every archived intermediate by name, oldest first (by notBefore)."""
        folder = self.root_dir / "intermediates"
        found = {
            p.name.removesuffix(".pem"): x509.load_pem_x509_certificate(p.read_bytes())
            for p in sorted(folder.glob("*.pem"))
        }
        return dict(sorted(found.items(), key=lambda kv: kv[1].not_valid_before_utc))

    def current_name(self, legacy_name: str) -> str:
        """The key label of the current intermediate. A CA made before rotations existed
        has no archive: its key carries the configured label."""
        current = self.intermediate()
        for name, cert in self.intermediates().items():
            if cert == current:
                return name
        return legacy_name

    def pending(self) -> dict[str, x509.CertificateSigningRequest]:
        folder = self.root_dir / "pending"
        return {
            p.name.removesuffix(".csr.pem"): x509.load_pem_x509_csr(p.read_bytes())
            for p in sorted(folder.glob("*.csr.pem"))
        }

    def next_name(self, base: str, taken: set[str]) -> str:
        """``base``, then ``base-2``, ``base-3`` ...: the first label not used anywhere."""
        used = taken | set(self.intermediates()) | set(self.pending())
        if base not in used:
            return base
        n = 2
        while f"{base}-{n}" in used:
            n += 1
        return f"{base}-{n}"

    # --- writes -------------------------------------------------------------------------

    def write_root(self, cert: x509.Certificate) -> None:
        _write_atomic(self.root_pem, cert.public_bytes(serialization.Encoding.PEM))

    def install_intermediate(self, name: str, cert: x509.Certificate) -> None:
        """Archive ``cert`` under ``name`` and make it the current intermediate."""
        pem = cert.public_bytes(serialization.Encoding.PEM)
        _write_atomic(self.archived(name), pem)
        _write_atomic(self.intermediate_pem, pem)
        self.pending_csr(name).unlink(missing_ok=True)

    def write_csr(self, name: str, csr: x509.CertificateSigningRequest) -> Path:
        path = self.pending_csr(name)
        _write_atomic(path, csr.public_bytes(serialization.Encoding.PEM))
        return path

    def clear(self) -> None:
        """Forget every public file (``ca init --force``)."""
        for path in (
            self.root_pem,
            self.intermediate_pem,
            *(self.root_dir / "intermediates").glob("*.pem"),
            *(self.root_dir / "pending").glob("*.pem"),
        ):
            path.unlink(missing_ok=True)
