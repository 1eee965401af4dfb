"""Recompute the whole audit log and say where it first goes wrong.

Three independent checks, in one pass over the events (raw SQL rows, not ORM objects, so a
million events take seconds):

1. the hash chain: every sequence number present once, each event linked to the one before
   and its hash matching its fields — names the first edited, deleted or reordered row;
2. the Merkle tree: every stored leaf node and the root the stored peaks give must equal
   what the events recompute to. Interior nodes are a cache for proofs: a bad one makes a
   proof fail to verify (``audit prove`` checks each proof before writing it), never pass;
3. the signed checkpoints: each one's signature (audit key, HSM) and its root at its size.
   An insider who rewrites events *and* the chain *and* the nodes still cannot re-sign a
   checkpoint, and a log shorter than its latest checkpoint is a truncation. Checkpoints an
   auditor kept from earlier (``extra_checkpoints``) must also match, which catches a
   deleted checkpoint row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import merkle, tree
from provisioner.audit.chain import GENESIS_HASH
from provisioner.audit.entry import ENTRY_VERSION
from provisioner.errors import ProofError

# Each event with its stored leaf node (level 0): both checked in the same pass.
_EVENTS_SQL = (
    "SELECT e.seq, e.ts, e.actor, e.role, e.event_type, e.station_id, e.socket, e.batch_id, "
    "e.device_id, e.chip_serial, e.payload, e.prev_hash, e.hash, n.hash "
    "FROM audit_event e LEFT JOIN audit_node n ON n.level = 0 AND n.idx = e.seq - 1 "
    "ORDER BY e.seq"
)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a full check; ``first_bad_seq`` names the first bad event (or the first
    missing one) and ``reason`` says what is wrong. ``warnings`` are limits of the check."""

    events: int
    checkpoints: int = 0
    first_bad_seq: int | None = None
    reason: str = ""
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.reason

    def as_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "events": self.events,
            "checkpoints_verified": self.checkpoints,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class AuditKey:
    """What checks a checkpoint: the audit public key, its note key name and the origin."""

    public_key: ec.EllipticCurvePublicKey
    name: str
    origin: str


def verify_log(
    session: Session,
    key: AuditKey | None,
    extra_checkpoints: Sequence[str] = (),
) -> VerifyResult:
    """Check everything; see the module docstring. ``key`` None skips signature checks
    (reported as a warning, never as success of those checks)."""
    warnings: list[str] = []
    try:
        expected = _checkpoints(session, key, extra_checkpoints, warnings)
    except _Bad as bad:
        return VerifyResult(0, 0, bad.seq, bad.reason)
    # stream_results: a server-side cursor on PostgreSQL, so a million rows are not
    # loaded at once (SQLite streams anyway).
    conn = session.connection().execution_options(stream_results=True)
    cursor = conn.exec_driver_sql(_EVENTS_SQL)
    sha256 = hashlib.sha256
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
    prev, prev_hex = bytes.fromhex(GENESIS_HASH), GENESIS_HASH
    peaks: list[bytes] = []  # the frontier, as a stack; sizes follow the bits of n
    n = 0
    bad_leaf = 0  # the first event whose stored leaf node differs (0: none)
    checked_cps = 0
    good_size = 0  # the largest size known good (a checkpoint matched there)
    pending = sorted(expected)
    try:
        while rows := cursor.fetchmany(10_000):
            for row in rows:
                seq = row[0]
                if seq != n + 1:
                    if seq <= n:
                        raise _Bad(seq, f"event {seq} appears twice or out of order")
                    raise _Bad(n + 1, f"event {n + 1} is missing (next is {seq})")
                if row[11] != prev_hex:
                    raise _Bad(seq, f"event {seq} does not link to event {seq - 1}")
                encoded = dumps([ENTRY_VERSION, *row[:11]]).encode()
                prev = sha256(prev + encoded).digest()
                prev_hex = prev.hex()
                if prev_hex != row[12]:
                    raise _Bad(seq, f"event {seq} ({row[4]}) was altered")
                # Merkle append on the stack: merge equal-sized subtrees (trailing 1-bits).
                h = sha256(b"\x00" + encoded).digest()
                if row[13] != h:  # also when the stored leaf is missing (None)
                    bad_leaf = bad_leaf or seq
                m = n
                while m & 1:
                    h = sha256(b"\x01" + peaks.pop() + h).digest()
                    m >>= 1
                peaks.append(h)
                n += 1
                while pending and pending[0] == n:
                    pending.pop(0)
                    if _root(peaks) != expected[n]:
                        raise _Bad(
                            bad_leaf if good_size < bad_leaf <= n else None,
                            f"events {good_size + 1}..{n} do not match the checkpoint signed "
                            f"at size {n}: the log was rewritten after it was signed",
                        )
                    checked_cps += 1
                    good_size = n
        if pending:
            top = pending[-1]
            raise _Bad(
                n + 1,
                f"the log was truncated: a signed checkpoint covers {top} events, "
                f"only {n} are present",
            )
        if bad_leaf or (n and _root(peaks) != tree.root(session, n)):
            raise _Bad(
                bad_leaf or None,
                "the stored Merkle nodes do not match the events (proofs would fail)",
            )
    except _Bad as bad:
        return VerifyResult(n, checked_cps, bad.seq, bad.reason, tuple(warnings))
    except ProofError as exc:
        return VerifyResult(n, checked_cps, None, f"the stored Merkle tree is incomplete: {exc}")
    if n > good_size:
        warnings.append(f"events {good_size + 1}..{n} are not yet under a signed checkpoint")
    return VerifyResult(n, checked_cps, None, "", tuple(warnings))


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def _root(peaks: list[bytes]) -> bytes:
    if not peaks:
        return merkle.EMPTY_ROOT
    h = peaks[-1]
    for p in reversed(peaks[:-1]):
        h = merkle.node_hash(p, h)
    return h


def _checkpoints(
    session: Session, key: AuditKey | None, extra: Sequence[str], warnings: list[str]
) -> dict[int, bytes]:
    """Size -> signed root of every stored checkpoint (signature checked) and of every
    checkpoint the auditor brought."""
    rows = session.connection().exec_driver_sql(
        "SELECT size, root_hash, note FROM audit_checkpoint ORDER BY size"
    )
    roots: dict[int, bytes] = {}
    for size, root_hex, note in rows:
        if key is None:
            roots[size] = bytes.fromhex(root_hex)
            continue
        try:
            cp = cpmod.open_signed(note, key.name, key.public_key, key.origin)
        except ProofError as exc:
            raise _Bad(
                None, f"the checkpoint stored at size {size} does not verify: {exc}"
            ) from None
        if cp.size != size or cp.root.hex() != root_hex:
            raise _Bad(None, f"the checkpoint row at size {size} differs from its signed note")
        roots[size] = cp.root
    if key is None:
        if roots:
            warnings.append("checkpoint signatures NOT checked (no audit public key): pass --key")
        if extra:
            raise _Bad(None, "checking a kept checkpoint needs the audit public key (--key)")
    for note in extra:
        assert key is not None
        try:
            cp = cpmod.open_signed(note, key.name, key.public_key, key.origin)
        except ProofError as exc:
            raise _Bad(None, f"a checkpoint you supplied does not verify: {exc}") from None
        if roots.setdefault(cp.size, cp.root) != cp.root:
            raise _Bad(
                None,
                f"your checkpoint at size {cp.size} differs from the one stored: the log "
                "was forked or rewritten",
            )
    return roots
