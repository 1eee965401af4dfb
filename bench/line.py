"""The real line measured: devices per hour, station efficiency, CPU per device per process.

Starts what ``provisioner services run`` starts (the same supervisor code, role "all"):
Redis, the built-in registry, the API, the signer (hsm) and uploader (registry) workers,
one gateway worker and one station worker (one pool child per socket) per station, on
SQLite or a private PostgreSQL server, with the CA in SoftHSM, in a temporary var dir on
free ports. Each station's emulated chips run at ``--timing`` (the station setting
``chip_timing``: "datasheet" = cryptoauthlib's execution-time table at the chip's clock
divider, M0 for the line's configuration). The database may first be filled with finished
devices (``--preload``: devices, certificates, uploads and 8 audit events each, with the
hash chain and Merkle nodes the line's own append writes). Then one batch of ``--devices``
per station runs on auto-fed sockets until every device is uploaded.

Figures (per database and preload):

* devices/h: devices verified on their chip per hour, from the batch's start (its
  ``batch.started`` event) to the last ``device.cert_verified`` event, all stations;
* t_socket: one socket's own time per device, measured here before the line starts, through
  cryptoauthlib at the same timing, with the station's chip sequence (the socket task's
  identity read, then the pipeline's: identity, configure + lock, GenKey, lock data, public
  key, proof-of-possession Sign, certificate write, read-back), the HSM signature in between
  left out (median of ``--probe-devices``);
* station efficiency: devices/h / (stations x sockets x 3600 / t_socket): 1.0 is every
  socket busy with chip commands all the time; what is lost is the line's round trips,
  the workers' own CPU and the machine's contention;
* CPU per device, per component: user + system CPU seconds of each process tree (the
  process, its live descendants and what they reaped), read from /proc before the batch
  starts and after every device is uploaded, divided by the devices: station workers,
  gateway, signer, uploader, registry (the built-in cloud), API, Redis, the database server
  (PostgreSQL's postmaster and backends; SQLite runs inside each process), and this
  process (the supervisor's threads and the bench's polling, once a second);
* line-server CPU per device: signer + gateway + uploader + API + Redis + database server
  (what one line server spends per device; the stations and the cloud are not on it);
* gateway requests per device and their mean task time (Celery's "succeeded in" in the
  gateways' logs): the station's round trips to the line, each a signed request, a nonce
  and the records' transactions.

The station workers' CPU includes the emulated chips (the Python emulator answers every
kit-bridge packet, polls included): real chips cost the station PC next to nothing. Here
they share the machine's cores with the line server, as everything else does.

Run: .venv/bin/python -m bench.line [--stations 1] [--sockets 8] [--devices 64]
     [--timing datasheet] [--db sqlite,postgresql] [--preload 1000,100000]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text
from sqlalchemy.engine import Engine

from bench.procstat import free_port

REPO = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

# Which supervised child belongs to which component (by name prefix).
COMPONENTS = (
    ("worker-station-", "station workers"),
    ("gateway-", "gateway"),
    ("worker-hsm", "signer"),
    ("worker-registry", "uploader"),
    ("registry", "registry (cloud)"),
    ("api", "API"),
    ("redis", "Redis"),
)
DONE_STEP = 70  # Step.DONE, stored as its integer (checked in main)
LINE_SERVER = ("signer", "gateway", "uploader", "API", "Redis", "database server")
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


# --- CPU of process trees, from /proc ----------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds incl. reaped children) of a live process, None if gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / TICK


def tree_cpu(roots: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of process trees (roots and all descendants)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            stats[int(entry)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[str, float] = {}
    for name, pids in roots.items():
        total, todo, seen = 0.0, list(pids), set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in stats:
                continue
            seen.add(pid)
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
        out[name] = total
    return out


def gateway_requests(log_dir: Path) -> tuple[int, float]:
    """(requests, seconds) the gateways served so far: Celery's "succeeded in" lines of
    ``provisioner.station_request`` in their JSON logs."""
    n, seconds = 0, 0.0
    for path in log_dir.glob("gateway-*.log*"):
        for line in path.read_text(errors="replace").splitlines():
            if "provisioner.station_request[" in line and "succeeded in " in line:
                n += 1
                seconds += float(line.split("succeeded in ", 1)[1].split("s", 1)[0])
    return n, seconds


def self_cpu() -> float:
    """This process's own CPU (all its threads: the supervisor's and the bench's)."""
    t = os.times()
    return t.user + t.system


# --- one socket alone: t_socket ----------------------------------------------------------


def probe_socket(config: Path, timing: str, devices: int) -> dict[str, Any]:
    """One socket's time per device through the library (run in a child process: it opens
    the token). The station's chip calls in the station's order; the HSM signature between
    the Sign and the write is measured and left out."""
    import hashlib

    from cryptography.hazmat.primitives import serialization

    from provisioner.ca.ceremony import load_ca
    from provisioner.ca.issuer import build_device_certificate, random_serial_number
    from provisioner.chips.connector import Connector
    from provisioner.ports import SigningRequest
    from provisioner.settings import StationSettings, load_settings

    base = load_settings(config)
    probe = StationSettings(sockets=1, chip_timing=timing)  # type: ignore[arg-type]
    settings = base.model_copy(update={"stations": {**base.stations, "probe": probe}})
    connector = Connector(settings)
    jig = connector.jig("probe")
    ca = load_ca(settings)
    times = []
    try:
        for _ in range(devices):
            jig.insert_blank(0)
            t0 = time.perf_counter()
            with connector.open("emulated:probe/0") as chip:
                chip.identity()  # the socket task: is this the device's chip?
                ident = chip.identity()  # the pipeline's identify step
                chip.ensure_configured()
                if not chip.data_locked():
                    chip.generate_key()
                    chip.lock_data_zone()
                point = b"\x04" + chip.public_key()
                challenge = os.urandom(32)
                sig = chip.sign_digest(hashlib.sha256(challenge).digest())
                t1 = time.perf_counter()
                request = SigningRequest(0, 0, ident.serial_hex, point, challenge, sig)
                der = build_device_certificate(
                    request, ca, settings.profile, random_serial_number(), datetime.now(UTC)
                ).public_bytes(serialization.Encoding.DER)
                off_chip = time.perf_counter() - t1
                chip.write_certificate(der)
                assert chip.read_certificate() == der
            times.append(time.perf_counter() - t0 - off_chip)
    finally:
        ca.close()
    return {"t_socket_s": statistics.median(times), "runs_s": times}


# --- the database: a private PostgreSQL, and the bulk preload ------------------------------


@contextlib.contextmanager
def database(kind: str) -> Iterator[tuple[str | None, Path | None]]:
    """(base URL, PostgreSQL data dir) of the database server, or (None, None) for SQLite."""
    if kind == "sqlite":
        yield None, None
        return
    sys.path.insert(0, str(REPO))
    from tests import pg

    with pg.cluster() as url:
        sock = Path(url.split("host=", 1)[1])
        yield url, sock.parent / "data"


def postmaster_pid(data: Path | None) -> list[int]:
    if data is None:
        return []
    return [int((data / "postmaster.pid").read_text().split()[0])]


def preload(engine: Engine, station_id: str, devices: int) -> float:
    """``devices`` finished devices in batches of 1,000 (batch, devices, certificates,
    uploads, 8 audit events each with their chain link and Merkle nodes, as
    ``chain.append`` writes them), into an empty schema. Returns seconds taken."""
    from provisioner.audit import chain, merkle
    from provisioner.audit.chain import GENESIS_HASH
    from provisioner.audit.entry import Entry, canonical_payload
    from provisioner.db.models import (
        AuditEvent,
        AuditNode,
        Batch,
        BatchState,
        Certificate,
        Device,
        RegistryUpload,
        Station,
        Step,
        UploadState,
    )

    t0 = time.perf_counter()
    when = datetime(2026, 11, 1, tzinfo=UTC)
    registry = "projects/factory/locations/local/registries/devices"
    der = bytes(range(256)) * 2  # a certificate-sized blob (never parsed by the line)
    prev, frontier, seq = GENESIS_HASH, merkle.Frontier(), 0
    with engine.begin() as c:
        c.execute(insert(Station.__table__), [{"id": station_id, "created_at": when}])  # type: ignore[attr-defined]
    for b in range((devices + 999) // 1000):
        n = min(1000, devices - b * 1000)
        first = b * 1000
        bid = b + 1
        batch = {
            "id": bid,
            "station_id": station_id,
            "count": n,
            "issued": n,
            "state": BatchState.FINISHED,
            "created_by": "bench",
            "created_at": when,
            "started_at": when,
            "finished_at": when,
            "mode": "issue",
        }
        devs: list[dict[str, Any]] = []
        certs: list[dict[str, Any]] = []
        ups: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        nodes: list[dict[str, Any]] = []
        for i in range(n):
            k = first + i
            serial = f"01{k:014X}EE"
            devs.append(
                {
                    "id": k + 1,
                    "batch_id": bid,
                    "position": i,
                    "step": Step.DONE,
                    "socket": k % 8,
                    "chip_serial": serial,
                    "revision": "00006002",
                    "public_key": "04" + f"{k:0128x}",
                    "attempts": 1,
                    "updated_at": when,
                }
            )
            certs.append(
                {
                    "device_id": k + 1,
                    "serial_number": f"{k + 1:032x}",
                    "fingerprint_sha256": f"{k:064x}",
                    "der": der,
                    "not_before": when,
                    "not_after": when.replace(year=2040),
                    "issuer_fingerprint_sha256": "ab" * 32,
                    "created_at": when,
                }
            )
            ups.append(
                {
                    "device_id": k + 1,
                    "registry_name": registry,
                    "registry_device_id": f"sn{serial}",
                    "fingerprint_sha256": f"{k:064x}",
                    "state": UploadState.DONE,
                    "num_id": str(k + 1),
                    "attempts": 1,
                    "created_at": when,
                    "updated_at": when,
                }
            )
            for step, event in enumerate(STEPS):
                seq += 1
                entry = Entry(
                    seq=seq,
                    ts=f"2026-11-01T00:00:00.{seq % 1_000_000:06d}Z",
                    actor=f"station:{station_id}",
                    role="station",
                    event_type=event,
                    station_id=station_id,
                    socket=k % 8,
                    batch_id=bid,
                    device_id=k + 1,
                    chip_serial=serial,
                    payload=canonical_payload({"step": step, "fingerprint_sha256": f"{k:064x}"}),
                )
                encoded = entry.encode()
                link = chain.link_hash(prev, encoded)
                events.append({**dataclasses.asdict(entry), "prev_hash": prev, "hash": link})
                prev = link
                frontier, done = frontier.append(merkle.leaf_hash(encoded))
                nodes.extend({"level": lv, "idx": ix, "hash": h} for (lv, ix), h in done)
        with engine.begin() as c:
            c.execute(insert(Batch.__table__), [batch])  # type: ignore[attr-defined]
            c.execute(insert(Device.__table__), devs)  # type: ignore[attr-defined]
            c.execute(insert(Certificate.__table__), certs)  # type: ignore[attr-defined]
            c.execute(insert(RegistryUpload.__table__), ups)  # type: ignore[attr-defined]
            c.execute(insert(AuditEvent.__table__), events)  # type: ignore[attr-defined]
            c.execute(insert(AuditNode.__table__), nodes)  # type: ignore[attr-defined]
    with engine.begin() as c:
        if engine.dialect.name == "postgresql":
            for table in ("batch", "device", "certificate", "registryupload"):
                c.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
            c.execute(text("ANALYZE"))
        else:
            c.execute(text("ANALYZE"))
    return time.perf_counter() - t0


# --- the line ----------------------------------------------------------------------------


def write_config(root: Path, args: argparse.Namespace, database_url: str | None) -> Path:
    port, api_port = free_port(), free_port()
    stations = "".join(
        f'[stations.s{i + 1}]\nsockets = {args.sockets}\nchip_timing = "{args.timing}"\n'
        for i in range(args.stations)
    )
    cfg = root / "provisioner.toml"
    cfg.write_text(
        f'var_dir = "{root / "var"}"\n'
        + (f'database_url = "{database_url}"\n' if database_url else "")
        + f'[registry]\nurl = "http://127.0.0.1:{port}"\nlisten_port = {port}\n'
        + f'[api]\nlisten_port = {api_port}\npublic_url = "http://127.0.0.1:{api_port}"\n'
        + f"[bridge]\nenabled = false\nmqtt_port = {free_port()}\nwss_port = {free_port()}\n"
        + f"mtls_port = {free_port()}\n"
        + f"[devices]\nenabled = false\nport = {free_port()}\n"
        + f"[metrics]\nlisten_port = {free_port()}\n"
        + stations
    )
    return cfg


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise SystemExit(f"provisioner {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def run_case(
    args: argparse.Namespace, kind: str, base_url: str | None, data: Path | None, preloaded: int
) -> dict[str, Any]:
    """One line on ``kind`` with ``preloaded`` devices already in its database."""
    from provisioner.db.engine import create_schema, make_engine
    from provisioner.settings import load_settings
    from provisioner.supervisor import running_services

    root = Path(tempfile.mkdtemp(prefix="bench-line-"))
    url = None
    if base_url is not None:
        from tests import pg

        url = pg.create_database(base_url)
    cfg = write_config(root, args, url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
    env["PROVISIONER_CONFIG"] = str(cfg)
    settings = load_settings(cfg)
    engine = make_engine(settings.db_url)
    create_schema(engine)
    stations = [f"s{i + 1}" for i in range(args.stations)]
    load_s = preload(engine, stations[0], preloaded) if preloaded else 0.0
    cli(env, "ca", "init")
    probe = json.loads(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.line",
                "--probe-socket",
                str(cfg),
                "--timing",
                args.timing,
                "--probe-devices",
                str(args.probe_devices),
            ],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        ).stdout
    )
    t_socket = float(probe["t_socket_s"])
    from provisioner.supervisor import Supervisor

    start_worker = Supervisor.start_worker

    def with_gateway_procs(self: Supervisor, name: str, queue: str, n: int, **kw: Any) -> None:
        if kw.get("role") == "gateway":
            n = args.gateway_procs
        start_worker(self, name, queue, n, **kw)

    Supervisor.start_worker = with_gateway_procs  # type: ignore[method-assign,assignment]
    try:
        with running_services(settings, stations, cfg) as sup:
            batch_ids = [
                int(
                    json.loads(
                        cli(
                            env,
                            "batch",
                            "create",
                            "--count",
                            str(args.devices),
                            "--station",
                            s,
                            "--json",
                        )
                    )["id"]
                )
                for s in stations
            ]
            roots: dict[str, list[int]] = {}
            for child in sup.children:
                label = next(
                    (lab for pre, lab in COMPONENTS if child.name.startswith(pre)), child.name
                )
                roots.setdefault(label, []).append(child.proc.pid)
            roots["database server"] = postmaster_pid(data)
            pids_before = {ch.name: ch.proc.pid for ch in sup.children}
            cpu0, self0 = tree_cpu(roots), self_cpu()
            req0 = gateway_requests(settings.var / "log")
            wall0 = time.monotonic()
            for bid in batch_ids:
                cli(env, "batch", "start", str(bid), "--no-wait", "--json")
            total = args.devices * len(batch_ids)
            ids = ",".join(map(str, batch_ids))
            done = failed = 0
            deadline = time.monotonic() + args.timeout
            while time.monotonic() < deadline:
                with engine.connect() as c:
                    row = c.execute(
                        text(
                            f"SELECT sum(CASE WHEN step = {DONE_STEP} THEN 1 ELSE 0 END), "
                            "sum(CASE WHEN error IS NOT NULL THEN 1 ELSE 0 END) "
                            f"FROM device WHERE batch_id IN ({ids})"
                        )
                    ).one()
                done, failed = int(row[0] or 0), int(row[1] or 0)
                if done + failed >= total:
                    break
                time.sleep(1.0)
            wall = time.monotonic() - wall0
            cpu1, self1 = tree_cpu(roots), self_cpu()
            req1 = gateway_requests(settings.var / "log")
            restarted = [ch.name for ch in sup.children if pids_before.get(ch.name) != ch.proc.pid]
            with engine.connect() as c:
                started = c.execute(
                    text(
                        "SELECT min(ts) FROM audit_event WHERE event_type = 'batch.started' "
                        f"AND batch_id IN ({ids})"
                    )
                ).scalar_one()
                last = c.execute(
                    text(
                        "SELECT max(ts), count(*) FROM audit_event "
                        f"WHERE event_type = 'device.cert_verified' AND batch_id IN ({ids})"
                    )
                ).one()
    finally:
        Supervisor.start_worker = start_worker  # type: ignore[method-assign]
        engine.dispose()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    verified = int(last[1])
    span = _ts(last[0]) - _ts(started) if verified else float("nan")
    per_hour = verified / span * 3600 if verified else 0.0
    sockets = args.stations * args.sockets
    ideal = sockets * 3600 / t_socket
    cpu = {k: (cpu1[k] - cpu0[k]) / max(done, 1) * 1000 for k in cpu0 if cpu0[k] or cpu1[k]}
    cpu["supervisor + bench"] = (self1 - self0) / max(done, 1) * 1000
    line_ms = sum(cpu.get(k, 0.0) for k in LINE_SERVER)
    requests = req1[0] - req0[0]
    return {
        "db": kind,
        "preloaded": preloaded,
        "preload_s": round(load_s, 1),
        "devices": total,
        "done": done,
        "failed": failed,
        "verified": verified,
        "span_s": round(span, 2),
        "wall_s": round(wall, 2),
        "devices_per_h": round(per_hour),
        "t_socket_s": round(t_socket, 4),
        "probe_runs_s": [round(x, 4) for x in probe["runs_s"]],
        "ideal_per_h": round(ideal),
        "efficiency": round(per_hour / ideal, 3),
        "cpu_ms_per_device": {k: round(v, 2) for k, v in cpu.items()},
        "line_server_cpu_ms_per_device": round(line_ms, 2),
        "gateway_requests_per_device": round(requests / max(total, 1), 1),
        "gateway_request_ms": round((req1[1] - req0[1]) / max(requests, 1) * 1000, 1),
        "gateway_procs": args.gateway_procs,
        "restarted": restarted,
        "root": str(root),
    }


def report(r: dict[str, Any]) -> None:
    print(f"\n== {r['db']}, {r['preloaded']:,} devices preloaded (preload {r['preload_s']} s) ==")
    print(
        f"devices: {r['done']} uploaded, {r['failed']} failed, {r['verified']} verified in "
        f"{r['span_s']} s (all uploaded after {r['wall_s']} s)"
    )
    print(f"devices/h:            {r['devices_per_h']:>10,}")
    print(f"t_socket (median):    {r['t_socket_s'] * 1000:10.1f} ms  runs {r['probe_runs_s']}")
    print(f"ideal devices/h:      {r['ideal_per_h']:>10,}  (sockets x 3600 / t_socket)")
    print(f"station efficiency:   {r['efficiency']:10.3f}")
    print("CPU ms per device:")
    for k, v in sorted(r["cpu_ms_per_device"].items(), key=lambda kv: -kv[1]):
        mark = "  (line server)" if k in LINE_SERVER else ""
        print(f"  {k:22s} {v:9.2f}{mark}")
    print(
        f"line-server CPU per device: {r['line_server_cpu_ms_per_device']:.2f} ms "
        f"({' + '.join(LINE_SERVER)})"
    )
    print(
        f"gateway: {r['gateway_requests_per_device']} requests per device, "
        f"{r['gateway_request_ms']} ms each (mean task time), {r['gateway_procs']} processes"
    )
    if r["restarted"]:
        print(f"restarted during the run: {r['restarted']}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--stations", type=int, default=1, help="stations (one batch each)")
    ap.add_argument("--sockets", type=int, default=8, help="sockets per station")
    ap.add_argument("--devices", type=int, default=64, help="devices per station's batch")
    ap.add_argument(
        "--timing",
        choices=("zero", "datasheet"),
        default="datasheet",
        help="the stations' chip_timing (and the probe's)",
    )
    ap.add_argument("--db", default="sqlite", help="sqlite, postgresql or both, comma-separated")
    ap.add_argument(
        "--preload",
        default="0",
        help="finished devices already in the database, comma-separated runs",
    )
    ap.add_argument(
        "--probe-devices",
        type=int,
        default=3,
        help="devices the one-socket probe runs for t_socket (median)",
    )
    ap.add_argument(
        "--gateway-procs",
        type=int,
        default=2,
        help="processes of each station's gateway worker (the supervisor starts 2)",
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per batch at most")
    ap.add_argument("--keep", action="store_true", help="keep each run's var dir (logs)")
    ap.add_argument("--json", action="store_true", help="also print each result as JSON")
    ap.add_argument("--probe-socket", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    from provisioner.db.models import Step
    from provisioner.private_files import private_umask

    private_umask()  # the product's umask (077): it refuses private files others can read

    assert int(Step.DONE) == DONE_STEP
    if args.probe_socket is not None:
        print(json.dumps(probe_socket(args.probe_socket, args.timing, args.probe_devices)))
        return
    print(
        f"line: {args.stations} station(s) x {args.sockets} sockets, {args.devices} devices "
        f"per station, chip timing {args.timing}; {os.cpu_count()} CPUs, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    for kind in args.db.split(","):
        with database(kind) as (base_url, data):
            for n in (int(x) for x in args.preload.split(",")):
                r = run_case(args, kind, base_url, data, n)
                report(r)
                if args.json:
                    print(json.dumps(r))


if __name__ == "__main__":
    main()
