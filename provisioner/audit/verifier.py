#!/usr/bin/env python3
"""Standalone verifier of the provisioner audit trail: one file, for auditors.

It checks what the factory hands an auditor, on the auditor's own machine, with nothing of
the product installed: Python 3.9 or newer and the ``cryptography`` package only.

    python verifier.py proof FILE --key audit-key.pem
    python verifier.py consistency FILE --key audit-key.pem
    python verifier.py segment EXPORT.jsonl --checkpoint CHECKPOINT.txt --key audit-key.pem
    python verifier.py report REPORT.html --key audit-key.pem

Exit status: 0 verified, 1 does NOT verify (or not signed by that key), 2 wrong input (a
file that is not what the command expects: nothing was checked, nothing is said about the
log). Add ``--json`` for a machine-readable answer.

This file is also the product's own implementation of everything an auditor must be able
to recompute: the canonical bytes of an event, RFC 6962 leaf and node hashes, inclusion and
consistency proof checks, and C2SP signed-note checkpoints (provisioner.audit.entry,
merkle, checkpoint and proofs import it). So what the auditor runs is exactly what the
factory runs. It must therefore never import ``provisioner``: standard library and
``cryptography`` only.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

EXIT_VERIFIED = 0
EXIT_NOT_VERIFIED = 1
EXIT_WRONG_INPUT = 2

# =============================================================================================
# Errors: each says what was found, what it means and what to do
# =============================================================================================


class VerifierError(Exception):
    """Base of every answer that is not "verified". ``str()`` is the one-line finding."""

    exit_code = EXIT_NOT_VERIFIED
    verdict = "does_not_verify"

    def __init__(self, message: str, meaning: str = "", todo: str = "") -> None:
        super().__init__(message)
        self.meaning = meaning
        self.todo = todo


class WrongInput(VerifierError):
    """The input is not what the command expects. Nothing was checked, so nothing is said
    about the log: this must never read like an alarm about the audit trail."""

    exit_code = EXIT_WRONG_INPUT
    verdict = "wrong_input"

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(
            f"not {what}: {reason}",
            "nothing was checked: this says nothing about the audit trail",
            "check you passed the right file to the right command (see --help)",
        )
        self.what = what
        self.reason = reason

    def about(self, name: str) -> str:
        """The finding about one named file: ``FILE is not a proof file: ...``."""
        return f"{name} is not {self.what}: {self.reason}"


class NotVerified(VerifierError):
    """What was checked does not hold. ``seq`` names the first event concerned, if known."""

    def __init__(
        self, message: str, meaning: str = "", todo: str = "", seq: int | None = None
    ) -> None:
        super().__init__(message, meaning, todo)
        self.seq = seq


class WrongKey(NotVerified):
    """The checkpoint carries no signature by the given key: most often the auditor has the
    wrong key file, so the key is blamed first, not the log."""

    verdict = "wrong_key"

    def __init__(self, key_sha256: str, key_name: str = "", what: str = "checkpoint") -> None:
        named = f" (key name {key_name!r})" if key_name else ""
        super().__init__(
            f"the {what} is not signed by this key: check you have the right audit public "
            f"key (its SHA-256 is {key_sha256}) — this says nothing about the log yet",
            f"no signature line of the {what}{named} was made with the key you gave; either "
            f"the key file is not this factory's audit key, or the {what} was signed by "
            "someone else",
            "compare the key's SHA-256 above with the fingerprint you pinned from the factory "
            "(the dashboard's audit page shows it); with the right key, check again",
        )


class EditedEvent(NotVerified):
    """An event's fields no longer hash to what was recorded (and, under a checkpoint,
    signed)."""

    verdict = "edited_event"


class Truncated(NotVerified):
    """Fewer events than a signed checkpoint covers."""

    verdict = "truncated"


_PRESERVE = (
    "preserve the database and the files you checked as they are, note the event number, "
    "and raise an incident; `provisioner audit verify` on the factory's database names the "
    "same problem"
)

# =============================================================================================
# The canonical bytes of one audit event (what the hash chain and the Merkle leaf cover)
# =============================================================================================

# Bump when the field list changes: old entries keep their old encoding's hashes.
ENTRY_VERSION = 2
ENTRY_FIELDS = (
    "seq",
    "ts",
    "actor",
    "role",
    "event_type",
    "station_id",
    "socket",
    "batch_id",
    "device_id",
    "chip_serial",
    "payload",
)


@dataclass(frozen=True)
class Entry:
    """One event's fields, exactly as hashed (``payload`` is its canonical JSON text)."""

    seq: int
    ts: str
    actor: str
    role: str | None
    event_type: str
    station_id: str | None
    socket: int | None
    batch_id: int | None
    device_id: int | None
    chip_serial: str | None
    payload: str

    def encode(self) -> bytes:
        """Canonical JSON array: field order fixed, no whitespace, ASCII only."""
        return json.dumps(
            [ENTRY_VERSION, *(getattr(self, name) for name in ENTRY_FIELDS)],
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Entry:
        """The entry back from :meth:`as_json` output; a wrong field set or type raises
        ValueError (a proof file is untrusted input)."""
        if set(d) != set(ENTRY_FIELDS):
            raise ValueError(f"event fields differ: expected {sorted(ENTRY_FIELDS)}")
        return cls._checked(d)

    @classmethod
    def _checked(cls, d: Mapping[str, Any]) -> Entry:
        """Build from the named fields of ``d`` after checking their types (ValueError)."""
        for name in ("seq", "socket", "batch_id", "device_id"):
            v = d[name]
            if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                raise ValueError(f"event field {name} must be an integer")
        for name in ("ts", "actor", "event_type", "payload"):
            if not isinstance(d[name], str):
                raise ValueError(f"event field {name} must be a string")
        for name in ("role", "station_id", "chip_serial"):
            if d[name] is not None and not isinstance(d[name], str):
                raise ValueError(f"event field {name} must be a string or null")
        if d["seq"] is None or d["seq"] < 1:
            raise ValueError("event field seq must be a positive integer")
        return cls(**{name: d[name] for name in ENTRY_FIELDS})


def entry_from_export(obj: Mapping[str, Any]) -> Entry:
    """An event from one line of ``provisioner audit export --format jsonl``.

    Exports may carry more than the hashed fields (chain hashes, a readable time, the
    payload as an object). The exact hashed payload text is ``payload_text`` when present,
    else ``payload`` when it is a string (older exports). ValueError says what is missing.
    """
    missing = [n for n in ENTRY_FIELDS if n != "payload" and n not in obj]
    if missing:
        raise ValueError(f"it lacks the event field(s) {', '.join(missing)}")
    payload = obj.get("payload_text", obj.get("payload"))
    if not isinstance(payload, str):
        raise ValueError(
            "it has no payload_text (the exact payload text the hash covers), so the event "
            "cannot be re-hashed: export again with `provisioner audit export --format jsonl`"
        )
    return Entry._checked(
        {**{n: obj[n] for n in ENTRY_FIELDS if n != "payload"}, "payload": payload}
    )


# =============================================================================================
# The hash chain (each event's ``hash`` covers the previous one's and its own bytes)
# =============================================================================================

GENESIS_HASH = "0" * 64


def link_hash(prev_hash: str, encoded: bytes) -> str:
    """The chain hash (hex) of an event with canonical bytes ``encoded``."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + encoded).hexdigest()


# =============================================================================================
# RFC 6962 / RFC 9162 Merkle tree: hashing and proof checks
# =============================================================================================

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"


def leaf_hash(entry: bytes) -> bytes:
    """Hash one log entry; the 0x00 prefix keeps leaves from being passed off as nodes."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children; the 0x01 prefix is RFC 6962's second-preimage protection."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class RootBuilder:
    """The Merkle root of leaves added one at a time, in O(log n) memory, so an export of
    millions of events is checked while it streams."""

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []

    def add(self, leaf: bytes) -> None:
        h, n = leaf, self.size
        while n & 1:  # each trailing one bit is an equal-sized peak that merges now
            h = node_hash(self._peaks.pop(), h)
            n >>= 1
        self._peaks.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return EMPTY_ROOT
        h = self._peaks[-1]
        for p in reversed(self._peaks[:-1]):
            h = node_hash(p, h)
        return h


def _check_hashes(what: str, hashes_: Sequence[bytes]) -> None:
    """Reject malformed hashes up front so a failure names the real problem."""
    for i, h in enumerate(hashes_):
        if len(h) != HASH_SIZE:
            raise NotVerified(f"{what} element {i} is {len(h)} bytes, not {HASH_SIZE}")


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that leaf HASH ``leaf`` is entry ``index`` of the tree of ``size`` with ``root``.

    RFC 9162 §2.1.3.2, step by step; raises NotVerified naming the reason on failure.
    """
    if not 0 <= index < size:
        raise NotVerified(f"inclusion proof: leaf index {index} is not in a tree of size {size}")
    _check_hashes("inclusion proof", [leaf, root, *proof])
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            raise NotVerified("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:  # right edge: climb past the levels where we have no sibling
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise NotVerified("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise NotVerified("inclusion proof does not lead to the expected root hash")


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree (new_size, new_root) extends the tree (old_size, old_root).

    RFC 9162 §2.1.4.2; equal sizes need an empty proof and equal roots, and
    ``0 < old_size <= new_size`` is required (the empty tree has nothing to be consistent
    with). Raises NotVerified naming the reason on failure.
    """
    if not 0 < old_size <= new_size:
        raise NotVerified(f"no consistency proof from size {old_size} to size {new_size}")
    _check_hashes("consistency proof", [old_root, new_root, *proof])
    if old_size == new_size:
        if proof:
            raise NotVerified("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise NotVerified("two different root hashes for the same tree size")
        return
    if not proof:
        raise NotVerified("consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise NotVerified("consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise NotVerified("consistency proof is shorter than the tree is deep")
    if fr != old_root:
        raise NotVerified("consistency proof does not lead to the old root hash")
    if sr != new_root:
        raise NotVerified("consistency proof does not lead to the new root hash")


# =============================================================================================
# Checkpoints: C2SP tlog-checkpoint text in a C2SP signed note, ECDSA P-256 (type 0x02)
#
#     <origin>
#     <tree size>
#     <base64 root hash>
#
#     — <key name> <base64(key ID || DER ECDSA signature)>
# =============================================================================================

DASH = "\u2014"  # em dash that opens every signature line
KEY_ID_SIZE = 4
MAX_SIGNATURES = 100  # signed-note: verifiers SHOULD bound this, and MUST accept at least 16
MAX_TREE_SIZE = 2**63 - 1  # tree sizes are stored as signed 64-bit integers
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")
_CHECKPOINT = "a signed checkpoint"


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


def spki_der(public_key: ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte key ID of signature type 0x02: SHA-256 of the DER SPKI, truncated.

    It only routes signature lines to the right key; security comes from the signature.
    """
    return hashlib.sha256(spki_der(public_key)).digest()[:KEY_ID_SIZE]


def key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's fingerprint an auditor pins: SHA-256 of the DER SubjectPublicKeyInfo, hex
    (what the dashboard's audit page shows; `openssl pkey -pubin -outform DER | sha256sum`)."""
    return hashlib.sha256(spki_der(public_key)).hexdigest()


def has_control(s: str) -> bool:
    """Signed notes must not contain ASCII control characters other than newline."""
    return any(ord(c) < 0x20 and c != "\n" for c in s)


def open_checkpoint(
    note: str,
    public_key: ec.EllipticCurvePublicKey,
    key_name: str | None = None,
    origin: str | None = None,
) -> Checkpoint:
    """Parse and verify a signed checkpoint.

    ``key_name`` defaults to the note's origin line (the product's convention). Signature
    lines from other keys (other name or other key ID) are ignored, as the signed-note spec
    requires, so witnesses may cosign; but a signature line from our key that fails to
    verify rejects the whole note. The text is only parsed once it is known to be signed,
    so nothing is learned from unauthenticated content.

    Raises WrongInput (not a signed note), WrongKey (no signature by this key) or
    NotVerified (a bad signature: the text was changed; another origin).
    """
    text, signatures = _split_note(note)
    name = key_name if key_name is not None else text.split("\n", 1)[0]
    _verify_signatures(text, signatures, name, public_key)
    checkpoint = _parse_body(text)
    if origin is not None and checkpoint.origin != origin:
        raise NotVerified(
            f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}",
            "the checkpoint is genuine but belongs to another log",
            "check you have this factory's checkpoint",
        )
    return checkpoint


def _b64decode(value: str, what: str) -> bytes:
    """Strict standard base64: valid alphabet and padding, and the canonical encoding."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise WrongInput(_CHECKPOINT, f"its {what} is not valid base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise WrongInput(_CHECKPOINT, f"its {what} is not canonical base64")
    return raw


def _split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a signed note into its text and its (key name, key ID || signature) lines."""
    try:
        note.encode("utf-8")
    except UnicodeEncodeError:
        raise WrongInput(_CHECKPOINT, "it is not valid UTF-8 text") from None
    if "\r" in note:
        raise WrongInput(
            _CHECKPOINT,
            "it contains a control character (a carriage return: was the file converted "
            "to Windows line ends? the signed text uses \\n only)",
        )
    if has_control(note):
        raise WrongInput(_CHECKPOINT, "it contains a control character")
    if not note.endswith("\n"):
        raise WrongInput(_CHECKPOINT, "it does not end with a newline")
    cut = note.rfind("\n\n")  # the text ends at the last blank line
    if cut < 0:
        raise WrongInput(_CHECKPOINT, "it has no blank line before its signatures")
    text, lines = note[: cut + 1], note[cut + 2 :].splitlines()
    if not lines:
        raise WrongInput(_CHECKPOINT, "it has no signature lines")
    if len(lines) > MAX_SIGNATURES:
        raise WrongInput(_CHECKPOINT, f"it has more than {MAX_SIGNATURES} signatures")
    return text, [_parse_signature_line(line) for line in lines]


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    """``— <name> <base64>`` to (name, decoded blob)."""
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != DASH or not parts[1]:
        raise WrongInput(_CHECKPOINT, f"it has a malformed signature line: {line[:80]!r}")
    blob = _b64decode(parts[2], "signature")
    if len(blob) <= KEY_ID_SIZE:
        raise WrongInput(_CHECKPOINT, "its signature is too short")
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
        blob[KEY_ID_SIZE:]
        for name, blob in signatures
        if (name, blob[:KEY_ID_SIZE]) == (key_name, kid)
    ]
    if not ours:
        raise WrongKey(key_sha256(public_key), key_name)
    data = text.encode("utf-8")
    for signature in ours:
        try:
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise NotVerified(
                f"checkpoint signature by key {key_name!r} is invalid: the checkpoint's text "
                "(origin, size or root) was changed after it was signed",
                "the signature line is from this key but does not match the text above it",
                "get the checkpoint again from where you kept it or from the factory; if a "
                "copy you kept was changed, raise an incident",
            ) from None


def _parse_body(text: str) -> Checkpoint:
    """tlog-checkpoint text: origin, size, root, then optional (ignored) extension lines."""
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not all(lines):
        raise WrongInput(_CHECKPOINT, "it needs origin, size and root on non-empty lines")
    origin, size, root = lines[:3]
    if (
        len(size) > len(str(MAX_TREE_SIZE))
        or not _DECIMAL.fullmatch(size)
        or int(size) > MAX_TREE_SIZE
    ):
        raise WrongInput(
            _CHECKPOINT, f"line 2 must be the tree size (a decimal number), not {size[:30]!r}"
        )
    raw_root = _b64decode(root, "root hash")
    if len(raw_root) != HASH_SIZE:
        raise WrongInput(_CHECKPOINT, f"its root hash is {len(raw_root)} bytes, not {HASH_SIZE}")
    return Checkpoint(origin, int(size), raw_root)


def load_public_key(data: bytes) -> ec.EllipticCurvePublicKey:
    """The audit public key from its PEM file (``audit-key.pem``); WrongInput otherwise."""
    what = "an audit public key (PEM)"
    if b"PRIVATE KEY-----" in data:
        raise WrongInput(
            what, "it holds a PRIVATE key; the verifier needs only the public key (audit-key.pem)"
        )
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise WrongInput(what, "it is a certificate; pass the audit public key (audit-key.pem)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise WrongInput(what, "it is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise WrongInput(what, "it is not an EC P-256 key, which the audit key is")
    return key


# =============================================================================================
# Proof files and consistency files (JSON); format /2 writes hex, /1 (base64) is still read
# =============================================================================================

PROOF_FORMAT = "provisioner-audit-proof/2"
PROOF_FORMAT_V1 = "provisioner-audit-proof/1"
CONSISTENCY_FORMAT = "provisioner-audit-consistency/2"
CONSISTENCY_FORMAT_V1 = "provisioner-audit-consistency/1"
_PROOF = "a proof file"
_CONSISTENCY = "a consistency file"
_FORMATS = {
    PROOF_FORMAT: _PROOF,
    PROOF_FORMAT_V1: _PROOF,
    CONSISTENCY_FORMAT: _CONSISTENCY,
    CONSISTENCY_FORMAT_V1: _CONSISTENCY,
}


def hash_text(h: bytes) -> str:
    """How our own files write a hash: lowercase hex."""
    return h.hex()


def _hash_of(value: object, v1: bool, what: str, where: str) -> bytes:
    """One 32-byte hash from a file: hex (format /2) or base64 (format /1)."""
    if not isinstance(value, str):
        raise WrongInput(what, f"{where} is not a hash string")
    try:
        raw = base64.b64decode(value, validate=True) if v1 else bytes.fromhex(value)
    except (binascii.Error, ValueError):
        enc = "base64" if v1 else "hex"
        raise WrongInput(what, f"{where} is not a {enc} hash") from None
    if len(raw) != HASH_SIZE:
        raise WrongInput(what, f"{where} is {len(raw)} bytes, not {HASH_SIZE}")
    return raw


# What json.loads raises for input that is not JSON we read: besides JSONDecodeError and
# UnicodeDecodeError, a plain ValueError for an integer longer than Python converts (4300
# digits) and RecursionError for arrays or objects nested deeper than the interpreter's stack.
_NOT_JSON = (ValueError, RecursionError)


def _why(exc: BaseException) -> str:
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]


def _document(raw: bytes, what: str) -> tuple[dict[str, Any], bool]:
    """The JSON object of a proof or consistency file, and whether it is format /1."""
    try:
        doc = json.loads(raw)
    except _NOT_JSON as exc:
        raise WrongInput(what, f"it is not JSON ({_why(exc)})") from None
    if not isinstance(doc, dict):
        raise WrongInput(what, "it is not a JSON object")
    fmt = doc.get("format")
    if not isinstance(fmt, str) or _FORMATS.get(fmt) != what:
        if isinstance(fmt, str) and fmt in _FORMATS:
            raise WrongInput(what, f"it is {_FORMATS[fmt]} ({fmt})")
        raise WrongInput(
            what, f"its format is {fmt!r}, not {_formats_of(what)} (from `provisioner audit`)"
        )
    return doc, fmt.endswith("/1")


def _formats_of(what: str) -> str:
    return " or ".join(repr(f) for f, w in _FORMATS.items() if w == what)


def _open_in(
    note: object, public_key: ec.EllipticCurvePublicKey, what: str, which: str
) -> Checkpoint:
    """A checkpoint note inside a file: a malformed note makes the file malformed."""
    if not isinstance(note, str):
        raise WrongInput(what, f"its {which} is missing or not text")
    try:
        return open_checkpoint(note, public_key)
    except WrongInput as exc:
        raise WrongInput(what, f"its {which} is malformed: {exc.reason}") from None


@dataclass(frozen=True)
class ProofResult:
    """A verified proof file: these events are in the log the key signed at this size."""

    chip_serial: str
    origin: str
    tree_size: int
    events: list[Entry]
    events_after_checkpoint: int
    key_sha256: str
    format: str


def check_proof(raw: bytes, public_key: ec.EllipticCurvePublicKey) -> ProofResult:
    """Verify a proof file: the checkpoint's signature, each event's leaf hash recomputed
    from its fields, and each inclusion proof against the signed root.

    Inclusion shows these events are in the log the factory signed; it cannot show that
    no other event of the chip exists (that takes `audit verify` or a whole segment).
    """
    doc, v1 = _document(raw, _PROOF)
    serial, items = doc.get("chip_serial"), doc.get("events")
    if not isinstance(serial, str) or not isinstance(items, list):
        raise WrongInput(_PROOF, "it lacks chip_serial or events")
    cp = _open_in(doc.get("checkpoint"), public_key, _PROOF, "checkpoint")
    if not items:
        raise WrongInput(_PROOF, "it proves no event (its events list is empty)")
    entries = [_check_item(n, item, serial, cp, v1) for n, item in enumerate(items, 1)]
    after = doc.get("events_after_checkpoint", 0)
    return ProofResult(
        serial,
        cp.origin,
        cp.size,
        entries,
        after if isinstance(after, int) and not isinstance(after, bool) else 0,
        key_sha256(public_key),
        doc["format"],
    )


def _check_item(n: int, item: object, serial: str, cp: Checkpoint, v1: bool) -> Entry:
    """One event of a proof file, checked against the signed checkpoint."""
    where = f"event #{n} of the file"
    try:
        if not isinstance(item, dict):
            raise ValueError("not an object")
        entry = Entry.from_json(item["event"])
        index = item["leaf_index"]
        path = item["inclusion_proof"]
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(path, list):
            raise ValueError("leaf_index must be an integer, inclusion_proof a list")
    except (KeyError, TypeError, ValueError) as exc:
        raise WrongInput(_PROOF, f"{where} is malformed ({exc})") from None
    proof = [_hash_of(h, v1, _PROOF, f"{where}'s inclusion proof") for h in path]
    stated = item.get("leaf_hash")
    claimed = None if stated is None else _hash_of(stated, v1, _PROOF, f"{where}'s leaf_hash")
    label = f"event {entry.seq} ({entry.event_type})"
    if entry.chip_serial != serial:
        raise NotVerified(
            f"event {entry.seq} is about chip {entry.chip_serial}, not {serial}",
            "the file mixes events of another chip into this chip's proof",
            "ask the factory for a new proof file (`provisioner audit prove SERIAL`)",
            entry.seq,
        )
    if index != entry.seq - 1:
        raise NotVerified(
            f"event {entry.seq} claims leaf index {index}",
            "an event's position in the log was changed in the file",
            "ask the factory for a new proof file (`provisioner audit prove SERIAL`)",
            entry.seq,
        )
    leaf = leaf_hash(entry.encode())
    try:
        verify_inclusion(leaf, index, cp.size, proof, cp.root)
    except NotVerified as exc:
        if claimed is not None and claimed != leaf and _includes(claimed, index, cp, proof):
            raise EditedEvent(
                f"{label} was changed after it was signed: its fields no longer hash to the "
                "leaf that the signed log holds",
                f"the signed log holds event {entry.seq} with other content than this file "
                "shows: the record in this file (or the database it came from) was edited",
                _PRESERVE,
                entry.seq,
            ) from None
        raise NotVerified(
            f"{label}: {exc}",
            f"event {entry.seq} as written in this file is not in the log the checkpoint "
            "signed: its fields were changed after it was signed, or its proof was damaged",
            "ask the factory for a new proof file; if the new one fails too, " + _PRESERVE,
            entry.seq,
        ) from None
    if claimed is not None and claimed != leaf:
        raise NotVerified(
            f"{label}: the file's leaf_hash is not the hash of the event's fields",
            "the file was edited after it was written",
            "ask the factory for a new proof file (`provisioner audit prove SERIAL`)",
            entry.seq,
        )
    return entry


def _includes(leaf: bytes, index: int, cp: Checkpoint, proof: list[bytes]) -> bool:
    try:
        verify_inclusion(leaf, index, cp.size, proof, cp.root)
    except NotVerified:
        return False
    return True


@dataclass(frozen=True)
class ConsistencyResult:
    """A verified consistency file: the newer checkpoint extends the older one."""

    old: Checkpoint
    new: Checkpoint
    key_sha256: str


def check_consistency(raw: bytes, public_key: ec.EllipticCurvePublicKey) -> ConsistencyResult:
    """Verify a consistency file: both checkpoints signed by the key, of the same log, and
    the newer tree extends the older one unchanged."""
    doc, v1 = _document(raw, _CONSISTENCY)
    path = doc.get("proof")
    if not isinstance(path, list):
        raise WrongInput(_CONSISTENCY, "it lacks the proof list")
    proof = [_hash_of(h, v1, _CONSISTENCY, "its proof") for h in path]
    old = _open_in(doc.get("old"), public_key, _CONSISTENCY, "older checkpoint (old)")
    new = _open_in(doc.get("new"), public_key, _CONSISTENCY, "newer checkpoint (new)")
    if old.origin != new.origin:
        raise NotVerified(
            f"the checkpoints are of two logs ({old.origin}, {new.origin})",
            "the file pairs checkpoints of different logs",
            "ask for a consistency file between two checkpoints of the same log",
        )
    if new.size < old.size:
        raise Truncated(
            f"the log was truncated: the newer checkpoint covers {new.size} events, fewer "
            f"than the {old.size} of the older one",
            "a log only grows: events that were signed have since been removed",
            "check that 'old' and 'new' are not swapped in the file; if not, " + _PRESERVE,
            new.size + 1,
        )
    try:
        verify_consistency(old.size, new.size, proof, old.root, new.root)
    except NotVerified as exc:
        raise NotVerified(
            f"the checkpoint at size {new.size} does not extend the one at size {old.size}: {exc}",
            "both checkpoints are signed by the key, but the log at the newer one is not the "
            "older log plus new events: events that were signed were changed, removed or "
            "reordered (the log was rewritten or forked), or the file's proof was damaged",
            "keep both checkpoints; ask the factory for a new consistency file; if it fails "
            "too, " + _PRESERVE,
        ) from None
    return ConsistencyResult(old, new, key_sha256(public_key))


# =============================================================================================
# An exported log segment (JSONL) against a signed checkpoint
# =============================================================================================

_EXPORT = "an audit export (JSON lines from `provisioner audit export --format jsonl`)"


@dataclass(frozen=True)
class SegmentResult:
    """A verified segment: its events 1..size are exactly the log the checkpoint signed."""

    checkpoint: Checkpoint
    events: int
    chained: bool  # the export carried chain hashes and they were all checked
    key_sha256: str


def check_segment(
    lines: Iterable[bytes | str], cp: Checkpoint, key_fingerprint: str = ""
) -> SegmentResult:
    """Re-hash every event of an export and rebuild the Merkle root over the first
    ``cp.size`` of them; the chain hashes (``hash``/``prev_hash``) are checked if present.

    The root can only be rebuilt from event 1, so a segment must start there (WrongInput
    otherwise). Events after ``cp.size`` are checked by their chain only.
    """
    builder = RootBuilder()
    if cp.size == 0 and cp.root != EMPTY_ROOT:
        raise NotVerified("the checkpoint says the log is empty but its root is not the empty root")
    expected, last_hash = 1, GENESIS_HASH
    chained = True
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = _export_line(n, line)
        entry = _export_entry(n, obj)
        seq = entry.seq
        if seq != expected:
            _out_of_order(expected, seq)
        encoded = entry.encode()
        chained = chained and obj.get("hash") is not None
        last_hash = _check_link(n, obj, entry, encoded, last_hash, cp.size)
        if seq <= cp.size:
            builder.add(leaf_hash(encoded))
            if seq == cp.size:
                _check_root(builder.root(), cp, chained)
        expected += 1
    count = expected - 1
    if count == 0:
        raise WrongInput(_EXPORT, "it holds no event")
    if count < cp.size:
        raise Truncated(
            f"the log is truncated: the export has {count} events but the checkpoint "
            f"covers {cp.size}: events {count + 1}..{cp.size} are missing",
            "events that the factory signed are not in this export: the log was cut short "
            "after the checkpoint was signed, or this export is incomplete",
            "export the whole log again (no filters) and check again; if the events are "
            "missing from the database too, " + _PRESERVE,
            count + 1,
        )
    return SegmentResult(cp, count, chained, key_fingerprint)


def _export_line(n: int, line: bytes | str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except _NOT_JSON as exc:
        raise WrongInput(_EXPORT, f"line {n} is not JSON ({_why(exc)})") from None
    if not isinstance(obj, dict):
        raise WrongInput(_EXPORT, f"line {n} is not a JSON object")
    return obj


def _export_entry(n: int, obj: Mapping[str, Any]) -> Entry:
    try:
        return entry_from_export(obj)
    except ValueError as exc:
        raise WrongInput(_EXPORT, f"line {n}: {exc}") from None


def _out_of_order(expected: int, seq: int) -> None:
    if expected == 1:
        raise WrongInput(
            "a log segment from event 1",
            f"it starts at event {seq}; the Merkle root can only be rebuilt from event 1: "
            "export the log without filters (`provisioner audit export --format jsonl`)",
        )
    if seq > expected:
        raise NotVerified(
            f"event {expected} is missing (the next event in the export is {seq})",
            "events were removed from this copy of the log, or the export was filtered "
            "(a segment must be an unfiltered export)",
            "export the whole log again without filters; if the event is missing from the "
            "database too, " + _PRESERVE,
            expected,
        )
    raise NotVerified(
        f"event {seq} appears again after event {expected - 1}",
        "the export repeats or reorders events: it is not a copy of the log as recorded",
        "export the whole log again without filters and check again",
        seq,
    )


def _check_link(
    n: int, obj: Mapping[str, Any], entry: Entry, encoded: bytes, last: str, size: int
) -> str:
    """Check one event's chain fields (those present) against the recomputed chain; returns
    the recomputed chain hash (hex), which the next event must link to."""
    prev, h = _hex_field(n, obj, "prev_hash"), _hex_field(n, obj, "hash")
    seq = entry.seq
    if prev is not None and prev != last:
        raise NotVerified(
            f"event {seq} does not link to event {seq - 1}: its prev_hash is not the hash "
            "of the event before it",
            "an event before it was changed, removed or inserted after it was recorded",
            _PRESERVE,
            seq,
        )
    computed = link_hash(last, encoded)
    if h is not None and h != computed:
        signed = (
            f" and it is under the signed checkpoint (size {size}): the record was changed "
            "after it was signed"
            if seq <= size
            else " (it is after the checkpoint: not signed yet)"
        )
        raise EditedEvent(
            f"event {seq} ({entry.event_type}) was changed after it was recorded: its "
            f"fields no longer match its chain hash{signed}",
            f"someone or something edited event {seq}'s record (time, actor, device, payload "
            "or another field) after the product wrote it",
            _PRESERVE,
            seq,
        )
    return computed


def _hex_field(n: int, obj: Mapping[str, Any], name: str) -> str | None:
    """A chain hash field of an export line, lowercase; None when the export lacks it."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2 * HASH_SIZE or not _is_hex(value):
        raise WrongInput(_EXPORT, f"line {n}: {name} is not a 64-digit hex hash")
    return value.lower()


def _is_hex(s: str) -> bool:
    try:
        bytes.fromhex(s)
    except ValueError:
        return False
    return True


def _check_root(root: bytes, cp: Checkpoint, chained: bool) -> None:
    if root == cp.root:
        return
    how = (
        "the hash chain was rewritten to hide it, so the chain alone does not say which event"
        if chained
        else "this export has no chain hashes to tell which event"
    )
    raise NotVerified(
        f"events 1..{cp.size} do not rebuild the root the checkpoint signed",
        f"at least one of events 1..{cp.size} was changed, removed or inserted after the "
        f"checkpoint was signed ({how}); or this export is of another log than "
        f"{cp.origin!r}",
        "run `provisioner audit verify` on the factory's database to name the event, and "
        + _PRESERVE,
    )


# =============================================================================================
# Batch reports: a signed statement appended to the HTML as a comment (provisioner.reports)
#
#     <!-- provisioner-report-signature
#     provisioner batch report v1
#     origin <log origin>
#     batch <batch id>
#     html-sha256 <SHA-256 of every byte before the block, hex>
#
#     — <log origin> <base64(key ID || DER ECDSA signature)>
#     -->
#
# Domain-separated from checkpoints: the first line names it and the others are labelled,
# so a report's signed text never parses as a checkpoint, nor a checkpoint's as a report.
# =============================================================================================


REPORT_HEADER = "provisioner batch report v1"
BLOCK_START = b"<!-- provisioner-report-signature\n"
BLOCK_END = b"-->\n"
REPORT_MAX_BLOCK = 4096  # a statement and one signature line are far smaller
REPORT_ORIGIN = re.compile(r"[^\s+<>]+")  # one word; no '<' or '>' so it cannot end the comment
REPORT_BATCH_ID = re.compile(r"[1-9][0-9]{0,18}")
REPORT_HEX64 = re.compile(r"[0-9a-f]{64}")


class ReportSignatureError(Exception):
    """A report that does not verify, and why, as ``kind``:

    - ``format``: the input is not a signed report (wrong file, a DRAFT, a cut file);
    - ``key``: it is not signed by this key (check the key before anything else);
    - ``changed``: the report was changed after it was signed.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def report_key_id(public_key: ec.EllipticCurvePublicKey) -> bytes:
    """The 4-byte key ID of the signature line (as in the checkpoints' signed notes)."""
    return key_id(public_key)


def statement(origin: str, batch_id: int, html_sha256: str) -> str:
    """The signed text: four labelled lines, each ending with a newline."""
    return f"{REPORT_HEADER}\norigin {origin}\nbatch {batch_id}\nhtml-sha256 {html_sha256}\n"


def verify_report_bytes(data: bytes, public_key: ec.EllipticCurvePublicKey) -> tuple[int, str]:
    """Check a signed report file; returns (batch id, origin) or raises ReportSignatureError.

    The statement is only read once its signature verified with ``public_key``; only then is
    the body's SHA-256 compared with the one it states."""
    body, text, (name, blob) = _split(data)
    if blob[:KEY_ID_SIZE] != report_key_id(public_key):
        raise ReportSignatureError(
            "key",
            "the report is not signed by this key: check you have the right audit public key "
            f"(its SHA-256 is {key_sha256(public_key)}) — this says nothing about the "
            "report's content yet",
        )
    try:
        public_key.verify(blob[KEY_ID_SIZE:], text.encode("utf-8"), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ReportSignatureError(
            "changed",
            "the report's signature block was changed after it was signed (its statement "
            "does not match its signature): do not trust this copy; ask for the report again",
        ) from None
    origin, batch_id, stated = _parse_statement(text)
    if name != origin:
        raise ReportSignatureError(
            "format", f"the signature line names {name!r}, the statement origin {origin!r}"
        )
    actual = hashlib.sha256(body).hexdigest()
    if actual != stated:
        raise ReportSignatureError(
            "changed",
            f"the report of batch {batch_id} was changed after it was signed: its content's "
            f"SHA-256 is {actual}, the signature covers {stated}. Do not trust this copy; "
            "ask for the report again",
        )
    return batch_id, origin


def _split(data: bytes) -> tuple[bytes, str, tuple[str, bytes]]:
    """Body, statement text and the one (key name, key ID || signature) of a report file."""
    at = data.rfind(b"\n" + BLOCK_START)
    if at < 0:
        raise ReportSignatureError(
            "format", "it has no signature block at its end (a DRAFT report is never signed)"
        )
    body, block = data[: at + 1], data[at + 1 + len(BLOCK_START) :]
    if len(block) > REPORT_MAX_BLOCK or not block.endswith(BLOCK_END):
        raise ReportSignatureError("format", "its signature block is cut or followed by other text")
    try:
        note = block[: -len(BLOCK_END)].decode("utf-8")
    except UnicodeDecodeError:
        raise ReportSignatureError("format", "its signature block is not UTF-8") from None
    text, sep, sig = note.partition("\n\n")
    if not sep or not sig.endswith("\n") or "\n" in sig[:-1]:
        raise ReportSignatureError(
            "format", "its signature block needs the statement, a blank line, one signature"
        )
    text += "\n"
    if not text.startswith(REPORT_HEADER + "\n"):
        raise ReportSignatureError(
            "format", f"its signature block's first line is not {REPORT_HEADER!r}"
        )
    return body, text, _signature_line(sig[:-1])


def _signature_line(line: str) -> tuple[str, bytes]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[0] != DASH or not parts[1]:
        raise ReportSignatureError("format", f"malformed signature line: {line[:80]!r}")
    try:
        blob = base64.b64decode(parts[2].encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ReportSignatureError("format", "the signature is not valid base64") from None
    if len(blob) <= KEY_ID_SIZE or base64.b64encode(blob).decode("ascii") != parts[2]:
        raise ReportSignatureError("format", "the signature is too short or not canonical")
    return parts[1], blob


def _parse_statement(text: str) -> tuple[str, int, str]:
    """(origin, batch id, html SHA-256) of a signed statement; strict, every line labelled."""
    lines = text[:-1].split("\n")
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    if (
        len(lines) != 4
        or list(fields) != ["origin", "batch", "html-sha256"]
        or not REPORT_ORIGIN.fullmatch(fields["origin"])
        or not REPORT_BATCH_ID.fullmatch(fields["batch"])
        or not REPORT_HEX64.fullmatch(fields["html-sha256"])
    ):
        raise ReportSignatureError(
            "format", "the signed statement is not 'origin', 'batch', 'html-sha256' lines"
        )
    return fields["origin"], int(fields["batch"]), fields["html-sha256"]


# =============================================================================================
# Command line: one function per subcommand, so more can be added (e.g. ``report``)
# =============================================================================================


@dataclass
class Answer:
    """What a command found: printed as text, or as JSON with ``--json``."""

    lines: list[str]
    data: dict[str, Any] = field(default_factory=dict)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _Unreadable(path, exc.strerror or str(exc)) from None


class _Unreadable(WrongInput):
    def __init__(self, path: str, why: str) -> None:
        super().__init__("a readable file", why)
        self.path = path

    def about(self, name: str) -> str:
        return f"cannot read {self.path}: {self.reason}"


def _key(path: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    try:
        key = load_public_key(_read(path))
    except WrongInput as exc:
        raise _Named(path, exc) from None
    return key, key_sha256(key)


class _Named(Exception):
    """A wrong input tied to the file it came from, for the message."""

    def __init__(self, name: str, error: WrongInput) -> None:
        super().__init__(error.about(name))
        self.error = error


def _cmd_proof(args: argparse.Namespace) -> Answer:
    key, fp = _key(args.key)
    try:
        r = check_proof(_read(args.file), key)
    except WrongInput as exc:
        raise _Named(args.file, exc) from None
    lines = [
        f"proof verified: {len(r.events)} events of chip {r.chip_serial} are in log {r.origin} "
        f"as signed at size {r.tree_size}",
        f"  checked: the checkpoint's signature with the key (SHA-256 {fp}); each event's "
        "leaf hash recomputed from its fields; each inclusion proof against the signed root",
    ]
    lines += [f"  {e.seq:>8} {e.ts} {e.event_type} by {e.actor}" for e in r.events]
    if r.events_after_checkpoint:
        lines.append(
            f"  note: {r.events_after_checkpoint} newer events of this chip were not yet "
            "under a checkpoint when the file was made"
        )
    lines.append(
        "  limit: this shows these events are in the signed log; it cannot show that no "
        "other event of the chip exists (for that, check a whole export with `verifier.py segment`)"
    )
    return Answer(
        lines,
        {
            "chip_serial": r.chip_serial,
            "origin": r.origin,
            "tree_size": r.tree_size,
            "events": [e.as_json() for e in r.events],
            "events_after_checkpoint": r.events_after_checkpoint,
            "key_sha256": fp,
        },
    )


def _cmd_consistency(args: argparse.Namespace) -> Answer:
    key, fp = _key(args.key)
    try:
        r = check_consistency(_read(args.file), key)
    except WrongInput as exc:
        raise _Named(args.file, exc) from None
    lines = [
        f"consistent: log {r.old.origin} at size {r.new.size} extends its "
        f"checkpoint at size {r.old.size} unchanged",
        f"  checked: both checkpoints' signatures with the key (SHA-256 {fp}); same origin; "
        "the consistency proof from the older root to the newer root",
        f"  meaning: the {r.old.size} events signed first are still exactly there; only "
        f"events {r.old.size + 1}..{r.new.size} were added",
    ]
    return Answer(
        lines,
        {
            "origin": r.old.origin,
            "old_size": r.old.size,
            "old_root": hash_text(r.old.root),
            "new_size": r.new.size,
            "new_root": hash_text(r.new.root),
            "key_sha256": fp,
        },
    )


def _cmd_segment(args: argparse.Namespace) -> Answer:
    key, fp = _key(args.key)
    try:
        note = _read(args.checkpoint).decode("utf-8")
    except UnicodeDecodeError:
        raise _Named(args.checkpoint, WrongInput(_CHECKPOINT, "it is not UTF-8 text")) from None
    if note.lstrip().startswith("{"):
        raise _Named(
            args.checkpoint,
            WrongInput(
                _CHECKPOINT,
                "it is JSON; save the checkpoint's signed text with "
                "`provisioner audit checkpoint save FILE`",
            ),
        )
    try:
        cp = open_checkpoint(note, key)
    except WrongInput as exc:
        raise _Named(args.checkpoint, exc) from None
    try:
        with open(args.file, "rb") as f:
            r = check_segment(f, cp, fp)
    except OSError as exc:
        raise _Named(args.file, _Unreadable(args.file, exc.strerror or str(exc))) from None
    except WrongInput as exc:
        raise _Named(args.file, exc) from None
    chain = (
        "the hash chain (hash, prev_hash) of every event"
        if r.chained
        else "no hash chain (the export has no hash/prev_hash fields)"
    )
    lines = [
        f"segment verified: events 1..{cp.size} of the export are exactly the log {cp.origin} the "
        f"checkpoint signed",
        f"  checked: the checkpoint's signature with the key (SHA-256 {fp}); {r.events} "
        f"events re-hashed from their fields; {chain}; the Merkle root over events "
        f"1..{cp.size} equals the signed root {hash_text(cp.root)}",
    ]
    if r.events > cp.size:
        lines.append(
            f"  note: events {cp.size + 1}..{r.events} are after this checkpoint: only their "
            "hash chain was checked (check them against a later checkpoint)"
        )
    return Answer(
        lines,
        {
            "origin": cp.origin,
            "tree_size": cp.size,
            "root": hash_text(cp.root),
            "events": r.events,
            "hash_chain_checked": r.chained,
            "key_sha256": fp,
        },
    )


def _add_key(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", required=True, help="the audit public key (PEM) you pinned")


def _args_proof(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="proof file from `provisioner audit prove` or the dashboard")
    _add_key(p)


def _args_consistency(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="consistency file from `provisioner audit consistency`")
    _add_key(p)


def _args_segment(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="export from `provisioner audit export --format jsonl`")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a signed checkpoint (text) from `provisioner audit checkpoint save FILE`",
    )
    _add_key(p)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="batch report (HTML) from `provisioner report batch`")
    _add_key(p)


def _cmd_report(args: argparse.Namespace) -> Answer:
    key, fp = _key(args.key)
    try:
        batch_id, origin = verify_report_bytes(_read(args.file), key)
    except WrongInput as exc:
        raise _Named(args.file, exc) from None
    except ReportSignatureError as exc:
        if exc.kind == "format":
            raise _Named(args.file, WrongInput("a signed batch report", str(exc))) from None
        if exc.kind == "key":
            raise WrongKey(fp, what="report") from None
        raise NotVerified(
            str(exc),
            "the report was changed after it was signed",
            "do not trust this copy; ask the factory for the report again",
        ) from None
    return Answer(
        [
            f"report verified: batch {batch_id} of log {origin}, signed by the audit key "
            f"(SHA-256 {fp}); unchanged since it was signed"
        ],
        {"batch_id": batch_id, "origin": origin, "key_sha256": fp},
    )


@dataclass(frozen=True)
class Command:
    """One subcommand: its help, its arguments and what it runs."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Answer]


COMMANDS: dict[str, Command] = {
    "proof": Command(
        "check a chip's proof file: its events are in the signed log",
        _args_proof,
        _cmd_proof,
    ),
    "consistency": Command(
        "check a consistency file: a newer checkpoint extends an older one unchanged",
        _args_consistency,
        _cmd_consistency,
    ),
    "segment": Command(
        "check an exported log (JSONL, from event 1) against a signed checkpoint",
        _args_segment,
        _cmd_segment,
    ),
    "report": Command(
        "check a signed batch report (HTML): the audit key signed it and nothing changed",
        _args_report,
        _cmd_report,
    ),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="verifier.py",
        description="Check the provisioner audit trail's proofs, checkpoints and exports "
        "with the audit public key. Exit 0: verified; 1: does NOT verify; 2: wrong input "
        "(nothing was checked).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        sp = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.arguments(sp)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def main(
    argv: Sequence[str] | None = None, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    """Run one subcommand; returns the exit status (0 verified, 1 not, 2 wrong input)."""
    out = out or sys.stdout
    err = err or sys.stderr
    args = parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    try:
        answer = COMMANDS[args.command].run(args)
    except _Named as exc:
        return _fail(exc.error, str(exc), as_json, out, err)
    except VerifierError as exc:
        return _fail(exc, str(exc), as_json, out, err)
    if as_json:
        out.write(json.dumps({"ok": True, "verdict": "verified", **answer.data}) + "\n")
    else:
        out.write("\n".join(answer.lines) + "\n")
    return EXIT_VERIFIED


def _fail(exc: VerifierError, message: str, as_json: bool, out: IO[str], err: IO[str]) -> int:
    if as_json:
        out.write(
            json.dumps(
                {
                    "ok": False,
                    "verdict": exc.verdict,
                    "reason": message,
                    "seq": getattr(exc, "seq", None),
                    "meaning": exc.meaning,
                    "what_to_do": exc.todo,
                }
            )
            + "\n"
        )
        return exc.exit_code
    head = "WRONG INPUT" if isinstance(exc, WrongInput) else "does NOT verify"
    if isinstance(exc, WrongKey):
        head = "does NOT verify with this key"
    lines = [f"{head}: {message}"]
    if exc.meaning:
        lines.append(f"  what it means: {exc.meaning}")
    if exc.todo:
        lines.append(f"  what to do: {exc.todo}")
    err.write("\n".join(lines) + "\n")
    return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
