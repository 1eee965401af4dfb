"""`batch status` on a big batch: the summary, a page of failed devices, and the whole CLI.

Builds a batch of ``--devices`` devices (default 100,000, the largest batch allowed) in a
fresh SQLite database, in the shape a line leaves mid-way: most devices done with their
certificate and upload rows, some at each intermediate step, 1 % failed under a handful of
reasons, a few revoked. Then measures, on this machine:

* the summary (``batches.summary``: the aggregate queries behind `batch status ID`), p50/p95;
* one page of 100 failed devices (``batch status ID --failed``), p50/p95;
* the previous full report (every device row loaded and rendered), for the ratio;
* the real command, ``provisioner batch status ID``, end to end in a child process
  (start-up included), best of 3.

The loader writes rows with Core inserts; it is not what is measured. Run:

    .venv/bin/python -m bench.batch_status [--devices 100000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.engine import Engine

from provisioner import batches
from provisioner.db.engine import create_schema, make_engine, transaction
from provisioner.db.models import (
    Batch,
    BatchState,
    Certificate,
    Device,
    RegistryUpload,
    Revocation,
    Station,
    Step,
    UploadState,
    utcnow,
)

REASONS = (
    ("chip provisioned elsewhere: locked with a certificate", "reject"),
    ("no answer after 3 tries", "reinsert"),
    ("refused to sign: public key already recorded", "reject"),
    ("signer unavailable after 25 tries", "wait"),
)


def build(engine: Engine, n: int) -> int:
    """One batch of ``n`` devices, mid-way; returns its id."""
    now = utcnow()
    with transaction(engine) as s:
        s.add(Station(id="line1"))
        s.flush()
        b = Batch(
            station_id="line1",
            count=n,
            created_by="bench",
            state=BatchState.RUNNING,
            started_at=now - timedelta(hours=3),
            issued=int(n * 0.95),
        )
        s.add(b)
        s.flush()
        assert b.id is not None
        bid = b.id
    devices, certs, uploads, revoked = [], [], [], []
    for i in range(n):
        r = i % 100
        step = Step.DONE if r < 90 else (Step.CERT_VERIFIED, Step.CERT_ISSUED, Step.PENDING)[r % 3]
        failed = r == 99
        reason, action = REASONS[i // 100 % len(REASONS)] if failed else (None, None)
        serial = f"0123{i:012X}EE"
        devices.append(
            {
                "id": i + 1,
                "batch_id": bid,
                "position": i,
                "step": int(Step.IDENTIFIED if failed else step),
                "socket": i % 8,
                "chip_serial": serial if step > Step.PENDING or failed else None,
                "error": reason,
                "action": action,
                "attempts": 0,
                "updated_at": now - timedelta(seconds=(n - i) * 0.1),
            }
        )
        if not failed and step >= Step.CERT_ISSUED:
            certs.append(
                {
                    "id": i + 1,
                    "device_id": i + 1,
                    "serial_number": f"{i:040x}",
                    "fingerprint_sha256": f"{i:064x}",
                    "der": b"\x30\x00",
                    "not_before": now,
                    "not_after": now,
                    "issuer_fingerprint_sha256": "ab" * 32,
                }
            )
        if not failed and step >= Step.CERT_VERIFIED:
            uploads.append(
                {
                    "device_id": i + 1,
                    "registry_name": "projects/p/locations/l/registries/r",
                    "registry_device_id": "sn" + serial.lower(),
                    "fingerprint_sha256": f"{i:064x}",
                    "state": UploadState.DONE if step == Step.DONE else UploadState.PENDING,
                    "num_id": str(i) if step == Step.DONE else None,
                }
            )
        if r == 0 and i % 1000 == 0:
            revoked.append(
                {
                    "certificate_id": i + 1,
                    "serial_number": f"{i:040x}",
                    "issuer_fingerprint_sha256": "ab" * 32,
                    "reason": "key_compromise",
                    "actor": "bench",
                }
            )
    with engine.begin() as c:
        for table, rows in (
            (Device, devices),
            (Certificate, certs),
            (RegistryUpload, uploads),
            (Revocation, revoked),
        ):
            for k in range(0, len(rows), 5000):
                c.execute(insert(table), rows[k : k + 5000])
    return bid


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    """p50 and p95 of ``runs`` calls, in milliseconds."""
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    out.sort()
    return statistics.median(out), out[min(len(out) - 1, int(len(out) * 0.95))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=100_000)
    ap.add_argument("--keep", type=Path, default=None, help="keep the database in DIR")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-batch-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        db = work / "provisioner.db"
        db.unlink(missing_ok=True)
        engine = make_engine(f"sqlite:///{db}")
        create_schema(engine)
        t0 = time.perf_counter()
        bid = build(engine, args.devices)
        print(f"built a batch of {args.devices:,} devices in {time.perf_counter() - t0:.1f} s")

        rep = batches.summary(engine, bid)
        print(
            f"summary: {rep.done:,} done, {rep.failed:,} failed in {len(rep.failures)} reasons, "
            f"{rep.revoked} revoked, {rep.remaining:,} remaining"
        )
        s50, s95 = timed(lambda: batches.summary(engine, bid), 20)
        q = batches.DeviceQuery(failed=True, limit=100)
        f50, f95 = timed(lambda: batches.device_page(engine, bid, q), 20)
        full = batches.DeviceQuery(limit=None)
        a50, _ = timed(lambda: batches.report(engine, bid, full), 3)
        print(f"summary (batch status ID):         p50 {s50:8.1f} ms  p95 {s95:8.1f} ms")
        print(f"100 failed devices (--failed):     p50 {f50:8.1f} ms  p95 {f95:8.1f} ms")
        print(f"every device row (the old report): p50 {a50:8.1f} ms")
        print(f"ratio full report / summary: {a50 / s50:.0f} x")

        cfg = work / "provisioner.toml"
        cfg.write_text(f'var_dir = "{work}"\ndatabase_url = "sqlite:///{db}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        env["PROVISIONER_CONFIG"] = str(cfg)
        cli = []
        for _ in range(3):
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "provisioner.cli.main", "batch", "status", str(bid)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            cli.append(time.perf_counter() - t0)
        lines = len(out.stdout.splitlines())
        print(f"`provisioner batch status {bid}`: best {min(cli):.2f} s, {lines} lines printed")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
