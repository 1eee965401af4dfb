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

Parsing and checking a note is the standalone verifier's
(:mod:`provisioner.audit.verifier`), so auditors and the product run the same code; what
only the factory does, signing, is here.
"""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit import verifier
from provisioner.audit.verifier import DASH, HASH_SIZE, MAX_TREE_SIZE, Checkpoint, key_id
from provisioner.errors import ProofError

__all__ = ["Checkpoint", "key_id", "open_signed", "sign"]


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
    return f"{text}\n{DASH} {key_name} {blob}\n"


def open_signed(
    note: str,
    key_name: str,
    public_key: ec.EllipticCurvePublicKey,
    origin: str | None = None,
) -> Checkpoint:
    """Parse and verify a signed checkpoint (:func:`verifier.open_checkpoint`); ProofError
    on any defect. Its ``__cause__`` is the verifier's error, which tells a malformed note
    (``verifier.WrongInput``) and a note not signed by this key (``verifier.WrongKey``)
    from one that does not verify."""
    try:
        return verifier.open_checkpoint(note, public_key, key_name, origin)
    except verifier.VerifierError as exc:
        raise ProofError(str(exc)) from exc


# --- validation for signing -------------------------------------------------------------------


def _check_key_name(key_name: str) -> None:
    """signed-note: key names are non-empty, without Unicode spaces or '+'."""
    if not key_name or "+" in key_name or any(c.isspace() for c in key_name):
        raise ValueError(f"invalid note key name {key_name!r}: non-empty, no spaces, no '+'")
    if verifier.has_control(key_name):
        raise ValueError(f"invalid note key name {key_name!r}: control character")


def _check_checkpoint(checkpoint: Checkpoint) -> None:
    """tlog-checkpoint: a non-empty one-line origin, a non-negative size, a 32-byte root."""
    origin = checkpoint.origin
    if not origin or "\n" in origin or verifier.has_control(origin):
        raise ValueError(f"invalid checkpoint origin {origin!r}: non-empty, one line")
    if not 0 <= checkpoint.size <= MAX_TREE_SIZE:
        raise ValueError(f"invalid checkpoint tree size {checkpoint.size}")
    if len(checkpoint.root) != HASH_SIZE:
        raise ValueError(f"checkpoint root must be {HASH_SIZE} bytes")
