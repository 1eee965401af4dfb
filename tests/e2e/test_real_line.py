"""A real line on this machine: one line server (PostgreSQL, Redis with TLS and ACL users,
the signer, the uploader, the registry, the API) and three station PCs, each its own
process group with its own var directory and config, in a mount namespace where the line
server's directory is an empty tmpfs (when the tests run as root, as in CI): a station's
processes cannot read the line server's files, its database or its PIN. Loopback ports
stand in for the network.

3 x 40 devices; one station PC loses power (SIGKILL) mid-batch and comes back; the others
never stop. Then what a station can do with its own credentials against the line, and a
revoked station cut off."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import text
from sqlalchemy.engine import Engine

from provisioner.broker.clients import BrokerLogin, redis_client, station_login
from provisioner.db.engine import make_engine
from provisioner.link.envelope import seal
from provisioner.link.keys import pinned_line_certificate, station_key
from provisioner.link.remote import celery_transport
from provisioner.link.wire import REQUEST_TASK
from provisioner.settings import Settings, load_settings
from tests import pg
from tests.conftest import free_port
from workers.celery_app import station_app
from workers.queues import PROVISION_TASK

pytestmark = pytest.mark.slow

STATIONS = ("line1", "line2", "line3")
PER_STATION = 40
SOCKETS = 2


@dataclass
class Pc:
    """One simulated PC: its config, var dir and the user its processes run as."""

    name: str
    root: Path
    config: Path
    hide: Path | None = None  # a directory this PC's processes must not see

    @property
    def settings(self) -> Settings:
        return load_settings(self.config)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIONER_")}
        env["PROVISIONER_CONFIG"] = str(self.config)
        return env

    def argv(self, *args: str) -> list[str]:
        cmd = [sys.executable, "-m", "provisioner.cli.main", *args]
        if self.hide is None:
            return cmd
        hide = 'mount -t tmpfs -o size=1m,mode=000 none "$0" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", hide, str(self.hide), *cmd]

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=180,
        )
        if ok:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / "services.out").open("ab")
        return subprocess.Popen(
            self.argv("services", "run", *args),
            env=self.env(),
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _until(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as c:
        return list(c.execute(text(sql), params))


def _done(engine: Engine, station: str) -> int:
    return int(
        _rows(
            engine,
            "SELECT count(*) FROM device d JOIN batch b ON b.id = d.batch_id "
            "WHERE b.station_id = :s AND d.step = 70",
            s=station,
        )[0][0]
    )


def _kill_pc(pc: Pc, proc: subprocess.Popen[bytes]) -> None:
    """Power lost: the supervisor and every process group it started, SIGKILL."""
    groups = [proc.pid]
    for pidfile in (pc.root / "var" / "run").glob("*.pid"):
        groups.append(int(pidfile.read_text()))
    for g in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    proc.wait(10)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def line(tmp_path: Path, postgres_url: str) -> Iterator[dict[str, Any]]:
    isolate = os.geteuid() == 0 and shutil.which("unshare") is not None
    api, registry, broker = free_port(), free_port(), free_port()
    root = tmp_path / "line-server"
    root.mkdir(mode=0o700)
    cfg = root / "line.toml"
    cfg.write_text(
        'role = "line"\n'
        f'var_dir = "{root / "var"}"\n'
        f'database_url = "{pg.create_database(postgres_url)}"\n'
        f'[broker]\nmode = "tls"\nhost = "127.0.0.1"\nlisten_host = "127.0.0.1"\nport = {broker}\n'
        f"[api]\nlisten_port = {api}\n"
        f"[registry]\nlisten_port = {registry}\n"
        f"[devices]\nport = {free_port()}\n"
        f"[bridge]\nmqtt_port = {free_port()}\nwss_port = {free_port()}\n"
        f"mtls_port = {free_port()}\n"
        + "".join(f"[stations.{s}]\nsockets = {SOCKETS}\n" for s in STATIONS)
    )
    server = Pc("line", root, cfg)
    # Station PCs live outside the (root-only) test directory, readable by their user only.
    pcs: dict[str, Pc] = {}
    for s in STATIONS:
        sroot = Path(tempfile.mkdtemp(prefix=f"station-{s}-"))
        scfg = sroot / "station.toml"
        scfg.write_text(
            'role = "station"\n'
            f'station_id = "{s}"\n'
            f'var_dir = "{sroot / "var"}"\n'
            f'line_url = "http://127.0.0.1:{api}"\n'
            f'[broker]\nmode = "tls"\nhost = "127.0.0.1"\nport = {broker}\n'
            f"[metrics]\nlisten_port = {free_port()}\n"  # each station PC's exporter
            f'[stations.{s}]\nsockets = {SOCKETS}\nfeed = "auto"\n'
        )
        pcs[s] = Pc(s, sroot, scfg, root if isolate else None)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield {"server": server, "stations": pcs, "procs": procs, "isolated": isolate}
    finally:
        for p in reversed(procs):
            _stop(p)
        for pc in pcs.values():
            if not os.environ.get("KEEP_STATIONS"):
                shutil.rmtree(pc.root, ignore_errors=True)


def test_a_line_server_and_three_station_pcs(line: dict[str, Any]) -> None:
    server: Pc = line["server"]
    pcs: dict[str, Pc] = line["stations"]
    procs: list[subprocess.Popen[bytes]] = line["procs"]

    # The line server, as docs/deploy.md brings it up.
    server.cli("ca", "init")
    server.cli("db", "upgrade")
    server.cli("line", "identity", "--name", "127.0.0.1", "--name", "localhost")
    procs.append(server.start("--role", "line"))
    api = server.settings.api_url
    _until("the line's API", lambda: _healthy(api), 60)
    engine = make_engine(server.settings.db_url)

    # Each station PC: a one-time token from the line, enrolled, started.
    station_procs: dict[str, subprocess.Popen[bytes]] = {}
    for s, pc in pcs.items():
        token_file = pc.root / f"{s}.token"
        server.cli("station", "add", s, "--token-out", str(token_file))
        pc.cli("station", "enroll", "--token-file", str(token_file))
        token_file.unlink()
        ident = pc.settings.station_identity_dir
        assert (ident / "station.key").stat().st_mode & 0o077 == 0
        assert "database_url" not in pc.config.read_text()
        station_procs[s] = pc.start("--role", "station")
        procs.append(station_procs[s])
    if line["isolated"]:  # a station's processes cannot read the line server's files
        probe = [*pcs["line1"].argv("--help")[:6], "cat", str(server.config)]
        denied = subprocess.run(probe, capture_output=True, text=True)
        assert denied.returncode != 0 and "No such file" in denied.stderr
    _until(
        "a gateway per station",
        lambda: all((server.root / "var/run/ready" / f"gateway-{s}").is_file() for s in STATIONS),
        60,
    )
    _until(
        "the station workers",
        lambda: all(
            (pc.root / "var/run/ready" / f"worker-station-{s}").is_file() for s, pc in pcs.items()
        ),
        90,
    )

    # A batch per station, all started at once.
    for i, s in enumerate(STATIONS, start=1):
        server.cli("batch", "create", "--count", str(PER_STATION), "--station", s)
        server.cli("batch", "start", str(i), "--no-wait")

    # Station line2 loses power mid-batch; the others keep going; it comes back.
    _until("line2 under way", lambda: _done(engine, "line2") >= 3, 180)
    _kill_pc(pcs["line2"], station_procs["line2"])
    others = {s: _done(engine, s) for s in ("line1", "line3")}
    time.sleep(6)
    assert all(_done(engine, s) > others[s] or _done(engine, s) == PER_STATION for s in others)
    stalled = _done(engine, "line2")
    time.sleep(3)
    assert _done(engine, "line2") <= stalled + SOCKETS  # at most what was in its sockets
    procs.append(pcs["line2"].start("--role", "station"))

    _until(
        "every batch finished",
        lambda: (
            [r[0] for r in _rows(engine, "SELECT state FROM batch ORDER BY id")] == ["FINISHED"] * 3
        ),
        300,
    )

    # Every certificate verifies, one per chip, every device in the registry.
    inter = x509.load_pem_x509_certificate(
        (server.settings.ca_dir / "intermediate.pem").read_bytes()
    )
    ders = [r[0] for r in _rows(engine, "SELECT der FROM certificate")]
    assert len(ders) == 3 * PER_STATION
    for der in ders:
        x509.load_der_x509_certificate(der).verify_directly_issued_by(inter)
    serials = {r[0] for r in _rows(engine, "SELECT chip_serial FROM device")}
    assert len(serials) == 3 * PER_STATION and None not in serials
    registry_db = make_engine(server.settings.registry_db_url)
    assert _rows(registry_db, "SELECT count(*) FROM registry_devices")[0][0] == 3 * PER_STATION
    server.cli("audit", "verify")

    # A station PC's own metrics (no API there): its exporter counts its devices' steps.
    m = pcs["line3"].settings.metrics
    scrape = httpx.get(f"http://127.0.0.1:{m.listen_port}/metrics", timeout=10).text
    verified = [
        float(ln.rsplit(" ", 1)[1])
        for ln in scrape.splitlines()
        if ln.startswith("provisioner_device_steps_total{")
        and 'step="cert_verified"' in ln
        and 'outcome="ok"' in ln
        and 'station="line3"' in ln
    ]
    assert verified == [PER_STATION], scrape[:2000]

    # --- what station line1 can do with its own credentials -----------------------------
    s1 = pcs["line1"].settings
    host, port = s1.broker.host, s1.broker.port
    with pytest.raises((redis.ConnectionError, OSError)):
        redis.Redis(host=host, port=port, socket_timeout=3).ping()  # no TLS
    own = station_login(s1)
    r1 = redis_client(s1, own)
    assert r1.ping()
    theirs = BrokerLogin("st-line2", own.password, "st:line2:")
    with pytest.raises(redis.AuthenticationError):
        redis_client(s1, theirs, role="station").ping()
    for key in ("st:line2:gateway", "line:hsm", "line:registry"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            r1.lpush(key, "forged")
    with pytest.raises(redis.exceptions.NoPermissionError):
        r1.execute_command("ACL", "LIST")

    # Messages: forged, replayed, relabelled, another station's device, out of order.
    app = station_app(s1, "line1", as_line=False)
    send = celery_transport(app)
    key = station_key(s1, "line1")
    line1_device = _rows(
        engine,
        "SELECT d.id FROM device d JOIN batch b ON b.id = d.batch_id "
        "WHERE b.station_id = 'line1' LIMIT 1",
    )[0][0]
    line2_device = _rows(
        engine,
        "SELECT d.id FROM device d JOIN batch b ON b.id = d.batch_id "
        "WHERE b.station_id = 'line2' LIMIT 1",
    )[0][0]

    def request(
        op: str, args: dict[str, Any], *, signer: Any = None, task: str = REQUEST_TASK
    ) -> dict[str, Any]:
        return seal(
            signer or key.key,
            kid=key.kid,
            task=task,
            sender=key.party,
            recipient="line",
            body={"op": op, "socket": 0, "args": args},
            ttl_s=60,
        )

    genuine = request("load", {"device": line1_device})
    cases = [
        (
            request(
                "load", {"device": line1_device}, signer=ec.generate_private_key(ec.SECP256R1())
            ),
            "bad_signature",
        ),
        (genuine, None),
        (genuine, "replayed"),
        (request("load", {"device": line1_device}, task=PROVISION_TASK), "wrong_task"),
        (request("load", {"device": line2_device}), "not_yours"),
        (
            request("record_written", {"device": line1_device, "fingerprint": "00" * 32}),
            "out_of_order",
        ),
        (request("append_audit", {"event": "device.done"}), "bad_request"),
    ]
    line_cert = pinned_line_certificate(s1)
    for msg, reason in cases:
        answer = send(msg, 30)
        assert isinstance(answer, dict) and answer["kid"] != key.kid
        assert answer.get("body", {}).get("reason") == reason, (reason, answer.get("body"))
        assert answer["from"] == "line" and line_cert is not None
    app.close()
    refused = [
        r[0]
        for r in _rows(engine, "SELECT payload FROM audit_event WHERE event_type = 'link.refused'")
    ]
    text_all = " ".join(str(p) for p in refused)
    for reason in (
        "bad_signature",
        "replayed",
        "wrong_task",
        "not_yours",
        "out_of_order",
        "bad_request",
    ):
        assert reason in text_all, reason

    # --- a stolen station PC is cut off --------------------------------------------------
    s3 = pcs["line3"].settings
    r3 = redis_client(s3, station_login(s3))
    assert r3.ping()
    server.cli("station", "revoke", "line3")
    with pytest.raises((redis.AuthenticationError, redis.ConnectionError)):
        redis_client(s3, station_login(s3)).ping()
    assert (
        _rows(engine, "SELECT count(*) FROM audit_event WHERE event_type = 'station.revoked'")[0][0]
        == 1
    )


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).is_success
    except httpx.HTTPError:
        return False
