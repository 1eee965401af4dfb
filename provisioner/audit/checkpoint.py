"""Signed tree heads as C2SP tlog-checkpoints in C2SP signed notes, signed with ECDSA P-256.

A checkpoint commits the log to its size and root hash; signing it with the audit key is
what makes later tampering (rewriting or dropping entries) detectable by anyone holding
the public key. The standard formats (https://c2sp.org/tlog-checkpoint and
https://c2sp.org/signed-note, signature type 0x02) are used so that off-the-shelf
transparency tooling can read and verify our checkpoints.

Text layout::

    <origin>
    <tree size>
    <base64 root hash>

    — <key name> <base64(key ID || DER ECDSA signature)>
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit.merkle import HASH_SIZE
from provisioner.errors import ProofError

_DASH = "\u2014"  # em dash that opens every signature line
_KEY_ID_SIZE = 4
_MAX_SIGNATURES = 100  # signed-note: verifiers SHOULD bound this, and MUST accept at least 16
_MAX_SIZE = 2**63 - 1  # tree sizes are stored as signed 64-bit integers
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")


@dataclass(frozen=True)
class Checkpoint:
    """One signed statement of the log: its origin, size and Merkle root."""

    origin: str
    size: int
    root: bytes  # 32 bytes

    def body(self) -> str:
        """The note text that gets signed, exactly as tlog-checkpoint lays it out."""
        root = base64.b64encode(self.root).decode("ascii")
        return f"{self.origin}\n{self.size}\n{root}\n"


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte key ID of signature type 0x02: SHA-256 of the DER SPKI, truncated.

    It only routes signature lines to the right key; security comes from the signature.
    """
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()[:_KEY_ID_SIZE]


def sign(checkpoint: Checkpoint, key_name: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The signed note text.

    ``key`` may be a token-held key whose only working methods are
    ``sign(data, ec.ECDSA(hashes.SHA256()))`` and ``public_key()``, so nothing else is
    called on it. Invalid names or checkpoint fields are caller bugs and raise ValueError:
    signing them would produce a note that no verifier accepts.
    """
    _check_key_name(key_name)
    _check_checkpoint(checkpoint)
    public_key = key.public_key()
    if not isinstance(public_key.curve, ec.SECP256R1):
        raise ValueError(f"checkpoint keys must be P-256, not {public_key.curve.name}")
    text = checkpoint.body()
    signature = key.sign(text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    blob = base64.b64encode(key_id(public_key) + signature).decode("ascii")
    return f"{text}\n{_DASH} {key_name} {blob}\n"


def open_signed(
    note: str,
    key_name: str,
    public_key: ec.EllipticCurvePublicKey,
    origin: str | None = None,
) -> Checkpoint:
    """Parse and verify a signed checkpoint; ProofError on any defect.

    Signature lines from other keys (other name or other key ID) are ignored, as the
    signed-note spec requires, so witnesses may cosign; but a signature line from our key
    that fails to verify rejects the whole note. The text is only parsed once it is known
    to be signed, so nothing is learned from unauthenticated content.
    """
    text, signatures = _split_note(note)
    _verify_signatures(text, signatures, key_name, public_key)
    checkpoint = _parse_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise ProofError(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint


# --- validation for signing -------------------------------------------------------------------


def _has_control(s: str) -> bool:
    """Signed notes must not contain ASCII control characters other than newline."""
    return any(ord(c) < 0x20 and c != "\n" for c in s)


def _check_key_name(key_name: str) -> None:
    """signed-note: key names are non-empty, without Unicode spaces or '+'."""
    if not key_name or "+" in key_name or any(c.isspace() for c in key_name):
        raise ValueError(f"invalid note key name {key_name!r}: non-empty, no spaces, no '+'")
    if _has_control(key_name):
        raise ValueError(f"invalid note key name {key_name!r}: control character")


def _check_checkpoint(checkpoint: Checkpoint) -> None:
    """tlog-checkpoint: a non-empty one-line origin, a non-negative size, a 32-byte root."""
    origin = checkpoint.origin
    if not origin or "\n" in origin or _has_control(origin):
        raise ValueError(f"invalid checkpoint origin {origin!r}: non-empty, one line")
    if not 0 <= checkpoint.size <= _MAX_SIZE:
        raise ValueError(f"invalid checkpoint tree size {checkpoint.size}")
    if len(checkpoint.root) != HASH_SIZE:
        raise ValueError(f"checkpoint root must be {HASH_SIZE} bytes")


# --- parsing and verification ------------------------------------------------------------------


def _b64decode(value: str, what: str) -> bytes:
    """Strict standard base64: valid alphabet and padding, and the canonical encoding."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ProofError(f"checkpoint {what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != value:
        raise ProofError(f"checkpoint {what} is not canonical base64")
    return raw


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a signed note into its text and its (key name, key ID || signature) lines."""
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise ProofError("signed checkpoint is not valid UTF-8") from None
    if _has_control(note):
        raise ProofError("signed checkpoint contains a control character")
    if not note.endswith("\n"):
        raise ProofError("signed checkpoint does not end with a newline")
    cut = note.rfind("\n\n")  # the text ends at the last blank line
    if cut < 0:
        raise ProofError("signed checkpoint has no blank line before its signatures")
    text, lines = note[: cut + 1], note[cut + 2 :].splitlines()
    if not lines:
        raise ProofError("signed checkpoint has no signature lines")
    if len(lines) > _MAX_SIGNATURES:
        raise ProofError(f"signed checkpoint has more than {_MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    """``— <name> <base64>`` to (name, decoded blob)."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != _DASH or not parts[1]:
        raise ProofError(f"malformed signature line in checkpoint: {line[:80]!r}")
    blob = _b64decode(parts[2], "signature")
    if len(blob) <= _KEY_ID_SIZE:
        raise ProofError("checkpoint signature is too short")
    return parts[1], blob


def _verify_signatures(
    text: str,
    signatures: list[tuple[str, bytes]],
    key_name: str,
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    """Require at least one signature from (key_name, key ID), and that all of them verify."""
    kid = key_id(public_key)
    ours = [
        blob[_KEY_ID_SIZE:]
        for name, blob in signatures
        if (name, blob[:_KEY_ID_SIZE]) == (key_name, kid)
    ]
    if not ours:
        raise ProofError(f"checkpoint is not signed by key {key_name!r}")
    data = text.encode("utf-8")
    for signature in ours:
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ProofError(f"checkpoint signature by key {key_name!r} is invalid") from None


def _parse_body(text: str) -> Checkpoint:
    """tlog-checkpoint text: origin, size, root, then optional (ignored) extension lines."""
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise ProofError("checkpoint text needs origin, size and root on non-empty lines")
    origin, size, root = lines[:3]
    if len(size) > len(str(_MAX_SIZE)) or not _DECIMAL.fullmatch(size) or int(size) > _MAX_SIZE:
        raise ProofError(f"checkpoint tree size {size[:30]!r} is not a canonical decimal")
    raw_root = _b64decode(root, "root hash")
    if len(raw_root) != HASH_SIZE:
        raise ProofError(f"checkpoint root hash is {len(raw_root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, int(size), raw_root)
