"""CPU of the line's gateway per station request, in process (issue 19, helper E).

A line like ``tests/link/test_gateway.py`` builds it (SQLite in a temp dir, a file CA,
enrolled station, the real :class:`~provisioner.link.gateway.Gateway` and the real
station-side :class:`~provisioner.link.remote.RemoteRecords` and socket task with emulated
chips at zero delay), no broker: each sealed request is handed to ``Gateway.handle``. Only
the time inside ``handle`` is counted (the station's own work and the chips are not), as
thread CPU time (``time.thread_time``) and wall time, per operation.

Figures:

- ``requests``: how many requests of that operation the devices made;
- ``cpu µs/req``: the gateway's CPU per request of that operation (thread CPU time inside
  ``Gateway.handle``: envelope check, nonce, records, audit, the sealed answer);
- ``wall µs/req``: the same in wall time (includes the SQLite commits' fsyncs);
- ``all ops``: the mean over every request; ``without sign``: the same leaving out
  ``sign``, whose cost here includes the in-process CA (on the line the signature is the
  hsm worker's, behind its own queue);
- ``per device``: the gateway CPU (and requests) one device costs.

``--profile FILE`` writes a cProfile of the time inside ``handle`` (pstats format) and
prints its top functions by cumulative time.

``--celery N`` also measures what Celery itself costs a gateway worker per request, which
``handle`` does not include: a private redis-server on a free port, a worker started like the
supervisor starts a gateway (``celery worker -P prefork -c 2 --loglevel INFO
--without-gossip --without-mingle``, the line's app settings: JSON, acks_late, prefetch 1,
results in Redis), with a task that returns a fixed answer of a gateway answer's size at
once; N requests sent one after the other as a station's socket sends them (``send_task``,
``get``, ``forget``). Printed: the worker's process tree CPU per request (/proc, its pool
children included), the sender's CPU per request, wall time per request; and again with
``-P solo`` (no pool process, no pipe between parent and child) for comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_ECHO_TASK = "bench.gateway_echo"
# A gateway answer's size (a sealed envelope with a device's JSON in it), returned as is.
_ANSWER: dict[str, Any] = {
    "v": 1,
    "task": "provisioner.station_reply",
    "from": "line",
    "to": "station:line1",
    "kid": "a" * 64,
    "nonce": "b" * 32,
    "iat": 1,
    "exp": 2,
    "body": {"in_reply_to": "c" * 32, "result": {k: "x" * 20 for k in "abcdefghijkl"}},
    "sig": "d" * 96,
}


def _echo_app(broker: str) -> Any:
    """A Celery app with the line's settings (workers.celery_app) and one task that
    answers at once: what remains of a request's cost is Celery's, Redis' and the pool's."""
    from celery import Celery

    app = Celery("gateway-bench", broker=broker, backend=broker)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        result_expires=3600,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
    )

    def echo(message: dict[str, Any]) -> dict[str, Any]:
        return _ANSWER

    app.task(name=_ECHO_TASK, acks_late=True)(echo)

    return app


# ``celery -A bench.gateway_request:celery_app worker`` (what --celery starts).
celery_app = (
    _echo_app(os.environ["GATEWAY_BENCH_BROKER"]) if "GATEWAY_BENCH_BROKER" in os.environ else None
)


def _tree_cpu(pid: int) -> float:
    from bench.procstat import cpu_seconds

    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return cpu_seconds(pid) + sum(cpu_seconds(int(k)) for k in kids)


def _celery_share(n: int) -> None:
    """Celery's own cost per request (see the module doc, ``--celery``)."""
    import shutil
    import subprocess

    from bench.procstat import free_port

    server = shutil.which("redis-server")
    if server is None:
        print("--celery: no redis-server on PATH", file=sys.stderr)
        return
    port = free_port()
    broker = f"redis://127.0.0.1:{port}/0"
    redis = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        app = _echo_app(broker)
        env = {**os.environ, "GATEWAY_BENCH_BROKER": broker}
        message = {"body": {"op": "load", "socket": 0, "args": {"device": 1}}, "sig": "x" * 96}
        print(f"Celery's share per request ({n} requests, Redis result backend)")
        print(f"{'pool':<14}{'worker cpu µs':>14}{'sender cpu µs':>15}{'wall µs':>10}")
        for pool in (["prefork", "-c", "2"], ["solo"]):
            worker = subprocess.Popen(
                [
                    *(sys.executable, "-m", "celery", "-A", "bench.gateway_request:celery_app"),
                    *("worker", "-P", *pool, "--loglevel", "INFO"),
                    *("--without-gossip", "--without-mingle"),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:

                def one() -> None:
                    res = app.send_task(_ECHO_TASK, args=[message])
                    res.get(timeout=30, disable_sync_subtasks=False)
                    res.forget()

                for _ in range(20):  # the worker is up and warm
                    one()
                c0, s0, w0 = _tree_cpu(worker.pid), time.process_time(), time.perf_counter()
                for _ in range(n):
                    one()
                c1, s1, w1 = _tree_cpu(worker.pid), time.process_time(), time.perf_counter()
                print(
                    f"{' '.join(pool):<14}{(c1 - c0) / n * 1e6:>14.0f}"
                    f"{(s1 - s0) / n * 1e6:>15.0f}{(w1 - w0) / n * 1e6:>10.0f}"
                )
            finally:
                worker.terminate()
                worker.wait(30)
    finally:
        redis.terminate()
        redis.wait(30)


def _line(tmp: Path) -> tuple[Any, Any, Any, Any]:
    """settings, engine, gateway, remote records (socket 0) of one enrolled station."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from provisioner.ca.ceremony import init_ca, load_ca
    from provisioner.ca.chain import local_material
    from provisioner.db.engine import create_schema, make_engine
    from provisioner.enrollment.service import enroll_station, init_line_identity
    from provisioner.enrollment.tokens import add_station
    from provisioner.issuance import IssuanceService
    from provisioner.link.gateway import Gateway
    from provisioner.link.keys import SigningKey, fingerprint, line_key, station_party
    from provisioner.link.remote import RemoteRecords
    from provisioner.settings import Settings, StationSettings

    os.environ["SOFTHSM2_CONF"] = "/nonexistent"
    settings = Settings(var_dir=tmp / "var", stations={"line1": StationSettings(sockets=1)})
    init_ca(settings)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    init_line_identity(settings)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "line1")]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    answer = enroll_station(settings, engine, add_station(engine, "line1", "admin"), csr)
    cert = x509.load_pem_x509_certificate(answer.certificate_pem.encode())
    skey = SigningKey(station_party("line1"), key, fingerprint(cert))
    ca = load_ca(settings)
    signer = IssuanceService(engine, ca, settings.profile)
    gw = Gateway(
        engine,
        "line1",
        line_key(settings),
        signer,
        registry="projects/p/locations/l/registries/r",
        on_verified=lambda _d: None,
        chain_material=lambda: local_material(settings).as_json(),
    )
    line_cert = x509.load_pem_x509_certificate(
        (settings.line_identity_dir / "line.crt").read_bytes()
    )
    timed: dict[str, list[tuple[float, float]]] = defaultdict(list)
    prof: list[cProfile.Profile | None] = [None]

    def send(req: dict[str, Any], _t: float) -> object:
        op = str(req.get("body", {}).get("op"))
        p = prof[0]
        c0, w0 = time.thread_time(), time.perf_counter()
        if p is not None:
            p.enable()
        try:
            return gw.handle(req)
        finally:
            if p is not None:
                p.disable()
            timed[op].append((time.thread_time() - c0, time.perf_counter() - w0))

    remote = RemoteRecords(send, skey, line_cert, 0, timeout_s=5, sign_timeout_s=5)
    return settings, engine, (gw, timed, prof), remote


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, default=20, help="devices provisioned (default 20)")
    ap.add_argument("--warmup", type=int, default=2, help="devices run first, not counted")
    ap.add_argument("--profile", type=Path, help="write a cProfile of Gateway.handle here")
    ap.add_argument("--top", type=int, default=35, help="profile lines printed")
    ap.add_argument(
        "--celery", type=int, default=0, metavar="N", help="also Celery's share (N requests)"
    )
    args = ap.parse_args(argv)

    from provisioner import batches
    from provisioner.socket_task import SocketRun

    with tempfile.TemporaryDirectory() as tmp:
        settings, engine, (_gw, timed, prof), remote = _line(Path(tmp))
        bid = batches.create_batch(
            engine, settings, station_id="line1", count=args.devices + args.warmup, actor="b"
        )
        ids = batches.mark_started(engine, bid, actor="b")
        run = SocketRun(settings, "line1", 0, remote, holder=f"line1:0:{os.getpid()}")
        for dev in ids[: args.warmup]:
            assert run.run(dev).kind == "done"
        timed.clear()
        if args.profile is not None:
            prof[0] = cProfile.Profile(time.thread_time)
        for dev in ids[args.warmup :]:
            out = run.run(dev)
            if out.kind != "done":
                print(f"device {dev}: {out.kind} {out.detail}", file=sys.stderr)
                return 1
        engine.dispose()

    n = args.devices
    print(f"gateway CPU per request, {n} devices (after {args.warmup} warm-up), SQLite")
    print(f"{'op':<18}{'requests':>9}{'cpu µs/req':>12}{'wall µs/req':>13}")
    allc: list[float] = []
    nosign: list[float] = []
    for op, rows in sorted(timed.items(), key=lambda kv: -sum(c for c, _ in kv[1])):
        cpu = [c for c, _ in rows]
        wall = [w for _, w in rows]
        allc += cpu
        if op != "sign":
            nosign += cpu
        print(
            f"{op:<18}{len(rows):>9}{statistics.mean(cpu) * 1e6:>12.0f}"
            f"{statistics.mean(wall) * 1e6:>13.0f}"
        )
    print(f"{'all ops':<18}{len(allc):>9}{statistics.mean(allc) * 1e6:>12.0f}")
    print(f"{'without sign':<18}{len(nosign):>9}{statistics.mean(nosign) * 1e6:>12.0f}")
    print(
        f"per device: {len(allc) / n:.1f} requests, {sum(allc) / n * 1e3:.1f} ms gateway CPU "
        f"({sum(nosign) / n * 1e3:.1f} ms without sign)"
    )
    if args.profile is not None and prof[0] is not None:
        prof[0].dump_stats(str(args.profile))
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(args.top)
    if args.celery:
        _celery_share(args.celery)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
