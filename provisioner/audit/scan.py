"""One pass over a range of audit events: the work ``audit verify`` splits across CPUs.

A range is leaves ``[lo, hi)`` (events ``lo + 1 .. hi``) with ``lo`` a multiple of
:data:`CHUNK`, so every range but the last is a perfect subtree and ranges can be checked
independently: each link is checked against the ``prev_hash`` stored in its row (the
caller checks the links *between* ranges), and the range's Merkle peaks and the peaks at
each checkpoint size inside it are returned for the caller to combine with the ranges
before it.

Rows are read as plain tuples (no ORM) and the per-row work is one JSON encoding and two
SHA-256: a million events take a few seconds per CPU.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CHUNK = 1 << 17  # leaves per range: a perfect subtree of 131,072 leaves

_EVENTS_SQL = (
    "SELECT e.seq, e.ts, e.actor, e.role, e.event_type, e.station_id, e.socket, e.batch_id, "
    "e.device_id, e.chip_serial, e.payload, e.prev_hash, e.hash, n.hash "
    "FROM audit_event e LEFT JOIN audit_node n ON n.level = 0 AND n.idx = e.seq - 1 "
    "WHERE e.seq > {lo} AND e.seq <= {hi} ORDER BY e.seq"
)


@dataclass
class RangeResult:
    """What one range found; ``bad_seq``/``reason`` is its first chain problem (the scan
    stops there), ``bad_leaf`` its first event whose stored leaf node differs."""

    lo: int
    hi: int
    first_prev: str | None = None
    last_hash: str | None = None
    count: int = 0
    bad_seq: int | None = None
    reason: str = ""
    bad_leaf: int = 0
    peaks: list[bytes] = field(default_factory=list)
    at: dict[int, list[bytes]] = field(default_factory=dict)


def scan(
    execute: Callable[[str], Any], lo: int, hi: int, sizes: Sequence[int], version: int
) -> RangeResult:
    """Check events ``lo + 1 .. hi``; ``execute(sql)`` returns a cursor with fetchmany."""
    res = RangeResult(lo, hi)
    sha256 = hashlib.sha256
    dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
    want = sorted(s for s in sizes if lo < s <= hi)
    cursor = execute(_EVENTS_SQL.format(lo=int(lo), hi=int(hi)))
    expected = lo + 1
    prev_hex: str | None = None
    prev = b""
    peaks = res.peaks
    m = 0  # leaves in this range so far
    while rows := cursor.fetchmany(10_000):
        for row in rows:
            seq = row[0]
            if seq != expected:
                res.bad_seq, res.reason = expected, f"event {expected} is missing (next is {seq})"
                return res
            if prev_hex is None:  # the range's first row: the caller checks this link
                res.first_prev = prev_hex = row[11]
                try:
                    prev = bytes.fromhex(prev_hex or "")
                except ValueError:
                    prev = b""
            elif row[11] != prev_hex:
                res.bad_seq, res.reason = seq, f"event {seq} does not link to event {seq - 1}"
                return res
            encoded = dumps([version, *row[:11]]).encode()
            prev = sha256(prev + encoded).digest()
            prev_hex = prev.hex()
            if prev_hex != row[12]:
                res.bad_seq, res.reason = seq, f"event {seq} ({row[4]}) was altered"
                return res
            h = sha256(b"\x00" + encoded).digest()
            if row[13] != h and not res.bad_leaf:  # also a missing stored leaf (None)
                res.bad_leaf = seq
            k = m
            while k & 1:  # merge equal-sized subtrees: one per trailing 1-bit
                h = sha256(b"\x01" + peaks.pop() + h).digest()
                k >>= 1
            peaks.append(h)
            m += 1
            expected += 1
            if want and want[0] == seq:
                res.at[want.pop(0)] = list(peaks)
    res.count = m
    res.last_hash = prev_hex
    if expected <= hi:
        res.bad_seq, res.reason = expected, f"event {expected} is missing"
    return res


def scan_database(url: str, lo: int, hi: int, sizes: Sequence[int], version: int) -> RangeResult:
    """:func:`scan` on its own read-only connection (a worker process)."""
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(f"file:{url.removeprefix('sqlite:///')}?mode=ro", uri=True)
        try:
            return scan(con.execute, lo, hi, sizes, version)
        finally:
            con.close()
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            conn = c.execution_options(stream_results=True)
            return scan(conn.exec_driver_sql, lo, hi, sizes, version)
    finally:
        engine.dispose()
