"""The audit log at factory scale: verify, inclusion proofs, queries, appends.

Builds a SQLite log of ``--events`` events (default 1,000,000: 125,000 chips x 8 events,
the shape a provisioning line writes) with a checkpoint signed every 1,000 events, then
measures, on this machine:

* ``audit verify`` of the whole log (chain, leaves, tree root, every checkpoint signature),
  with ranges scanned by one process per CPU (the default), and in one process;
* an inclusion proof for a random event at the full size (built from the stored nodes),
  and its verification;
* a query by chip serial (one page, as ``audit query --serial`` runs it), p50/p95;
* the cost of one append (``chain.append``: chain link + Merkle nodes), one event per
  transaction and 100 per transaction, on the full-size log.

The bulk build writes rows with the same encoding ``chain.append`` uses (and the verify
step would fail otherwise); it is a loader, not what is measured. Checkpoints are signed
with a software P-256 key here: the figure of interest is the log, and one token signature
per 1,000 events is ~0.2 ms. Goals (issue 6): verify 1M <= 10 s, proof <= 5 ms, query p95
<= 20 ms. Run:

    .venv/bin/python -m bench.audit_log [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session

from provisioner.audit import chain, checkpoint, merkle, tree
from provisioner.audit.chain import GENESIS_HASH
from provisioner.audit.entry import Entry, canonical_payload
from provisioner.audit.query import EventFilter, page
from provisioner.audit.verify import AuditKey, verify_log
from provisioner.db.engine import create_schema, make_engine, transaction

ORIGIN = "bench.invalid/audit"
STEPS = (
    "device.identified",
    "device.key_generated",
    "device.pop_verified",
    "device.cert_issued",
    "device.cert_written",
    "device.cert_verified",
    "upload.done",
    "device.done",
)


def serial_of(chip: int) -> str:
    return f"0123{chip:012X}EE"


def _ts(seq: int) -> str:
    """One event every 2 s from 2026-11-01 (a month of a busy line)."""
    sec = seq * 2
    day, sec = divmod(sec, 86400)
    return f"2026-11-{1 + day:02d}T{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}.000000Z"


def build(db: Path, events: int, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``events`` events, their tree and a checkpoint every 1,000 (bulk loader)."""
    engine = make_engine(f"sqlite:///{db}")
    create_schema(engine)
    engine.dispose()
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    prev = GENESIS_HASH
    frontier = merkle.Frontier()
    ev_rows: list[tuple[object, ...]] = []
    node_rows: list[tuple[int, int, bytes]] = []
    t0 = time.perf_counter()
    for seq in range(1, events + 1):
        chip, step = divmod(seq - 1, len(STEPS))
        entry = Entry(
            seq=seq,
            ts=_ts(seq),
            actor="station:line1",
            role="station",
            event_type=STEPS[step],
            station_id="line1",
            socket=chip % 4,
            batch_id=1 + chip // 1000,
            device_id=chip + 1,
            chip_serial=serial_of(chip),
            payload=canonical_payload({"step": step, "fingerprint_sha256": f"{seq:064x}"}),
        )
        encoded = entry.encode()
        link = chain.link_hash(prev, encoded)
        ev_rows.append((*dataclasses.astuple(entry), prev, link))
        prev = link
        frontier, nodes = frontier.append(merkle.leaf_hash(encoded))
        node_rows.extend((lv, ix, h) for (lv, ix), h in nodes)
        if seq % 1000 == 0 or seq == events:
            note = checkpoint.sign(checkpoint.Checkpoint(ORIGIN, seq, frontier.root()), ORIGIN, key)
            con.executemany(
                "INSERT INTO audit_event (seq, ts, actor, role, event_type, station_id, "
                "socket, batch_id, device_id, chip_serial, payload, prev_hash, hash) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                ev_rows,
            )
            con.executemany("INSERT INTO audit_node (level, idx, hash) VALUES (?,?,?)", node_rows)
            con.execute(
                "INSERT INTO audit_checkpoint (size, root_hash, note, reason, created_at) "
                "VALUES (?,?,?,?,?)",
                (seq, frontier.root().hex(), note, "events", "2026-11-22T00:00:00.000000Z"),
            )
            ev_rows.clear()
            node_rows.clear()
        if seq % 100_000 == 0:
            print(f"  built {seq:,} events ({time.perf_counter() - t0:.0f} s)", flush=True)
    con.commit()
    con.execute("ANALYZE")
    con.close()


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", type=Path, help="build (or reuse) the log in this directory")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-audit-"))
    root.mkdir(parents=True, exist_ok=True)
    db = root / "audit.db"
    key_file = root / "key.json"
    try:
        if not db.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            print(f"building a log of {args.events:,} events in {db} …", flush=True)
            build(db, args.events, key)
            key_file.write_text(json.dumps({"d": key.private_numbers().private_value}))
        key = ec.derive_private_key(json.loads(key_file.read_text())["d"], ec.SECP256R1())
        engine = make_engine(f"sqlite:///{db}")
        create_schema(engine)
        audit_key = AuditKey(key.public_key(), ORIGIN, ORIGIN)
        with Session(engine) as s:
            n = s.connection().exec_driver_sql("SELECT max(seq) FROM audit_event").scalar()
        assert isinstance(n, int)
        print(f"log: {n:,} events, {db.stat().st_size / 1e6:.0f} MB\n", flush=True)

        # 1. verify everything (best of 2: the first run also warms the page cache)
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            with transaction(engine) as s:
                res = verify_log(s, audit_key)
            runs.append(time.perf_counter() - t)
            assert res.ok, res.reason
        print(
            f"verify {res.events:,} events + {res.checkpoints:,} checkpoints: "
            f"{min(runs):.2f} s (runs {', '.join(f'{r:.2f}' for r in runs)}; goal <= 10 s)"
        )
        print(f"  = {res.events / min(runs) / 1e3:.0f}k events/s, {res.checkpoints} checkpoints")
        t = time.perf_counter()
        with transaction(engine) as s:
            assert verify_log(s, audit_key, workers=1).ok
        one = time.perf_counter() - t
        print(f"  (in one process: {one:.2f} s; ranges in parallel: {one / min(runs):.1f} x)")

        # 2. inclusion proofs at the full size
        rnd = random.Random(7)
        with Session(engine) as s:
            root_hash = tree.root(s, n)
            idx = [rnd.randrange(n) for _ in range(1000)]
            it = iter(idx)
            build_ms = timed(lambda: tree.inclusion_proof(s, next(it), n), len(idx))
            proofs = {i: tree.inclusion_proof(s, i, n) for i in idx[:200]}
        leaves = {}
        with Session(engine) as s:
            for i in proofs:
                leaves[i] = bytes(
                    s.connection()
                    .exec_driver_sql(f"SELECT hash FROM audit_node WHERE level=0 AND idx={i}")
                    .scalar_one()
                )
        it2 = iter(proofs)

        def check_one() -> None:
            i = next(it2)
            merkle.verify_inclusion(leaves[i], i, n, proofs[i], root_hash)

        verify_ms = timed(check_one, len(proofs))
        print(
            f"inclusion proof at size {n:,}: build p50 {p(build_ms, 0.5):.2f} ms, "
            f"p95 {p(build_ms, 0.95):.2f} ms (goal <= 5 ms); verify p50 "
            f"{p(verify_ms, 0.5):.3f} ms"
        )

        # 3. query by chip serial
        chips = n // len(STEPS)
        with Session(engine) as s:
            serials = iter([serial_of(rnd.randrange(chips)) for _ in range(1000)])
            q_ms = timed(lambda: page(s, EventFilter(chip_serial=next(serials)), 0, 100), 1000)
        print(
            f"query by chip serial: p50 {p(q_ms, 0.5):.2f} ms, p95 {p(q_ms, 0.95):.2f} ms, "
            f"max {max(q_ms):.1f} ms (goal p95 <= 20 ms)"
        )

        # 4. append cost on the full-size log (these events are appended for real)
        def one_txn() -> None:
            with transaction(engine) as s:
                chain.append(s, "bench.append", actor="station:line1", chip_serial="X")

        single = timed(one_txn, 300)

        def hundred() -> None:
            with transaction(engine) as s:
                for _ in range(100):
                    chain.append(s, "bench.append", actor="station:line1", chip_serial="X")

        batched = [t / 100 for t in timed(hundred, 5)]
        print(
            f"append: {statistics.median(single):.2f} ms per event in its own transaction "
            f"(commit included), {statistics.median(batched):.2f} ms per event at 100 per "
            "transaction"
        )
        with transaction(engine) as s:
            assert verify_log(s, audit_key).ok
        engine.dispose()
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
