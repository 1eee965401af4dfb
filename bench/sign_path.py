"""The full signing path, certificates per second, on SQLite and PostgreSQL, with 0 to
1,000,000 devices already in the database.

What one certificate costs here is everything the line's signer does for it
(:meth:`provisioner.issuance.IssuanceService.sign_many`): the stateless policy (serial,
point on P-256, the proof of possession verified), the device and certificate lookups,
the clone and key-reuse checks, the quota claim, the token's signature with its
self-check, the certificate row, the device step and the hash-chained audit event with
its Merkle nodes, committed. The requests are made beforehand (a software P-256 key per
device and its proof of possession, as a chip would), so only the signer is timed.

Each case gets a fresh database: SQLite (a file, WAL, as the line uses it) and PostgreSQL
(a private cluster started like the test suite's, tests/pg.py: unix socket, fsync off,
one database per case). ``--devices`` devices are bulk-loaded first (multi-row INSERTs of
finished devices with their certificates, and their ``device.cert_issued`` audit events
appended through the real chain code in groups, so the chain and the Merkle tree are the
size a line of that many devices has), the database settled (PostgreSQL: VACUUM ANALYZE,
CHECKPOINT; SQLite: ANALYZE, WAL checkpoint; then sync), then a running batch of
devices waiting for their certificate (step POP_VERIFIED), then the timed runs.

Figures (each the median of ``--repeat`` runs of ``--certs`` certificates):

* ``certs/s``: certificates issued per second of wall time, ``sign_many`` called with
  ``--group`` requests at a time (the hsm worker's group commit); ``--group 1`` is
  ``sign`` one request per transaction;
* ``vs 0``: that rate divided by the same database's rate with 0 devices preloaded (the
  goal: within 10 % at 1,000,000, i.e. >= 0.90);
* ``signer ms/cert``: CPU (user + system) of this process, the signer, per certificate
  (/proc/self/stat), token signature included: SoftHSM runs in this process;
* ``db ms/cert``: CPU of the database server per certificate: every process of the
  PostgreSQL cluster (backends, WAL writer, checkpointer...; /proc/PID/stat of the
  postmaster's children). SQLite has no server: its work is inside the signer's figure;
* ``CPU-bound certs/s``: 1 / (signer + db CPU per certificate), the rate this one signer
  process would reach if nothing else wanted the CPUs (it waits for each statement's
  answer, so the two add up). Derived from the two measured figures, printed because
  the wall-clock rate on a shared 2-core machine moves with the other processes' load
  (the 1-minute load average at the end of each case is printed with it).

Run (the 1,000,000 case loads for a few minutes):

    .venv/bin/python -m bench.sign_path [--db sqlite,postgresql]
        [--devices 0,1000,100000,1000000] [--certs 3000] [--group 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from sqlalchemy import insert, text
from sqlalchemy.engine import Engine
from sqlmodel import col

from bench.procstat import cpu_seconds
from provisioner.audit import chain
from provisioner.ca.ceremony import LoadedCa, init_ca, load_ca
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import Batch, BatchState, Certificate, Device, Station, Step
from provisioner.issuance import IssuanceService
from provisioner.ports import IssuedCertificate, SigningRequest
from provisioner.settings import Settings

_CHUNK = 10_000  # rows per multi-row INSERT while preloading
STATION = "line1"


@dataclass
class Run:
    rate: float
    signer_ms: float
    db_ms: float | None
    load: float = 0.0  # 1-minute load average when the case ended


@contextmanager
def database(kind: str, root: Path, pg_base: str | None) -> Iterator[Engine]:
    """A fresh, empty database of ``kind`` with the product's schema."""
    if kind == "sqlite":
        url = f"sqlite:///{root}/sign-{time.monotonic_ns()}.db"
    else:
        from tests.pg import create_database

        assert pg_base is not None
        url = create_database(pg_base)
    engine = make_engine(url)
    create_schema(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _serial(n: int) -> str:
    """A well-formed ATECC serial (starts 0123, ends EE), unique per ``n``."""
    return f"0123{n:012X}EE"


def preload(engine: Engine, n: int) -> None:
    """``n`` finished devices as a line leaves them: device rows (serial, key, step DONE),
    certificate rows and one ``device.cert_issued`` event each through the chain code
    (real hashes and Merkle nodes), in multi-row INSERTs of ``_CHUNK``."""
    if n == 0:
        return
    now = datetime.now(UTC)
    with transaction(engine) as s:
        if s.get(Station, STATION) is None:
            s.add(Station(id=STATION))
            s.flush()
        batch = Batch(
            station_id=STATION,
            count=n,
            issued=n,
            state=BatchState.FINISHED,
            created_by="bench",
            started_at=now,
            finished_at=now,
        )
        s.add(batch)
        s.flush()
        batch_id = batch.id
    assert batch_id is not None
    fake_der = b"\x30\x82" + os.urandom(400)  # the size of a device certificate
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        with transaction(engine) as s:
            conn = s.connection()
            devs = [
                {
                    "batch_id": batch_id,
                    "position": i,
                    "step": Step.DONE,
                    "socket": i % 8,
                    "chip_serial": _serial(10**9 + i),
                    "revision": "00006002",
                    "public_key": "04" + os.urandom(64).hex(),
                    "attempts": 1,
                    "updated_at": now,
                }
                for i in range(start, stop)
            ]
            ids = (
                conn.execute(
                    insert(Device).returning(col(Device.id), sort_by_parameter_order=True), devs
                )
                .scalars()
                .all()
            )
            conn.execute(
                insert(Certificate),
                [
                    {
                        "device_id": dev_id,
                        "serial_number": os.urandom(16).hex(),
                        "fingerprint_sha256": os.urandom(32).hex(),
                        "der": fake_der,
                        "not_before": now,
                        "not_after": now,
                        "issuer_fingerprint_sha256": "00" * 32,
                        "created_at": now,
                    }
                    for dev_id in ids
                ],
            )
            chain.append_many(
                s,
                [
                    {
                        "event_type": "device.cert_issued",
                        "actor": "signer",
                        "socket": d["socket"],
                        "batch_id": batch_id,
                        "device_id": dev_id,
                        "chip_serial": d["chip_serial"],
                        "payload": {"serial_number": "00", "fingerprint_sha256": "00"},
                    }
                    for dev_id, d in zip(ids, devs, strict=True)
                ],
            )
    # Start the timed runs from a settled database, as a line's is between batches: the
    # preload's write-ahead log checkpointed (else the first commits pay for writing it
    # back), statistics up to date.
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(text("VACUUM ANALYZE"))
            c.execute(text("CHECKPOINT"))
    else:  # outside the engine: its connections begin a transaction (BEGIN IMMEDIATE)
        engine.dispose()
        db = sqlite3.connect(str(engine.url.database), isolation_level=None)
        try:
            db.execute("ANALYZE")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()
    os.sync()  # and the page cache's dirty pages written, not flushed during the runs


def waiting_devices(engine: Engine, n: int, base: int) -> list[SigningRequest]:
    """A running batch of ``n`` devices at POP_VERIFIED (serial and key recorded, as the
    station leaves them) and the signing request of each, with its proof of possession."""
    now = datetime.now(UTC)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(n)]
    with transaction(engine) as s:
        if s.get(Station, STATION) is None:
            s.add(Station(id=STATION))
            s.flush()
        batch = Batch(
            station_id=STATION,
            count=n,
            state=BatchState.RUNNING,
            created_by="bench",
            started_at=now,
        )
        s.add(batch)
        s.flush()
        batch_id = batch.id
        assert batch_id is not None
        conn = s.connection()
        ids: list[int] = [
            int(i)  # type: ignore[arg-type]  # assigned by the database, never None
            for i in conn.execute(
                insert(Device).returning(col(Device.id), sort_by_parameter_order=True),
                [
                    {
                        "batch_id": batch_id,
                        "position": i,
                        "step": Step.POP_VERIFIED,
                        "socket": i % 8,
                        "chip_serial": _serial(base + i),
                        "revision": "00006002",
                        "public_key": _point(k).hex(),
                        "attempts": 1,
                        "updated_at": now,
                    }
                    for i, k in enumerate(keys)
                ],
            )
            .scalars()
            .all()
        ]
    out = []
    for i, k in enumerate(keys):
        challenge = os.urandom(32)
        r, sig = decode_dss_signature(k.sign(challenge, ec.ECDSA(hashes.SHA256())))
        out.append(
            SigningRequest(
                ids[i],
                batch_id,
                _serial(base + i),
                _point(k),
                challenge,
                r.to_bytes(32, "big") + sig.to_bytes(32, "big"),
            )
        )
    return out


def _pg_pids(pg_base: str) -> list[int]:
    """Every process of the cluster: the postmaster (its pid file) and its children."""
    host = pg_base.split("host=", 1)[1]
    master = int((Path(host).parent / "data" / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(stat.parent.name))
    return pids


def _db_cpu(pg_base: str | None, engine: Engine) -> float | None:
    if engine.dialect.name != "postgresql" or pg_base is None:
        return None
    total = 0.0
    for pid in _pg_pids(pg_base):
        with contextlib.suppress(OSError):  # a backend that ended meanwhile
            total += cpu_seconds(pid, children=False)
    return total


def timed_run(
    svc: IssuanceService, reqs: list[SigningRequest], group: int, pg_base: str | None
) -> Run:
    """Sign ``reqs`` ``group`` at a time; every one must come back issued."""
    me = os.getpid()
    db0, cpu0, t0 = (
        _db_cpu(pg_base, svc.engine),
        cpu_seconds(me, children=False),
        time.perf_counter(),
    )
    for i in range(0, len(reqs), group):
        part = reqs[i : i + group]
        out: list[IssuedCertificate | Exception] = (
            [svc.sign(part[0])] if group == 1 else list(svc.sign_many(part))
        )
        bad = [o for o in out if not isinstance(o, IssuedCertificate)]
        if bad:
            raise SystemExit(f"the signer refused a bench request: {bad[0]}")
    wall = time.perf_counter() - t0
    cpu = cpu_seconds(me, children=False) - cpu0
    db1 = _db_cpu(pg_base, svc.engine)
    n = len(reqs)
    return Run(
        n / wall,
        cpu / n * 1000,
        None if db0 is None or db1 is None else (db1 - db0) / n * 1000,
    )


def measure(
    kind: str,
    devices: int,
    args: argparse.Namespace,
    ca: LoadedCa,
    settings: Settings,
    root: Path,
    pg_base: str | None,
) -> Run:
    with database(kind, root, pg_base) as engine:
        t0 = time.perf_counter()
        preload(engine, devices)
        load_s = time.perf_counter() - t0
        reqs = waiting_devices(engine, args.certs * (args.repeat + 1), 10**11)
        svc = IssuanceService(engine, ca, settings.profile, "signer", settings)
        warm, rest = reqs[: args.certs], reqs[args.certs :]
        timed_run(svc, warm[: max(args.group, 200)], args.group, pg_base)  # warm-up
        runs = [
            timed_run(svc, rest[r * args.certs : (r + 1) * args.certs], args.group, pg_base)
            for r in range(args.repeat)
        ]
        med = sorted(runs, key=lambda r: r.rate)[len(runs) // 2]
        print(
            f"  {kind:10} {devices:>9,} devices (loaded in {load_s:6.1f} s): "
            + ", ".join(f"{r.rate:,.0f}" for r in runs)
            + " certs/s",
            flush=True,
        )
        return Run(
            statistics.median(r.rate for r in runs),
            med.signer_ms,
            med.db_ms,
            os.getloadavg()[0],
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Figures" + __doc__.split("Figures", 1)[1].split("Run (")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--db", default="sqlite,postgresql", help="databases, comma-separated")
    ap.add_argument(
        "--devices",
        default="0,1000,100000,1000000",
        help="devices preloaded before each case, comma-separated (the first should be 0: "
        "the ratio column divides by it)",
    )
    ap.add_argument("--certs", type=int, default=3000, help="certificates per timed run")
    ap.add_argument("--group", type=int, default=100, help="requests per sign_many call (1: sign)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per case (median)")
    args = ap.parse_args()
    kinds = [k.strip() for k in args.db.split(",") if k.strip()]
    counts = [int(x) for x in args.devices.split(",")]

    root = Path(tempfile.mkdtemp(prefix="bench-sign-"))
    os.environ["SOFTHSM2_CONF"] = "/nonexistent"  # init_ca points it at the private token
    settings = Settings(var_dir=root / "var")
    init_ca(settings)
    ca = load_ca(settings)
    results: dict[tuple[str, int], Run] = {}
    try:
        for kind in kinds:
            if kind == "postgresql":
                from tests import pg

                if not pg.available():
                    raise SystemExit("PostgreSQL is not installed (make install adds it)")
                with pg.cluster() as base:
                    for n in counts:
                        results[(kind, n)] = measure(kind, n, args, ca, settings, root, base)
            else:
                for n in counts:
                    results[(kind, n)] = measure(kind, n, args, ca, settings, root, None)
    finally:
        ca.close()
        shutil.rmtree(root, ignore_errors=True)  # the 1,000,000-device SQLite file is ~2 GB
    print()
    print(f"group {args.group}, {args.certs} certificates per run, median of {args.repeat}")
    print(
        "| database | devices preloaded | certs/s | vs 0 | signer ms/cert | db ms/cert "
        "| CPU-bound certs/s | load avg |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (kind, n), r in results.items():
        base_rate = results.get((kind, 0))
        ratio = f"{r.rate / base_rate.rate:.2f}" if base_rate else "-"
        db = f"{r.db_ms:.3f}" if r.db_ms is not None else "(in signer)"
        bound = 1000 / (r.signer_ms + (r.db_ms or 0.0))
        print(
            f"| {kind} | {n:,} | {r.rate:,.0f} | {ratio} | {r.signer_ms:.3f} | {db} "
            f"| {bound:,.0f} | {r.load:.1f} |"
        )


if __name__ == "__main__":
    main()
