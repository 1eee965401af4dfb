"""Every certificate the CA makes passes `openssl verify -x509_strict` and pkilint's
`lint_pkix_cert` with no finding of WARNING or worse: device certificates for each shipped
profile, the intermediate and the root, all signed in SoftHSM. A deliberately flawed
certificate shows the linter is really run and really reports."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioner.ca.ceremony import init_ca, load_ca
from provisioner.ca.issuer import build_device_certificate, random_serial_number
from provisioner.settings import Settings
from tests.ca.test_ceremony_lifecycle import _request
from tests.chips.test_compressed_certs import SHIPPED

LINT = Path(sys.executable).with_name("lint_pkix_cert")


def _lint(path: Path) -> list[dict[str, Any]]:
    """pkilint's findings of WARNING or worse (its JSON output)."""
    assert LINT.exists(), f"{LINT} missing: pkilint is a dev dependency (make install)"
    proc = subprocess.run(
        [str(LINT), "lint", "-s", "WARNING", "-f", "JSON", str(path)],
        capture_output=True,
        text=True,
    )
    results: list[dict[str, Any]] = json.loads(proc.stdout)["results"]
    assert (proc.returncode == 0) == (results == []), proc.stderr
    return results


def _strict_verify(root: Path, inter: Path, leaf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(root),
         "-untrusted", str(inter), str(leaf)],
        capture_output=True,
        text=True,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_device_certificates_of_every_shipped_profile_lint_clean(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOFTHSM2_CONF", "/nonexistent")
    settings = Settings(var_dir=tmp_path / "var", **SHIPPED[name])
    init_ca(settings)
    ca = load_ca(settings)
    try:
        cert = build_device_certificate(
            _request(), ca, settings.profile, random_serial_number(), dt.datetime.now(dt.UTC)
        )
    finally:
        ca.close()
    leaf = tmp_path / "device.pem"
    leaf.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    root, inter = settings.ca_dir / "root.pem", settings.ca_dir / "intermediate.pem"
    proc = _strict_verify(root, inter, leaf)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for path in (leaf, inter, root):
        assert _lint(path) == [], f"{name}: {path.name}"


def test_the_linter_is_really_consulted(tmp_path: Path) -> None:
    """An end-entity certificate without SKI/AKI and with keyCertSign, non-critical KU."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flawed")])
    now = dt.datetime.now(dt.UTC)
    flawed = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "flawed.pem"
    path.write_bytes(flawed.public_bytes(serialization.Encoding.PEM))
    codes = {f["code"] for r in _lint(path) for f in r["finding_descriptions"]}
    assert "pkix.ee_certificate_keycertsign_keyusage_set" in codes
    assert "pkix.key_usage_extension_not_critical" in codes
    assert shutil.which("openssl")
