"""The signature of a batch report: a signed statement appended to the HTML as a comment.

A report is handed to a customer or a certification body, who must be able to tell that it
came from this factory's audit key and that not one digit of it changed since. The audit key
already signs the log's checkpoints, so the statement is *domain-separated*: its first line
names what it is (``provisioner batch report v1``) and its other lines are labelled
(``origin ...``, ``batch ...``, ``html-sha256 ...``), so its signed bytes can never parse as
a C2SP checkpoint (whose second line is a bare tree size and third a base64 root) and a
checkpoint's signed bytes never parse as a report statement. A signature over one is
therefore never accepted as the other.

File layout (UTF-8)::

    <HTML body, ending with a newline>
    <!-- provisioner-report-signature
    provisioner batch report v1
    origin <log origin>
    batch <batch id, decimal>
    html-sha256 <SHA-256 of the HTML body bytes, lower-case hex>

    — <log origin> <base64(4-byte key ID || DER ECDSA P-256 SHA-256 signature)>
    -->

The statement (its four lines, each ending with a newline) is what is signed, exactly as a
C2SP signed note's text is; the signature line is the signed note's (``—`` is U+2014, the key
ID is the first four bytes of SHA-256 over the key's DER SubjectPublicKeyInfo, as in the
checkpoints). The body is every byte before the line ``<!-- provisioner-report-signature``;
the block must be the end of the file.

The check is the auditors' standalone verifier's (:mod:`provisioner.audit.verifier`,
``verifier.py report FILE --key KEY``); only the signing is here.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

# The check lives in the auditors' standalone verifier (one implementation): re-exported.
from provisioner.audit.verifier import (
    BLOCK_END,
    BLOCK_START,
    DASH,
    REPORT_BATCH_ID,
    REPORT_HEADER,
    REPORT_ORIGIN,
    ReportSignatureError,
    report_key_id,
    statement,
    verify_report_bytes,
)
from provisioner.audit.verifier import key_sha256 as key_fingerprint

__all__ = [
    "BLOCK_END",
    "BLOCK_START",
    "REPORT_HEADER",
    "ReportSignatureError",
    "SigningKey",
    "key_fingerprint",
    "sign_report",
    "statement",
    "verify_report_bytes",
]

# --- signing (the product: the audit key in the HSM) -------------------------------------------


class SigningKey(Protocol):
    """What a token-held key offers: only ``sign`` and ``public_key`` work on it."""

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        """DER ECDSA signature."""
        ...

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The key's public half."""
        ...


def sign_report(html: bytes, key: SigningKey, origin: str, batch_id: int) -> bytes:
    """The report file: ``html`` followed by its signature block.

    Invalid arguments are caller bugs (ValueError): a report signed with them would not
    verify."""
    if not html.endswith(b"\n") or b"\n" + BLOCK_START in html:
        raise ValueError("the report body must end with a newline and hold no signature block")
    if not REPORT_ORIGIN.fullmatch(origin) or "--" in origin:
        raise ValueError(f"origin {origin!r} cannot be written in a report signature")
    if not REPORT_BATCH_ID.fullmatch(str(batch_id)):
        raise ValueError(f"invalid batch id {batch_id}")
    public_key = key.public_key()
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError(f"report keys must be P-256, not {public_key.curve.name}")
    text = statement(origin, batch_id, hashlib.sha256(html).hexdigest())
    signature = key.sign(text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    blob = base64.b64encode(report_key_id(public_key) + signature).decode("ascii")
    block = f"{text}\n{DASH} {origin} {blob}\n".encode()
    return html + BLOCK_START + block + BLOCK_END
