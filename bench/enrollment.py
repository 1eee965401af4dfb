"""Enrollment in the field, end to end through the device-facing HTTPS listener (issue 17).

Starts what ``provisioner services run`` starts for it — the registry server and the
device listener (``python -m provisioner.api.devices_server``: TLS with the CA-issued P-256
server certificate, the CA key in SoftHSM) — in a temporary var directory, makes one
enrollment token with ``--devices`` uses, and then enrolls ``--devices`` devices from
``--concurrency`` threads, each device the way a device written to Thistle's document does
it, on its own new TLS connection pinned to the root:

1. ``POST /enroll`` with the ``Thistle-Device-Enrollment-Token`` header and a label;
2. ``POST /identity`` with ``Authorization: Bearer <device token>`` and a CSR for a P-256
   key made on the device (``--mode server``: ``GET /identity``, the server makes the key).

Each identity is signed in the token, recorded and audited, and the device is created in
the registry with that certificate as its credential before the answer leaves: what is
timed is all of it. Printed: enrollments per second, latency p50/p99/max of each request
and of the whole enrollment (handshake included), and the CPU time the listener, the
registry server and this client used per enrollment (from /proc). The client runs on the
same machine and competes with what it measures.

    .venv/bin/python -m bench.enrollment [--devices 300] [--concurrency 4] [--mode csr]
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.procstat import cpu_seconds, free_port

if TYPE_CHECKING:
    from provisioner.settings import Settings

HEADER = "Thistle-Device-Enrollment-Token"


@dataclass
class Stack:
    settings: Settings
    pids: dict[str, int]


@contextmanager
def field_stack(root: Path) -> Iterator[Stack]:
    """The registry server and the device listener, started by the product's supervisor."""
    from provisioner.ca.ceremony import init_ca
    from provisioner.settings import load_settings
    from provisioner.supervisor import Supervisor

    config = root / "provisioner.toml"
    reg_port = free_port()
    config.write_text(
        f'var_dir = "{root / "var"}"\n'
        f'[registry]\nurl = "http://127.0.0.1:{reg_port}"\nlisten_port = {reg_port}\n'
        f"[api]\nlisten_port = {free_port()}\n"
        "[bridge]\nenabled = false\n"
        f"[devices]\nport = {free_port()}\n"
        # One client address enrolls every device here: no rate limit in the way.
        "[fleet]\nrate_per_minute = 100000000\n"
    )
    settings = load_settings(config)
    os.environ["SOFTHSM2_CONF"] = "/nonexistent"  # init_ca writes the var dir's own
    init_ca(settings)
    sup = Supervisor(settings, config)
    sup.acquire()
    try:
        sup.start_registry()
        sup.start_devices()
        yield Stack(settings, {c.name: c.proc.pid for c in sup.children})
    finally:
        sup.stop(timeout=10)


def make_token(settings: Settings, uses: int) -> str:
    from datetime import timedelta

    from provisioner.db.engine import make_engine
    from provisioner.fleet import tokens

    engine = make_engine(settings.db_url)
    try:
        return tokens.create(
            engine,
            tokens.default_registry(settings),
            "user:bench",
            ttl=timedelta(days=1),
            max_uses=uses,
            label="bench",
        ).token
    finally:
        engine.dispose()


@dataclass
class Timings:
    enroll: list[float] = field(default_factory=list)
    identity: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def enroll_one(url: str, tls: ssl.SSLContext, token: str, n: int, mode: str, t: Timings) -> None:
    """One device: a new connection, enroll, identity."""
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, verify=tls, timeout=60) as h:
        r = h.post("/enroll", headers={HEADER: token}, data={"label": f"bench {n}"})
        t1 = time.perf_counter()
        if r.status_code != 200:
            with t.lock:
                t.failures.append(f"enroll {r.status_code} {r.text[:200]}")
            return
        auth = {"Authorization": f"Bearer {r.json()['device_token']}"}
        if mode == "server":
            r = h.get("/identity", headers=auth)
        else:
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "d")]))
                .sign(key, hashes.SHA256())
                .public_bytes(serialization.Encoding.PEM)
            )
            r = h.post("/identity", headers=auth, content=csr)
    t2 = time.perf_counter()
    with t.lock:
        if r.status_code != 200 or "device_certificate_pem" not in r.json():
            t.failures.append(f"identity {r.status_code} {r.text[:200]}")
            return
        t.enroll.append(t1 - t0)
        t.identity.append(t2 - t1)
        t.total.append(t2 - t0)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _line(name: str, values: list[float]) -> str:
    return (
        f"  {name:<22} p50 {statistics.median(values) * 1e3:7.1f}   "
        f"p99 {_pct(values, 0.99) * 1e3:7.1f}   max {max(values) * 1e3:7.1f}  ms"
    )


def run(args: argparse.Namespace, stack: Stack) -> None:
    from provisioner.api.devices_server import devices_files, devices_url

    settings = stack.settings
    url = devices_url(settings)
    tls = ssl.create_default_context(cafile=str(devices_files(settings).root_path))
    token = make_token(settings, args.devices + args.warmup)
    t = Timings()
    for n in range(args.warmup):  # the listener opens the token on its first identity
        enroll_one(url, tls, token, n, args.mode, t)
    t = Timings()
    work = iter(range(args.devices))
    work_lock = threading.Lock()

    def worker() -> None:
        while True:
            with work_lock:
                n = next(work, None)
            if n is None:
                return
            enroll_one(url, tls, token, n, args.mode, t)

    cpu0 = {k: cpu_seconds(p) for k, p in stack.pids.items()}
    me0 = time.process_time()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    cpu1 = {k: cpu_seconds(p) for k, p in stack.pids.items()}
    me1 = time.process_time()
    done = len(t.total)
    print(
        f"mode {args.mode}, {args.concurrency} devices at a time, each on a new TLS "
        "connection pinned to the root"
    )
    print(f"enrollments/s (enroll + identity) {done / wall:8.1f}   ({done} in {wall:.2f} s)")
    print(_line("POST /enroll", t.enroll))
    print(_line(f"{'GET' if args.mode == 'server' else 'POST'} /identity", t.identity))
    print(_line("whole enrollment", t.total))
    for k in stack.pids:
        print(f"  CPU per enrollment: {k:<9} {(cpu1[k] - cpu0[k]) / max(done, 1) * 1e3:6.2f} ms")
    print(
        f"  CPU per enrollment: {'client':<9} {(me1 - me0) / max(done, 1) * 1e3:6.2f} ms "
        "(this process)"
    )
    if t.failures:
        raise SystemExit(f"{len(t.failures)} failed, first: {t.failures[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=300, help="devices to enroll")
    parser.add_argument("--concurrency", type=int, default=4, help="devices at a time")
    parser.add_argument(
        "--mode",
        choices=("csr", "server"),
        default="csr",
        help="POST /identity with a CSR (default) or GET /identity (the server makes the key)",
    )
    parser.add_argument("--warmup", type=int, default=3, help="enrollments before timing")
    parser.add_argument(
        "--keep", type=Path, help="run in this new directory and keep it (logs: var/log/)"
    )
    args = parser.parse_args()
    os.umask(0o077)  # the product refuses to start on files others can read
    with tempfile.TemporaryDirectory(prefix="bench-enroll-") as tmp:
        root = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True)
            root = args.keep.resolve()
        with field_stack(root) as stack:
            run(args, stack)


if __name__ == "__main__":
    main()
