"""The report signature: round trip, an edited report, the wrong key, and that a report
signature and a checkpoint are never taken for one another (same audit key, both ways)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit import checkpoint as cp
from provisioner.errors import ProofError
from provisioner.reports import signing
from provisioner.reports.signing import ReportSignatureError, sign_report, verify_report_bytes

ORIGIN = "factory.example/audit"
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER = ec.generate_private_key(ec.SECP256R1())
HTML = b"<!DOCTYPE html>\n<html><body><p>Devices: 1234, yield 98.7 %</p></body></html>\n"


class TokenKey:
    """A stand-in for an HSM-held key: only sign() and public_key() work."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        assert isinstance(algorithm, ec.ECDSA) and isinstance(algorithm.algorithm, hashes.SHA256)
        return self._key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()


def signed(html: bytes = HTML, batch_id: int = 7) -> bytes:
    return sign_report(html, TokenKey(KEY), ORIGIN, batch_id)


def refused(data: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> ReportSignatureError:
    with pytest.raises(ReportSignatureError) as info:
        verify_report_bytes(data, key.public_key())
    return info.value


def block_note(data: bytes) -> str:
    """The signed note inside a report's signature comment."""
    at = data.rfind(signing.BLOCK_START)
    return data[at + len(signing.BLOCK_START) : -len(signing.BLOCK_END)].decode()


def test_round_trip_and_exact_layout() -> None:
    data = signed()
    assert verify_report_bytes(data, KEY.public_key()) == (7, ORIGIN)
    assert data.startswith(HTML)
    lines = data[len(HTML) :].decode().split("\n")
    assert lines[:6] == [
        "<!-- provisioner-report-signature",
        "provisioner batch report v1",
        f"origin {ORIGIN}",
        "batch 7",
        f"html-sha256 {hashlib.sha256(HTML).hexdigest()}",
        "",
    ]
    assert lines[6].startswith(f"\u2014 {ORIGIN} ")
    assert lines[7:] == ["-->", ""]


def test_one_changed_digit_is_refused_and_says_so() -> None:
    data = signed()
    edited = data.replace(b"1234", b"1235", 1)
    assert edited != data
    err = refused(edited)
    assert err.kind == "changed"
    assert "batch 7 was changed after it was signed" in str(err)


def test_an_edited_statement_is_refused() -> None:
    """Changing the batch id (or the stated hash) in the block breaks the signature."""
    err = refused(signed().replace(b"\nbatch 7\n", b"\nbatch 8\n"))
    assert err.kind == "changed" and "signature block was changed" in str(err)


def test_the_wrong_key_is_blamed_not_the_report() -> None:
    err = refused(signed(), OTHER)
    assert err.kind == "key"
    assert "not signed by this key" in str(err)
    assert signing.key_fingerprint(OTHER.public_key()) in str(err)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (HTML, "no signature block"),
        (b"", "no signature block"),
        (signed() + b"<p>appended</p>\n", "cut or followed"),
        (signed()[:-5], "cut or followed"),
    ],
)
def test_not_a_signed_report_is_a_format_error(data: bytes, why: str) -> None:
    err = refused(data)
    assert err.kind == "format" and why in str(err)


def test_a_report_signature_is_not_a_checkpoint() -> None:
    note = block_note(signed())
    with pytest.raises(ProofError):
        cp.open_signed(note, ORIGIN, KEY.public_key())
    # Its signature line under a checkpoint's text: the signed bytes differ, so it fails.
    checkpoint = cp.Checkpoint(ORIGIN, 10, hashlib.sha256(b"root").digest())
    sig_line = note.split("\n\n", 1)[1]
    with pytest.raises(ProofError, match="invalid"):
        cp.open_signed(checkpoint.body() + "\n" + sig_line, ORIGIN, KEY.public_key())


def test_a_checkpoint_is_not_a_report_signature() -> None:
    checkpoint = cp.Checkpoint(ORIGIN, 10, hashlib.sha256(b"root").digest())
    note = cp.sign(checkpoint, ORIGIN, KEY)
    as_report = HTML + signing.BLOCK_START + note.encode() + signing.BLOCK_END
    err = refused(as_report)
    assert err.kind == "format" and "first line" in str(err)
    # The checkpoint's signature line under a report statement: refused as well.
    statement = signing.statement(ORIGIN, 7, hashlib.sha256(HTML).hexdigest())
    spliced = statement + "\n" + note.split("\n\n", 1)[1]
    err = refused(HTML + signing.BLOCK_START + spliced.encode() + signing.BLOCK_END)
    assert err.kind == "changed"


def test_signing_refuses_what_would_not_verify() -> None:
    with pytest.raises(ValueError, match="newline"):
        sign_report(HTML.rstrip(b"\n"), KEY, ORIGIN, 1)
    with pytest.raises(ValueError, match="origin"):
        sign_report(HTML, KEY, "a-->b", 1)
    with pytest.raises(ValueError, match="P-256"):
        sign_report(HTML, ec.generate_private_key(ec.SECP384R1()), ORIGIN, 1)
    with pytest.raises(ValueError, match="signature block"):
        sign_report(signed(), KEY, ORIGIN, 1)  # a report is signed once


def test_the_standalone_verifier_checks_reports(tmp_path: Path) -> None:
    """The auditors' one-file verifier, run as a script: verified, changed, wrong key and
    wrong input each with its own exit code and words."""
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    from provisioner.audit import verifier

    script = Path(verifier.__file__)

    def pem(key: ec.EllipticCurvePrivateKey, name: str) -> Path:
        path = tmp_path / name
        path.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return path

    def run(data: bytes, key: Path) -> subprocess.CompletedProcess[str]:
        report = tmp_path / "report.html"
        report.write_bytes(data)
        return subprocess.run(
            [sys.executable, "-I", str(script), "report", str(report), "--key", str(key)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    ours, theirs = pem(KEY, "audit-key.pem"), pem(OTHER, "other.pem")
    good = run(signed(), ours)
    assert good.returncode == 0 and "report verified: batch 7" in good.stdout, good
    changed = run(signed().replace(b"1234", b"1235"), ours)
    assert changed.returncode == 1 and "changed after it was signed" in changed.stderr, changed
    wrong_key = run(signed(), theirs)
    assert wrong_key.returncode == 1 and "not signed by this key" in wrong_key.stderr, wrong_key
    not_a_report = run(HTML, ours)
    assert not_a_report.returncode == 2 and "not a signed batch report" in not_a_report.stderr
