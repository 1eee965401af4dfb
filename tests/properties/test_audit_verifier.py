"""The auditors' standalone verifier reads files from outside the factory (checkpoints,
proof files, consistency files, JSONL exports, signed reports): whatever they hold, the
answer is a VerifierError (or ReportSignatureError) with a finding, never a traceback;
what the factory signs verifies; any changed byte of it is refused."""

from __future__ import annotations

import contextlib
import json
from functools import cache
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from provisioner.audit import verifier
from provisioner.audit.checkpoint import sign
from provisioner.audit.verifier import (
    PROOF_FORMAT,
    Checkpoint,
    Entry,
    ReportSignatureError,
    VerifierError,
    leaf_hash,
)
from provisioner.reports.signing import sign_report, verify_report_bytes
from tests.properties.bounded import bounded, mutate

ORIGIN = "factory.example/audit"
# Inputs that are JSON only to a naive parser: deeper than the interpreter's recursion
# limit, and an integer longer than Python 3.11 converts (ValueError, not JSONDecodeError).
DEEP = b"[" * 100_000
LONG_INT = b"1" * 5_000
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@cache
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _entry(seq: int, serial: str, payload: str) -> Entry:
    return Entry(
        seq,
        "2024-01-01T00:00:00Z",
        "admin",
        "admin",
        "sign.issued",
        None,
        None,
        1,
        1,
        serial,
        payload,
    )


def _proof_file(entry: Entry) -> bytes:
    """A proof file for a log of one event (its root is its leaf)."""
    leaf = leaf_hash(entry.encode())
    note = sign(Checkpoint(ORIGIN, 1, leaf), ORIGIN, _key())
    doc: dict[str, Any] = {
        "format": PROOF_FORMAT,
        "chip_serial": entry.chip_serial,
        "checkpoint": note,
        "events": [
            {
                "event": entry.as_json(),
                "leaf_index": 0,
                "inclusion_proof": [],
                "leaf_hash": leaf.hex(),
            }
        ],
    }
    return json.dumps(doc).encode()


# --- checkpoints ------------------------------------------------------------------------------


@bounded(300)
@given(
    size=st.integers(min_value=0, max_value=verifier.MAX_TREE_SIZE),
    root=st.binary(min_size=32, max_size=32),
)
def test_checkpoints_round_trip(size: int, root: bytes) -> None:
    cp = Checkpoint(ORIGIN, size, root)
    assert verifier.open_checkpoint(sign(cp, ORIGIN, _key()), _key().public_key()) == cp


@bounded(300)
@given(note=st.text(max_size=300))
def test_any_text_is_a_checkpoint_or_a_finding(note: str) -> None:
    with contextlib.suppress(VerifierError):
        verifier.open_checkpoint(note, _key().public_key())


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=127))
def test_changed_checkpoints_are_refused(at: int, xor: int) -> None:
    note = sign(Checkpoint(ORIGIN, 42, bytes(range(32))), ORIGIN, _key()).encode()
    changed = mutate(note, at, xor)
    try:
        text = changed.decode()
    except UnicodeDecodeError:
        return  # a file that is not text never reaches the parser as a note
    try:
        got = verifier.open_checkpoint(text, _key().public_key())
    except VerifierError:
        return
    raise AssertionError(f"a changed checkpoint verified: {got}")


# --- proof, consistency and export files -------------------------------------------------------


@bounded(200)
@given(serial=st.from_regex(r"01[0-9A-F]{16}", fullmatch=True), payload=st.text(max_size=40))
def test_proof_files_round_trip(serial: str, payload: str) -> None:
    entry = _entry(1, serial, payload)
    result = verifier.check_proof(_proof_file(entry), _key().public_key())
    assert result.events == [entry] and result.tree_size == 1


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=127))
def test_changed_proof_files_are_refused(at: int, xor: int) -> None:
    """A changed byte is refused, or it changed nothing the proof says: an optional or
    unknown key (``leaf_hash``) renamed, an escape's letter case, white space."""
    entry = _entry(1, "0123456789ABCDEF01", "{}")
    raw = mutate(_proof_file(entry), at, xor)
    try:
        result = verifier.check_proof(raw, _key().public_key())
    except VerifierError:
        return
    assert (result.chip_serial, result.events, result.tree_size, result.origin) == (
        entry.chip_serial,
        [entry],
        1,
        ORIGIN,
    )


@bounded(300)
@given(raw=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode())))
@example(raw=DEEP)
@example(raw=LONG_INT)
@example(raw=b'{"format": "provisioner-audit-proof/2", "events": [' + LONG_INT + b"]}")
def test_any_bytes_are_a_proof_file_or_a_finding(raw: bytes) -> None:
    with contextlib.suppress(VerifierError):
        verifier.check_proof(raw, _key().public_key())


@bounded(300)
@given(
    doc=st.fixed_dictionaries(
        {"format": st.sampled_from([PROOF_FORMAT, verifier.PROOF_FORMAT_V1])},
        optional={"chip_serial": JSON, "events": st.lists(JSON, max_size=3), "checkpoint": JSON},
    )
)
def test_any_proof_document_is_verified_or_a_finding(doc: dict[str, Any]) -> None:
    with contextlib.suppress(VerifierError):
        verifier.check_proof(json.dumps(doc).encode(), _key().public_key())


@bounded(300)
@given(raw=st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode())))
@example(raw=DEEP)
@example(raw=LONG_INT)
def test_any_bytes_are_a_consistency_file_or_a_finding(raw: bytes) -> None:
    with contextlib.suppress(VerifierError):
        verifier.check_consistency(raw, _key().public_key())


@bounded(300)
@given(lines=st.lists(st.one_of(st.binary(max_size=80), JSON.map(json.dumps)), max_size=4))
@example(lines=[DEEP])
@example(lines=[LONG_INT])
def test_any_export_is_a_segment_or_a_finding(lines: list[bytes | str]) -> None:
    with contextlib.suppress(VerifierError):
        verifier.check_segment(lines, Checkpoint(ORIGIN, 1, bytes(32)))


@bounded(100)
@given(raw=st.binary(max_size=300))
def test_any_bytes_are_an_audit_key_or_a_finding(raw: bytes) -> None:
    with contextlib.suppress(VerifierError):
        verifier.load_public_key(raw)


# --- signed batch reports ------------------------------------------------------------------


def _report(body: bytes = b"<html><p>batch 7</p></html>\n") -> bytes:
    return sign_report(body, _key(), ORIGIN, 7)


@bounded(200)
@given(html=st.binary(max_size=200), batch=st.integers(min_value=1, max_value=10**18))
def test_reports_round_trip(html: bytes, batch: int) -> None:
    body = html.replace(b"<!--", b"") + b"\n"
    signed = sign_report(body, _key(), ORIGIN, batch)
    assert verify_report_bytes(signed, _key().public_key()) == (batch, ORIGIN)


@bounded(300)
@given(at=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_changed_reports_are_refused(at: int, xor: int) -> None:
    try:
        got = verify_report_bytes(mutate(_report(), at, xor), _key().public_key())
    except ReportSignatureError:
        return
    raise AssertionError(f"a changed report verified: {got}")


@bounded(300)
@given(
    raw=st.one_of(
        st.binary(max_size=300), st.binary(max_size=200).map(lambda b: _report()[:-200] + b)
    )
)
def test_any_bytes_are_a_signed_report_or_a_finding(raw: bytes) -> None:
    with contextlib.suppress(ReportSignatureError):
        verify_report_bytes(raw, _key().public_key())
