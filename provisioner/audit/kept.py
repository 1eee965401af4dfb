"""Checkpoints an auditor keeps: read one from a file, and prove today's log extends it.

A signed checkpoint saved today (``audit checkpoint save FILE``) is the auditor's own copy
of "the log had N events and its root hash was R". Later, ``audit verify
--since-checkpoint FILE`` shows the log still starts with exactly those N events: the
checkpoint's signature (audit key), its origin (this log), a consistency proof from its size
to the log's latest signed checkpoint, and the stored tree's root at its size. Someone who
rewrote or cut the log and had the HSM sign a fresh checkpoint over the result fools every
check inside the database, never this one.

Reading a file is kept apart from checking it on purpose: a file in the wrong form is the
auditor's input problem (exit 2, "FILE is not a checkpoint: ..."), a file not signed by the
key is a key problem, and only a real mismatch says anything about the log. The form check
here only serves those messages; the signature and the note itself are checked by
:func:`provisioner.audit.checkpoint.open_signed`, the one implementation.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import merkle, tree
from provisioner.errors import InvalidInputError, ProofError

if TYPE_CHECKING:
    from provisioner.audit.verify import AuditKey

_DASH = "\u2014"  # the em dash that opens every signature line of a signed note
_DECIMAL = re.compile(r"(?:0|[1-9][0-9]*)")
_MAX_FILE = 64 * 1024  # a checkpoint is a few hundred bytes; refuse to slurp a database
_HOW_TO_SAVE = "save one with `provisioner audit checkpoint save FILE`"


@dataclass(frozen=True)
class KeptFile:
    """A checkpoint file in the right form (not yet known to be signed by anyone)."""

    path: str  # as the auditor named it, for messages
    note: str  # the signed note, line endings normalised to LF
    origin: str
    size: int
    root: bytes
    signers: tuple[tuple[str, bytes], ...]  # (key name, 4-byte key ID) of each signature


@dataclass(frozen=True)
class KeptResult:
    """What checking one kept checkpoint against today's log found.

    ``kind`` is "consistent" when today's log extends it, else what went wrong:
    "wrong_key" (not signed by this key: says nothing about the log), "bad_signature" (the
    file was changed after signing), "other_log" (another origin), "truncated" (the log
    now has fewer events than it covers), "rewritten" (the log does not extend it),
    "checkpoints_missing" (the log has no signed checkpoint as large: rows were deleted).
    """

    path: str
    size: int
    root_hex: str
    kind: str
    detail: str = ""
    latest_size: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "consistent"

    @property
    def about_the_log(self) -> bool:
        """True when the finding is about the log, not about the file or the key."""
        return self.kind in ("truncated", "rewritten", "checkpoints_missing")

    def as_json(self) -> dict[str, object]:
        return {
            "file": self.path,
            "size": self.size,
            "root_hash": self.root_hex,
            "ok": self.ok,
            "kind": self.kind,
            "detail": self.detail,
            "latest_checkpoint_size": self.latest_size,
        }


# --- reading a file ----------------------------------------------------------------------------


def read_file(path: Path) -> KeptFile:
    """Read and form-check a checkpoint file; InvalidInputError (exit 2) says what is wrong
    with the FILE, never anything about the log."""
    try:
        raw = path.read_bytes()[: _MAX_FILE + 1]
    except OSError as exc:
        raise InvalidInputError(f"cannot read the checkpoint file {path}: {exc.strerror}") from None
    return parse(raw, str(path))


def parse(raw: bytes, name: str) -> KeptFile:
    """The form of a C2SP signed checkpoint note: origin, tree size, base64 root hash,
    optional extension lines, a blank line, then signature lines ``— NAME BASE64``."""

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"{name} is not a checkpoint: {why}")

    if len(raw) > _MAX_FILE:
        raise bad(f"it is larger than {_MAX_FILE // 1024} KiB (a checkpoint is a few lines)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    text = text.replace("\r\n", "\n")  # a copy that passed through Windows
    if not text.strip():
        raise bad(f"it is empty; {_HOW_TO_SAVE}")
    if text.lstrip()[:1] in ("{", "["):
        raise bad(
            "it is JSON (a proof or consistency file, or --json output?), not the "
            f"checkpoint's signed text; {_HOW_TO_SAVE}"
        )
    if not text.endswith("\n"):
        text += "\n"  # an editor dropped the final newline; it is outside the signed text
    lines = text[:-1].split("\n")
    for n, line in enumerate(lines, 1):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in line):
            raise bad(f"line {n} contains a control character")
    origin = lines[0]
    if not origin:
        raise bad("line 1 must be the log's origin (its name), found an empty line")
    size_line = lines[1] if len(lines) > 1 else ""
    if not _DECIMAL.fullmatch(size_line) or len(size_line) > 19:
        raise bad(
            "line 2 must be the tree size (the number of events it covers, digits only), "
            f"found {size_line[:60]!r}"
        )
    root_line = lines[2] if len(lines) > 2 else ""
    root = _b64(root_line)
    if root is None or len(root) != merkle.HASH_SIZE:
        raise bad(
            "line 3 must be the root hash (32 bytes in base64, 44 characters), "
            f"found {root_line[:60]!r}"
        )
    try:
        blank = lines.index("", 3)
    except ValueError:
        raise bad(
            "it has no signature: after the root hash (and any extension lines) there must "
            f"be a blank line and then lines starting with {_DASH!r}"
        ) from None
    signers = []
    for n, line in enumerate(lines[blank + 1 :], blank + 2):
        parts = line.split(" ")
        blob = _b64(parts[2]) if len(parts) == 3 else None
        if parts[0] != _DASH or len(parts) != 3 or not parts[1] or blob is None or len(blob) < 5:
            raise bad(
                f"line {n} must be a signature line '{_DASH} NAME SIGNATURE', found {line[:60]!r}"
            )
        signers.append((parts[1], blob[:4]))
    if not signers:
        raise bad(f"it has no signature lines after the blank line (line {blank + 1})")
    return KeptFile(name, text, origin, int(size_line), root, tuple(signers))


def _b64(value: str) -> bytes | None:
    """Strict, canonical standard base64, or None."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == value else None


def signed_by(note: str, key_name: str, public_key: ec.EllipticCurvePublicKey) -> bool:
    """Whether ``note`` carries a signature line of this key (name and key ID), valid or
    not: tells "signed by another key" (check the key) from "signed by this key but the
    text was changed" (tampering)."""
    try:
        form = parse(note.encode("utf-8"), "note")
    except InvalidInputError:
        return False
    return (key_name, cpmod.key_id(public_key)) in form.signers


# --- checking against today's log --------------------------------------------------------------


def check(session: Session, key: AuditKey, kept: KeptFile) -> KeptResult:
    """Does today's log extend ``kept``? See the module docstring for the four checks.

    The caller also hands the note to :func:`provisioner.audit.verify.verify_log`, which
    recomputes the root at ``kept.size`` from the events themselves; this check proves the
    same through the stored tree and the latest signed checkpoint, as RFC 6962 intends."""

    def result(kind: str, detail: str = "", latest: int | None = None) -> KeptResult:
        return KeptResult(kept.path, kept.size, kept.root.hex(), kind, detail, latest)

    if not signed_by(kept.note, key.name, key.public_key):
        return result("wrong_key", f"signed by {', '.join(n for n, _ in kept.signers)}")
    try:
        cp = cpmod.open_signed(kept.note, key.name, key.public_key)
    except ProofError as exc:
        return result("bad_signature", str(exc))
    if cp.origin != key.origin:
        return result("other_log", f"its origin is {cp.origin!r}, this log is {key.origin!r}")
    conn = session.connection()
    n = int(conn.exec_driver_sql("SELECT max(seq) FROM audit_event").scalar() or 0)
    if n < cp.size:
        return result("truncated", f"the log has {n} events, the checkpoint covers {cp.size}")
    latest = conn.exec_driver_sql(
        "SELECT size, note FROM audit_checkpoint ORDER BY size DESC LIMIT 1"
    ).first()
    if latest is None or int(latest[0]) < cp.size:
        have = "none" if latest is None else f"the latest covers {latest[0]} events"
        try:
            same = tree.root(session, cp.size) == cp.root if cp.size else True
        except ProofError:
            same = False
        events = "still match" if same else "do NOT match"
        return result(
            "checkpoints_missing",
            f"no signed checkpoint of the log covers {cp.size} events ({have}); the stored "
            f"tree's first {cp.size} events {events} your checkpoint",
            None if latest is None else int(latest[0]),
        )
    latest_size = int(latest[0])
    try:
        head = cpmod.open_signed(latest[1], key.name, key.public_key, key.origin)
    except ProofError as exc:
        return result(
            "rewritten", f"the log's latest checkpoint does not verify: {exc}", latest_size
        )
    try:
        if cp.size:
            proof = tree.consistency_proof(session, cp.size, head.size)
            merkle.verify_consistency(cp.size, head.size, proof, cp.root, head.root)
        stored = tree.root(session, cp.size) if cp.size else merkle.EMPTY_ROOT
    except ProofError as exc:
        return result(
            "rewritten",
            f"the consistency proof from size {cp.size} to size {head.size} fails: {exc}",
            latest_size,
        )
    if stored != cp.root:
        return result(
            "rewritten",
            f"the stored tree's root at size {cp.size} is {stored.hex()}, the checkpoint's "
            f"is {cp.root.hex()}",
            latest_size,
        )
    return result("consistent", "", latest_size)
