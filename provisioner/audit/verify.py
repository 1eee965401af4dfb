"""Recompute the whole audit log and say where it first goes wrong.

Three independent checks, in one pass over the events (raw SQL rows, not ORM objects;
ranges of the log are scanned in parallel processes, :mod:`provisioner.audit.scan`):

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

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from provisioner.audit import checkpoint as cpmod
from provisioner.audit import kept, merkle, scan, tree
from provisioner.audit.chain import GENESIS_HASH
from provisioner.audit.entry import ENTRY_VERSION
from provisioner.errors import ProofError


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a full check; ``first_bad_seq`` names the first bad event (or the first
    missing one) and ``reason`` says what is wrong. ``warnings`` are limits of the check.

    ``kind`` sorts a failure for the plain-word explanation
    (:mod:`provisioner.audit.explain`): "chain" (an event edited, deleted or reordered),
    "rewritten" (events no longer match a signed checkpoint), "rows" (rows outside the
    sequence), "truncated", "tree" (the stored Merkle nodes), "signature" (a stored
    checkpoint does not verify), "wrong_key" (no stored checkpoint is signed by this key:
    check the key first), "needs_key", "kept_signature" (a checkpoint the auditor brought
    does not verify), "forked" (it differs from the stored one). Empty when ok."""

    events: int
    checkpoints: int = 0
    first_bad_seq: int | None = None
    reason: str = ""
    warnings: tuple[str, ...] = field(default=())
    kind: str = ""

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
            "kind": self.kind,
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
    *,
    workers: int | None = None,
    chunk: int = scan.CHUNK,
) -> VerifyResult:
    """Check everything; see the module docstring. ``key`` None skips signature checks
    (reported as a warning, never as success of those checks). Logs longer than two
    ranges are scanned by ``workers`` processes (default: one per CPU); ``chunk`` (a power
    of two) is the range size, smaller only in tests."""
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError("chunk must be a power of two")
    warnings: list[str] = []
    try:
        expected = _checkpoints(session, key, extra_checkpoints, warnings)
    except _Bad as bad:
        return VerifyResult(0, 0, bad.seq, bad.reason, kind=bad.kind)
    conn = session.connection()
    first, last, count = conn.exec_driver_sql(
        "SELECT min(seq), max(seq), count(*) FROM audit_event"
    ).one()
    n = int(last or 0)
    sizes = sorted(expected)
    results = _scan_all(session, n, sizes, workers, chunk)
    checked, good, bad_leaf = 0, 0, 0
    prefix: list[bytes] = []  # peaks of the ranges before this one
    prev_last = GENESIS_HASH
    try:
        for r in results:
            if r.count and r.first_prev != prev_last:
                raise _Bad(r.lo + 1, f"event {r.lo + 1} does not link to event {r.lo}", "chain")
            if r.bad_seq is not None:
                raise _Bad(r.bad_seq, r.reason, "chain")
            for size, local in sorted(r.at.items()):
                leaf = bad_leaf or (r.bad_leaf if 0 < r.bad_leaf <= size else 0)
                if _root(prefix + local) != expected[size]:
                    raise _Bad(
                        leaf if good < leaf <= size else None,
                        f"events {good + 1}..{size} do not match the checkpoint signed "
                        f"at size {size}: the log was rewritten after it was signed",
                        "rewritten",
                    )
                checked, good = checked + 1, size
            prefix = _push(prefix, r.peaks, r.lo // chunk, r.hi - r.lo == chunk)
            prev_last = r.last_hash or prev_last
            bad_leaf = bad_leaf or r.bad_leaf
        if count != n or (count and first < 1):
            # A row with seq outside 1..n (say, left behind by a reorder) is in no range.
            raise _Bad(None, f"{count - n} rows lie outside the sequence 1..{n}", "rows")
        if sizes and sizes[-1] > n:
            raise _Bad(
                n + 1,
                f"the log was truncated: a signed checkpoint covers {sizes[-1]} events, "
                f"only {n} are present",
                "truncated",
            )
        if bad_leaf or (n and _root(prefix) != tree.root(session, n)):
            raise _Bad(
                bad_leaf or None,
                "the stored Merkle nodes do not match the events (proofs would fail)",
                "tree",
            )
    except _Bad as bad:
        return VerifyResult(n, checked, bad.seq, bad.reason, tuple(warnings), bad.kind)
    except ProofError as exc:
        return VerifyResult(
            n, checked, None, f"the stored Merkle tree is incomplete: {exc}", kind="tree"
        )
    if n > good:
        warnings.append(f"events {good + 1}..{n} are not yet under a signed checkpoint")
    return VerifyResult(n, checked, None, "", tuple(warnings))


def _scan_all(
    session: Session, n: int, sizes: list[int], workers: int | None, chunk: int
) -> list[scan.RangeResult]:
    ranges = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    workers = min(workers or os.cpu_count() or 1, len(ranges))
    if workers <= 1:
        # stream_results: a server-side cursor on PostgreSQL (SQLite streams anyway).
        conn = session.connection().execution_options(stream_results=True)
        return [scan.scan(conn.exec_driver_sql, lo, hi, sizes, ENTRY_VERSION) for lo, hi in ranges]
    url = session.get_bind().engine.url.render_as_string(hide_password=False)
    # spawn, not fork: a forked child would inherit this process's database connections
    # (and, in a worker, PKCS#11 state that must not cross a fork).
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = [
            pool.submit(scan.scan_database, url, lo, hi, sizes, ENTRY_VERSION) for lo, hi in ranges
        ]
        return [f.result() for f in futures]


def _push(prefix: list[bytes], peaks: list[bytes], before: int, full: bool) -> list[bytes]:
    """The peaks of the ranges so far plus this one (``before`` full ranges precede it).
    A full range is one perfect subtree of ``chunk`` leaves, merged like a leaf at its level;
    the partial last one just adds its smaller peaks after them."""
    if not full:
        return prefix + peaks
    out, h = list(prefix), peaks[0]
    while before & 1:
        h = merkle.node_hash(out.pop(), h)
        before >>= 1
    out.append(h)
    return out


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str, kind: str = "") -> None:
        super().__init__(reason)
        self.seq, self.reason, self.kind = seq, reason, kind


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
                None,
                f"the checkpoint stored at size {size} does not verify: {exc}",
                "signature" if roots or _ours(session, key, note) else "wrong_key",
            ) from None
        if cp.size != size or cp.root.hex() != root_hex:
            raise _Bad(
                None,
                f"the checkpoint row at size {size} differs from its signed note",
                "signature",
            )
        roots[size] = cp.root
    if key is None:
        if roots:
            warnings.append("checkpoint signatures NOT checked (no audit public key): pass --key")
        if extra:
            raise _Bad(
                None, "checking a kept checkpoint needs the audit public key (--key)", "needs_key"
            )
    for note in extra:
        assert key is not None
        try:
            cp = cpmod.open_signed(note, key.name, key.public_key, key.origin)
        except ProofError as exc:
            raise _Bad(
                None, f"a checkpoint you supplied does not verify: {exc}", "kept_signature"
            ) from None
        if roots.setdefault(cp.size, cp.root) != cp.root:
            raise _Bad(
                None,
                f"your checkpoint at size {cp.size} differs from the one stored: the log "
                "was forked or rewritten",
                "forked",
            )
    return roots


def _ours(session: Session, key: AuditKey, note: str) -> bool:
    """Whether this key signed ``note`` or the latest stored checkpoint (validly or not).

    Called when the first checkpoint fails: if neither carries a signature of this key,
    the likeliest cause is the wrong key (or every checkpoint replaced), which the auditor
    must rule out before reading anything into the log."""
    latest = (
        session.connection()
        .exec_driver_sql("SELECT note FROM audit_checkpoint ORDER BY size DESC LIMIT 1")
        .scalar()
    )
    return any(
        kept.signed_by(n, key.name, key.public_key) for n in (note, latest) if isinstance(n, str)
    )
