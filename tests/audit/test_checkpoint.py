"""Signed checkpoints: the C2SP tlog-checkpoint / signed-note text, and what open_signed refuses.

Each rejection case edits a genuinely signed note, so a pass means the specific defect was
caught rather than some unrelated parse error.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit import checkpoint as cp
from provisioner.audit import merkle
from provisioner.errors import ProofError

ORIGIN = "factory.example/audit"
ROOT = hashlib.sha256(b"some root").digest()
CHECKPOINT = cp.Checkpoint(ORIGIN, 1234, ROOT)
KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_KEY = ec.generate_private_key(ec.SECP256R1())


class TokenKey:
    """A stand-in for an HSM-held key: only sign() and public_key() work."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes, algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        assert isinstance(algorithm, ec.ECDSA)
        assert isinstance(algorithm.algorithm, hashes.SHA256)
        return self._key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()


def signed(key: ec.EllipticCurvePrivateKey = KEY, name: str = ORIGIN) -> str:
    return cp.sign(CHECKPOINT, name, key)


def rejected(note: str, origin: str | None = None) -> str:
    """The ProofError message open_signed gives for ``note``."""
    with pytest.raises(ProofError) as info:
        cp.open_signed(note, ORIGIN, KEY.public_key(), origin)
    return str(info.value)


def test_round_trip() -> None:
    note = signed()
    assert cp.open_signed(note, ORIGIN, KEY.public_key()) == CHECKPOINT
    assert cp.open_signed(note, ORIGIN, KEY.public_key(), ORIGIN) == CHECKPOINT


def test_round_trip_with_a_token_key() -> None:
    note = cp.sign(CHECKPOINT, ORIGIN, TokenKey(KEY))  # type: ignore[arg-type]
    assert cp.open_signed(note, ORIGIN, KEY.public_key()) == CHECKPOINT


def test_empty_tree_round_trip() -> None:
    empty = cp.Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT)
    note = cp.sign(empty, ORIGIN, KEY)
    assert note.startswith(f"{ORIGIN}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n\n")
    assert cp.open_signed(note, ORIGIN, KEY.public_key()) == empty


def test_exact_layout() -> None:
    note = signed()
    lines = note.split("\n")
    assert lines[0] == ORIGIN
    assert lines[1] == "1234"
    assert lines[2] == base64.b64encode(ROOT).decode()
    assert lines[3] == ""
    assert lines[4].startswith(f"\u2014 {ORIGIN} ")
    assert lines[5] == ""
    assert len(lines) == 6
    assert CHECKPOINT.body() == "\n".join(lines[:3]) + "\n"
    blob = base64.b64decode(lines[4].split(" ")[2], validate=True)
    assert blob[:4] == cp.key_id(KEY.public_key())
    # The rest is a DER ECDSA signature over exactly the body bytes.
    KEY.public_key().verify(blob[4:], CHECKPOINT.body().encode(), ec.ECDSA(hashes.SHA256()))


def test_key_id_is_truncated_sha256_of_spki() -> None:
    spki = KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert cp.key_id(KEY.public_key()) == hashlib.sha256(spki).digest()[:4]
    assert cp.key_id(KEY.public_key()) != cp.key_id(OTHER_KEY.public_key())


def test_sign_validates_names() -> None:
    for name in ["", "a b", "a+b", "a\tb", "a\u00a0b"]:
        with pytest.raises(ValueError):
            cp.sign(CHECKPOINT, name, KEY)
    for origin in ["", "a\nb", "a\rb"]:
        with pytest.raises(ValueError):
            cp.sign(cp.Checkpoint(origin, 1, ROOT), ORIGIN, KEY)
    with pytest.raises(ValueError):
        cp.sign(cp.Checkpoint(ORIGIN, 1, ROOT[:31]), ORIGIN, KEY)
    with pytest.raises(ValueError):
        cp.sign(cp.Checkpoint(ORIGIN, -1, ROOT), ORIGIN, KEY)


def test_origin_may_differ_from_key_name() -> None:
    note = cp.sign(CHECKPOINT, "witness.example/k1", KEY)
    assert cp.open_signed(note, "witness.example/k1", KEY.public_key()).origin == ORIGIN


# --- rejections -------------------------------------------------------------------------------


def test_rejects_other_key() -> None:
    assert "not signed by" in rejected(signed(OTHER_KEY))


def test_rejects_same_name_and_id_but_bad_signature() -> None:
    note = signed()
    # Re-sign a different body with our key and graft the signature onto the original.
    forged = cp.sign(cp.Checkpoint(ORIGIN, 1235, ROOT), ORIGIN, KEY)
    body, _, _ = note.partition("\n\n")
    _, _, sig = forged.partition("\n\n")
    assert "invalid" in rejected(f"{body}\n\n{sig}")


def test_rejects_edited_size() -> None:
    assert "invalid" in rejected(signed().replace("\n1234\n", "\n1235\n", 1))


def test_rejects_edited_root() -> None:
    note = signed()
    root_b64 = base64.b64encode(ROOT).decode()
    other = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    assert "invalid" in rejected(note.replace(root_b64, other, 1))


def test_rejects_edited_origin_line() -> None:
    note = signed()
    assert "invalid" in rejected("x" + note)


def test_rejects_origin_mismatch() -> None:
    assert "expected" in rejected(signed(), origin="factory.example/other")


def test_rejects_missing_blank_line() -> None:
    note = signed().replace("\n\n", "\n", 1)
    assert "blank line" in rejected(note)


def test_rejects_control_character() -> None:
    note = signed()
    assert "control" in rejected(note.replace("\n", "\r\n", 1))
    assert "control" in rejected(note.replace("\n", "\n\x00", 1))


def test_rejects_missing_final_newline() -> None:
    rejected(signed()[:-1])


def test_rejects_truncated_base64() -> None:
    note = signed()
    for cut in (1, 2, 3):  # any cut that is not a whole base64 quantum
        assert "base64" in rejected(note[: -1 - cut] + "\n")


def test_rejects_bad_root_encoding() -> None:
    # These must be signed for the body to be looked at at all.
    short = base64.b64encode(ROOT[:31]).decode()
    raw_note = f"{ORIGIN}\n5\n{short}\n"
    assert "not 32" in rejected(_sign_raw(raw_note))
    assert "base64" in rejected(_sign_raw(f"{ORIGIN}\n5\n!!!!\n"))


@pytest.mark.parametrize("size", ["01", "-1", "+1", " 1", "1.0", "\u0661", "", "1" * 30])
def test_rejects_non_canonical_size(size: str) -> None:
    root = base64.b64encode(ROOT).decode()
    rejected(_sign_raw(f"{ORIGIN}\n{size}\n{root}\n"))


def test_extension_lines_are_ignored() -> None:
    root = base64.b64encode(ROOT).decode()
    note = _sign_raw(f"{ORIGIN}\n1234\n{root}\nextension one\nextension two\n")
    assert cp.open_signed(note, ORIGIN, KEY.public_key()) == CHECKPOINT


def test_foreign_signature_lines_are_ignored() -> None:
    note = signed()
    foreign_same_name = signed(OTHER_KEY).partition("\n\n")[2]
    foreign_other_name = signed(OTHER_KEY, "witness.example/w1").partition("\n\n")[2]
    # Our key's id under another name is "another key" too.
    ours_other_name = signed(KEY, "witness.example/w2").partition("\n\n")[2]
    extended = note + foreign_same_name + foreign_other_name + ours_other_name
    assert cp.open_signed(extended, ORIGIN, KEY.public_key()) == CHECKPOINT
    body, _, ours = note.partition("\n\n")
    first = f"{body}\n\n{foreign_other_name}{ours}"
    assert cp.open_signed(first, ORIGIN, KEY.public_key()) == CHECKPOINT


def test_rejects_note_with_only_foreign_signatures() -> None:
    body = signed().partition("\n\n")[0]
    foreign = (
        signed(OTHER_KEY).partition("\n\n")[2]
        + signed(OTHER_KEY, "witness.example/w1").partition("\n\n")[2]
        + signed(KEY, "witness.example/w2").partition("\n\n")[2]
    )
    assert "not signed by" in rejected(f"{body}\n\n{foreign}")


def test_rejects_malformed_signature_line() -> None:
    note = signed()
    rejected(note.replace("\u2014 ", "- ", 1))
    rejected(note + "\u2014 only-a-name\n")
    rejected(note.replace(f" {ORIGIN} ", f" {ORIGIN}  ", 1))


def _sign_raw(text: str) -> str:
    """A correctly signed note over arbitrary text, to reach the body parser."""
    sig = KEY.sign(text.encode(), ec.ECDSA(hashes.SHA256()))
    blob = base64.b64encode(cp.key_id(KEY.public_key()) + sig).decode()
    return f"{text}\n\u2014 {ORIGIN} {blob}\n"
