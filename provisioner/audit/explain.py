"""Plain words for a verification: what was checked, and on failure what it means and what
to do. Shared by ``provisioner audit verify`` and the dashboard so both say the same thing.

An auditor reading "BROKEN" must be able to trust it: it is said only when the log itself
fails a check. A file in the wrong form, a checkpoint signed by another key or a missing key
are problems with the auditor's inputs, and the words say so ("this says nothing about the
log yet"), because a false alarm about the log costs an incident and trains people to
ignore the real one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from provisioner.audit.kept import KeptResult
from provisioner.audit.verify import VerifyResult

PRESERVE = (
    "Do not change anything in the database. Keep a copy of it as it is now (a database "
    "backup, and `provisioner audit export --format jsonl -o FILE`), tell the site's "
    "security contact and raise an incident; this is not an error to retry. Compare the "
    "copy with an earlier export or backup, and with the checkpoints you kept (`provisioner "
    "audit verify --since-checkpoint FILE --key KEY`), to find what changed and when."
)

# Failures that are about the auditor's inputs (key, files), never the log.
_NOT_ABOUT_THE_LOG = frozenset({"wrong_key", "needs_key", "kept_signature"})


def key_sha256(public_key: ec.EllipticCurvePublicKey) -> str:
    """The audit key's fingerprint: SHA-256 of its DER SubjectPublicKeyInfo, hex. The same
    value the dashboard shows and the auditor pins (``openssl pkey -pubin -in KEY -outform
    DER | sha256sum`` gives it too)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class Explanation:
    """One verification in words: a headline, what was checked, and (on failure) what it
    means and what to do. ``broken`` is True only when the log itself failed a check."""

    ok: bool
    broken: bool
    headline: str
    checked: list[str] = field(default_factory=list)
    means: list[str] = field(default_factory=list)
    todo: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [self.headline, "What was checked:"]
        out += [f"  - {c}" for c in self.checked]
        if self.means:
            out += ["What it means:"] + [f"  {m}" for m in self.means]
        if self.todo:
            out += ["What to do:"] + [f"  {t}" for t in self.todo]
        return out


def explain(
    result: VerifyResult, key_sha256: str | None = None, kept: Sequence[KeptResult] = ()
) -> list[str]:
    """The explanation as printable lines (see :func:`explanation`)."""
    return explanation(result, key_sha256, kept).lines()


def explanation(
    result: VerifyResult, key_sha256: str | None = None, kept: Sequence[KeptResult] = ()
) -> Explanation:
    """Words for a :func:`~provisioner.audit.verify.verify_log` result and the kept
    checkpoints checked with it. ``key_sha256`` names the key the signatures were checked
    with (None: no key, signatures not checked)."""
    checked = _checked(result, key_sha256) + [_kept_line(k, key_sha256) for k in kept]
    bad_kept = [k for k in kept if not k.ok]
    if result.ok and not bad_kept:
        return Explanation(True, False, _ok_headline(result, kept), checked)
    means: list[str] = []
    todo: list[str] = []
    broken = False
    if not result.ok:
        m, t = _meaning(result, key_sha256)
        means += m
        todo += t
        broken = result.kind not in _NOT_ABOUT_THE_LOG
    for k in bad_kept:
        m, t = _kept_meaning(k, key_sha256)
        means += m
        todo += [x for x in t if x not in todo]
        broken = broken or k.about_the_log
    return Explanation(False, broken, _bad_headline(result, bad_kept), checked, means, todo)


def _ok_headline(result: VerifyResult, kept: Sequence[KeptResult]) -> str:
    line = (
        f"audit trail intact: {result.events} events verified, "
        f"{result.checkpoints} signed checkpoints match"
    )
    if kept:
        line += f", and today's log extends each of the {len(kept)} kept checkpoints"
    return line


def _bad_headline(result: VerifyResult, bad_kept: Sequence[KeptResult]) -> str:
    if not result.ok and result.kind == "wrong_key":
        return "could NOT check the signed checkpoints: none is signed by this key"
    if not result.ok and result.kind == "needs_key":
        return "could NOT check: a kept checkpoint needs the audit public key (--key)"
    if not result.ok:
        at = f" at event {result.first_bad_seq}" if result.first_bad_seq else ""
        return f"audit trail BROKEN{at}: {result.reason}"
    about_log = [k for k in bad_kept if k.about_the_log]
    if about_log:
        k = about_log[0]
        return (
            f"audit trail BROKEN: today's log does not extend the checkpoint you kept in {k.path}"
        )
    names = ", ".join(k.path for k in bad_kept)
    return (
        f"the log verifies, but the kept checkpoint(s) {names} could NOT be used "
        "(see below): this says nothing about the log yet"
    )


def _checked(result: VerifyResult, key_sha256: str | None) -> list[str]:
    n = result.events
    if not result.ok:
        return [
            f"events in the log: {n}; signed checkpoints matched before the check stopped: "
            f"{result.checkpoints}",
            _key_line(key_sha256),
        ]
    return [
        f"events: all {n} recomputed from their fields (time, actor, type, station, batch, "
        "device, details)",
        f"hash chain: each of the {n} events links to the one before it, none missing, "
        "edited or reordered",
        f"Merkle tree: the stored hash tree over the {n} events matches them (proof files are "
        "cut from it)",
        f"signed checkpoints: {result.checkpoints} match the events; " + _key_line(key_sha256),
    ] + [f"limit: {w}" for w in result.warnings]


def _key_line(key_sha256: str | None) -> str:
    if key_sha256 is None:
        return "signatures NOT checked: no audit public key (pass --key with the copy you pinned)"
    return f"signatures checked with the audit key whose SHA-256 is {key_sha256}"


def _check_key(key: str | None) -> str:
    return (
        f"Check the key first: compare its SHA-256 ({key or 'unknown'}) with the fingerprint "
        "you pinned, and use your own copy of the key (--key)."
    )


def _meaning(result: VerifyResult, key: str | None) -> tuple[list[str], list[str]]:
    seq = result.first_bad_seq
    kind = result.kind
    check_key = _check_key(key)
    if kind == "chain":
        return [
            f"Event {seq} is not the event that was written: its record was changed, deleted "
            f"or moved after it was recorded ({result.reason}). Events from {seq} on cannot be "
            f"trusted as they stand; events before {seq} still verify.",
        ], [PRESERVE]
    if kind == "rewritten":
        first = f" The first changed event is {seq}." if seq else ""
        return [
            f"The events are no longer the ones the audit key signed ({result.reason}). The "
            "records were changed after they were signed and their hash chain recomputed to "
            f"hide it: only the signed checkpoint shows it.{first}",
        ], [PRESERVE]
    if kind == "truncated":
        return [
            f"The log was cut short: {result.reason}. Events from {seq} on were deleted after "
            "a checkpoint covering them was signed; kept checkpoints, exports and backups hold "
            "what was lost.",
        ], [PRESERVE]
    if kind == "rows":
        return [
            f"{result.reason}: rows were added or moved by hand outside the numbered sequence.",
        ], [PRESERVE]
    if kind == "tree":
        return [
            f"{result.reason}. The events and the hash chain verify, but the stored hash tree "
            "that proof files are cut from was changed or damaged: new proofs would fail.",
        ], [
            "Do not change anything in the database; keep a copy and tell an admin (the "
            "product never rewrites stored tree nodes, so this was done by hand or by a "
            "damaged disk)."
        ]
    if kind == "signature":
        return [
            f"{result.reason}. The key signed other checkpoints, so this one was edited or "
            "forged in the database.",
        ], [check_key, "If the key is the right one: " + PRESERVE]
    if kind == "wrong_key":
        return [
            "No checkpoint in the database carries a signature of this key: most likely this "
            "is not the right audit public key; otherwise every checkpoint was replaced by "
            "ones signed with another key. This says nothing about the log yet.",
        ], [check_key, "If the key is the right one, treat it as an incident: " + PRESERVE]
    if kind == "needs_key":
        return [
            "Kept checkpoints are checked with the audit public key, and none was found.",
        ], ["Pass --key FILE with the audit public key you pinned."]
    if kind == "kept_signature":
        return [
            f"{result.reason}. This says nothing about the log yet: the file you brought does "
            "not verify.",
        ], [check_key, "Then use another copy of the kept checkpoint."]
    if kind == "forked":
        return [
            f"{result.reason}: the checkpoint stored in the database at that size is not the "
            "one you kept, so the log you are looking at is not the log that was signed then.",
        ], [PRESERVE]
    return [result.reason], [PRESERVE]


_KEPT_SHORT = {
    "wrong_key": "NOT signed by this key",
    "bad_signature": "its signature does NOT verify (the file was changed)",
    "other_log": "a checkpoint of another log",
    "truncated": "the log is now SHORTER than it",
    "rewritten": "today's log does NOT extend it",
    "checkpoints_missing": "no signed checkpoint of the log reaches its size any more",
}


def _kept_line(k: KeptResult, key: str | None) -> str:
    head = f"kept checkpoint {k.path} (size {k.size}, root {k.root_hex[:16]}…): "
    if k.ok:
        return head + (
            f"the stored tree extends it: the consistency proof to the latest signed "
            f"checkpoint (size {k.latest_size}) verified and the stored root at size {k.size} "
            "matches"
        )
    return head + _KEPT_SHORT.get(k.kind, k.kind)


def _kept_meaning(k: KeptResult, key: str | None) -> tuple[list[str], list[str]]:
    if k.kind == "wrong_key":
        return [
            f"{k.path} is not signed by this key ({k.detail}): check you have the right audit "
            f"public key (its SHA-256 is {key}) — this says nothing about the log yet.",
        ], [_check_key(key)]
    if k.kind == "bad_signature":
        return [
            f"{k.path} carries a signature of this key that does not verify ({k.detail}): the "
            "file was changed after it was signed, or damaged. This says nothing about the log "
            "yet.",
        ], ["Use another copy of the kept checkpoint (keep them where nobody can edit them)."]
    if k.kind == "other_log":
        return [
            f"{k.path} is a checkpoint of another log ({k.detail}). This says nothing about "
            "this log.",
        ], ["Use a checkpoint saved from this installation (`audit checkpoint save FILE`)."]
    if k.kind == "truncated":
        return [
            f"Today's log is shorter than your kept checkpoint {k.path} ({k.detail}): events "
            "were deleted after it was signed.",
        ], [PRESERVE]
    if k.kind == "checkpoints_missing":
        return [
            f"The database has no signed checkpoint as large as your kept one {k.path} "
            f"({k.detail}): signed checkpoints were deleted, or the database was restored "
            "from an older backup.",
        ], ["Ask the admin whether the database was restored from a backup; if not: " + PRESERVE]
    return [
        f"Today's log does not extend your kept checkpoint {k.path} ({k.detail}): the first "
        f"{k.size} events are no longer the ones signed when you kept it. The log was "
        "rewritten after that, even if every check inside the database passes.",
    ], [PRESERVE]
