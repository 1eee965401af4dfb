"""Starts, watches and stops the station's services as child processes: Redis, the
registry, the MQTT bridge (mosquitto with the product's plugin), the API, the device-facing
HTTPS listener and the Celery workers.

Used by ``provisioner services run``, ``provisioner demo`` and the end-to-end tests, so all
three run the same real processes.

- One supervisor per var dir (:mod:`provisioner.supervisor_lock`); a second one refuses
  and touches nothing. Children a dead supervisor left behind are reaped only once its lock
  is free, i.e. once it is certainly dead.
- Each child is the leader of its own process group (its own session): Ctrl-C in the
  terminal reaches only the supervisor, and stopping a child kills its whole group, Celery's
  pool processes included.
- A child that exits is restarted after a backoff (1, 2, 4 ... 30 s) by a monitor thread;
  the restart is logged (``<var>/log/supervisor.log`` and stderr) and counted in
  ``<var>/run/services.json``. One that exits more than ``restart_limit`` times within
  ``restart_window_s`` is reported and left down. After Redis (which keeps nothing on disk:
  every queued message is gone) or a worker (an upload worker dies with the messages it
  held) comes back, the running batches are dispatched again, so they finish on their own.
- Stopping ignores further Ctrl-C/SIGTERM (a second one only makes it skip the grace
  period): workers first, Redis last, SIGTERM to each group then SIGKILL.
- A health monitor thread (:mod:`provisioner.health`) probes the signer and the registry.
- Logs (:mod:`provisioner.logs`): each child writes JSON lines to ``<var>/log/<name>.log``
  itself; its raw stdout and stderr go to ``<name>.out``. A thread rotates both every
  ``log_rotate_interval_s`` (the only rotator: several processes write one file).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from sqlalchemy.engine import Engine

from provisioner.errors import ServiceUnavailableError
from provisioner.link.wire import GATEWAY_QUEUE
from provisioner.listeners import plan_ports
from provisioner.logs import PROCESS_ENV
from provisioner.logs import setup as log_setup
from provisioner.logs.reader import parse
from provisioner.logs.rotate import rotate_dir
from provisioner.metrics.exporter import start_exporter
from provisioner.metrics.multiproc import child_env as metrics_env
from provisioner.metrics.multiproc import prepare as prepare_metrics
from provisioner.private_files import check_start
from provisioner.process_groups import group_alive, group_carries, signal_group, wait_group_gone
from provisioner.settings import Settings, local_url
from provisioner.supervisor_lock import InstanceLock
from provisioner.supervisor_status import ComponentStatus, remove_status, write_status
from workers.celery_app import STATION_ENV, WORKER_ENV
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE, station_queue
from workers.runtime import READY_ENV

log = logging.getLogger("provisioner.supervisor")

REDIS, REGISTRY, API, WORKER = "redis", "registry", "api", "worker"
BRIDGE = "bridge"
DEVICES = "devices"  # the device-facing HTTPS listener (enrollment, identity, renewal)
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Child:
    """One supervised process (and its process group), across its restarts."""

    name: str
    kind: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]
    queue: str | None = None  # workers: the queue they consume
    role: str = "line"  # workers: line (hsm, registry), gateway (line side of a station), station
    env: dict[str, str] = field(default_factory=dict)  # this child's own environment
    ready_file: Path | None = None  # workers: written by the worker once it consumes
    started_at: float = field(default_factory=time.time)
    restarts: int = 0
    state: str = "running"  # running | restarting | failed
    last_exit: int | None = None
    crashes: list[float] = field(default_factory=list)  # monotonic, within the window
    restart_at: float = 0.0

    def status(self) -> ComponentStatus:
        return ComponentStatus(
            self.name,
            self.proc.pid,
            self.state,
            self.started_at,
            self.restarts,
            self.last_exit,
        )


def _stop_phase(c: Child) -> int:
    """Stations first (a device in hand still needs its gateway, the signer and Redis to
    finish its step), then the gateways, signer and uploader and the MQTT bridge (its plugin
    sends its last buffered telemetry to the registry's device plane as it stops), then the
    HTTP services, Redis last."""
    if c.kind == BRIDGE:
        return 1
    if c.kind == WORKER:
        return 0 if c.role == "station" else 1
    return 2 if c.kind in (REGISTRY, API, DEVICES) else 3


class _Stopping(Exception):
    """The supervisor is stopping: no new child may start."""


@dataclass
class Supervisor:
    """Owns the child processes of one station PC. Use :func:`running_services`."""

    settings: Settings
    config_file: Path | None = None
    children: list[Child] = field(default_factory=list)
    # PROVISIONER_* overrides for the children (ports moved by the demo).
    child_overrides: dict[str, str] = field(default_factory=dict)
    restart_limit: int = 5
    restart_window_s: float = 120.0
    backoff_max_s: float = 30.0
    health_interval_s: float = 15.0
    health_timeout_s: float = 10.0
    lapsed_interval_s: float = 30.0
    log_rotate_interval_s: float = 30.0
    _lock: InstanceLock | None = field(default=None, repr=False)
    _mutex: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, repr=False)
    _engine: Engine | None = field(default=None, repr=False)
    # Signals: the first one interrupts (KeyboardInterrupt), later ones only hurry the stop;
    # inside a critical section (a child being started) the interrupt waits for its end.
    _interrupted: bool = field(default=False, repr=False)
    _hurry: bool = field(default=False, repr=False)
    _defer: int = field(default=0, repr=False)
    _pending: bool = field(default=False, repr=False)

    @property
    def log_dir(self) -> Path:
        return self.settings.var / "log"

    @property
    def run_dir(self) -> Path:
        return self.settings.var / "run"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from provisioner.db.engine import create_schema, make_engine

            self._engine = make_engine(self.settings.db_url)
            create_schema(self._engine)
        return self._engine

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROVISIONER_VAR_DIR"] = str(self.settings.var)
        if self.config_file is not None:
            env["PROVISIONER_CONFIG"] = str(self.config_file.resolve())
        env.update(self.child_overrides)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(metrics_env(self.settings))
        return env

    # --- one instance per var dir ---------------------------------------------------------

    def acquire(self) -> None:
        """Refuse private files other users can access (ConfigError with the chmod that
        fixes them; nothing started or written), take the var dir's lock (ConflictError
        naming the running supervisor), then reap what a dead predecessor left; start
        logging to ``<var>/log/supervisor.log``."""
        check_start(self.settings)
        lock = InstanceLock(self.run_dir, self.config_file)
        lock.acquire()
        self._lock = lock
        _log_to(self.log_dir / "supervisor.log", log_setup.level_of(self.settings))
        self.reap_stale()
        if self.settings.metrics.enabled:
            prepare_metrics(self.settings)  # after the reaping: no dead writer is left

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            _detach_logs()

    def reap_stale(self) -> None:
        """Stop the process groups a previous supervisor left behind (it was SIGKILLed):
        SIGTERM to all, SIGKILL to what is left after 10 s. Only groups whose processes
        carry this var dir are touched: a pid file can outlive its process and the pid be
        reused by something else."""
        if not self.run_dir.is_dir():
            return
        remove_status(self.run_dir)
        marker = str(self.settings.var)
        stale: list[int] = []
        for pidfile in self.run_dir.glob("*.pid"):
            with suppress(ValueError, OSError):
                pgid = int(pidfile.read_text())
                if group_carries(pgid, marker):
                    log.warning("stopping %s (pid %d) left by a dead supervisor", pidfile, pgid)
                    signal_group(pgid, signal.SIGTERM)
                    stale.append(pgid)
            pidfile.unlink(missing_ok=True)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(group_alive(g) for g in stale):
            time.sleep(0.1)
        for pgid in stale:
            signal_group(pgid, signal.SIGKILL)
            wait_group_gone(pgid, 5.0)

    # --- starting children ----------------------------------------------------------------

    def spawn(
        self,
        name: str,
        argv: list[str],
        kind: str = WORKER,
        queue: str | None = None,
        *,
        role: str = "line",
        env: dict[str, str] | None = None,
        ready_file: Path | None = None,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_file = self.log_dir / f"{name}.log"
        env = dict(env or {})
        with self._critical():
            if ready_file is not None:
                ready_file.unlink(missing_ok=True)
            proc = self._popen(name, argv, log_file, env)
            child = Child(name, kind, argv, log_file, proc, queue, role, env, ready_file)
            self.children.append(child)
        return child

    def _popen(
        self, name: str, argv: list[str], log_file: Path, env: dict[str, str]
    ) -> subprocess.Popen[bytes]:
        with self._mutex:
            if self._stopping.is_set():
                raise _Stopping(name)
            # Its JSON log it writes itself (log_file, named by PROCESS_ENV); what it
            # prints outside logging (a traceback before logging is set up, Celery's
            # banner, a C library's crash) goes to name.out, opened O_APPEND so the
            # rotator can copy-truncate it.
            with _out_file(log_file).open("ab") as out:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**self.child_env(), **env, PROCESS_ENV: name},
                    cwd=os.getcwd(),
                    start_new_session=True,
                )
            (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        return proc

    def start_redis(self) -> None:
        """The line's broker, from the configuration :mod:`provisioner.broker.config`
        writes (unix socket or TLS port, ACL users of the enrolled stations)."""
        from provisioner.broker.acl import sync_acl
        from provisioner.broker.config import write_redis_conf

        sock = self.settings.redis_socket
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock.unlink(missing_ok=True)
        conf = write_redis_conf(self.settings)
        sync_acl(self.settings, self.engine)
        argv = [_which("redis-server"), str(conf)]
        self._wait_ready(self.spawn("redis", argv, REDIS), self._check_alive)

    def start_registry(self) -> None:
        b = self.settings.bridge
        if b.enabled and b.https_port is not None:
            # The registry serves the HTTP bridge over TLS with the bridge's certificate.
            from provisioner.ca.bridge_cert import ensure_bridge_certificate

            ensure_bridge_certificate(self.settings)
        child = self.spawn("registry", [sys.executable, "-m", "provisioner.cloud"], REGISTRY)
        self._wait_ready(child, self._check_alive)

    def start_bridge(self) -> None:
        """The MQTT bridge devices in the field connect to, when ``bridge.enabled``: the
        server certificate ensured (issued by the HSM intermediate when missing, expiring
        within 30 days or renamed: :mod:`provisioner.ca.bridge_cert`), the plugin's token
        file ensured, ``<var>/bridge/mosquitto.conf`` written, then mosquitto started after
        the registry (its plugin asks the registry's device plane for every decision) and
        probed by a TCP connect to its MQTT/TLS port. Its log lines go to ``bridge.out``."""
        if not self.settings.bridge.enabled:
            return
        from provisioner.ca.bridge_cert import ensure_bridge_certificate
        from provisioner.cloud.mosquitto import check_installed, mosquitto_argv, write_config
        from provisioner.cloud.tokens import ensure_upload_token

        check_installed(self.settings)
        ensure_upload_token(self.settings.bridge_token_file)
        if ensure_bridge_certificate(self.settings):
            log.info(
                "issued the MQTT bridge's server certificate for %s", self.settings.bridge.names
            )
        conf = write_config(self.settings)
        argv = _line_buffered(mosquitto_argv(self.settings, conf))
        self._wait_ready(self.spawn("bridge", argv, BRIDGE), self._check_alive)

    def start_api(self) -> None:
        """The HTTP API (public PKI files; audit, batches and users by role)."""
        child = self.spawn("api", [sys.executable, "-m", "provisioner.api"], API)
        self._wait_ready(child, self._check_alive)

    def start_devices(self) -> None:
        """The device-facing HTTPS listener, when ``devices.enabled``: its server
        certificate ensured (issued by the HSM intermediate when missing, expiring within 30
        days, renamed or after a rotation: :mod:`provisioner.api.devices_server`), then
        started after the API and probed by ``GET /healthz`` over TLS against the root it
        pins."""
        if not self.settings.devices.enabled:
            return
        from provisioner.api.devices_server import ensure_devices_certificate

        if ensure_devices_certificate(self.settings):
            log.info(
                "issued the device listener's server certificate for %s",
                self.settings.devices.names,
            )
        argv = [sys.executable, "-m", "provisioner.api.devices_server"]
        self._wait_ready(self.spawn("devices", argv, DEVICES), self._check_alive)

    def start_line_workers(self) -> None:
        """The signer (``hsm``) and the uploader (``registry``), in the line's namespace."""
        for name, queue, concurrency in (
            ("worker-hsm", HSM_QUEUE, 1),
            ("worker-registry", REGISTRY_QUEUE, 2),
        ):
            self.start_worker(name, queue, concurrency, wait=False)
        self.wait_workers(["worker-hsm", "worker-registry"], check=self._check_alive)

    def start_gateways(self, station_ids: list[str]) -> None:
        """One gateway worker per station (line server): it checks and records that
        station's requests, in the station's namespace."""
        for s in station_ids:
            self.start_worker(
                f"gateway-{s}", GATEWAY_QUEUE, 2, role="gateway", station=s, wait=False
            )
        self.wait_workers([f"gateway-{s}" for s in station_ids], check=self._check_alive)

    def start_local_stations(self, station_ids: list[str]) -> None:
        """Stations on this PC (role "all"): each enrolled with an identity of its own if
        it has none, its gateway, then its worker."""
        from provisioner.local_line import ensure_local_stations, station_env

        ensure_local_stations(self.settings, self.engine, station_ids)
        have = {c.env.get(STATION_ENV) for c in self.children if c.role == "gateway"}
        self.start_gateways([s for s in station_ids if s not in have])
        self.start_station_workers(
            station_ids, {s: station_env(self.settings, s) for s in station_ids}
        )

    def start_station_workers(self, station_ids: list[str], env: dict[str, dict[str, str]]) -> None:
        """Each station's worker (one pool process per socket); ``env``: per station, what
        its worker needs beyond this PC's settings (its identity, on a one-PC line)."""
        for s in station_ids:
            self.start_worker(
                f"worker-station-{s}",
                station_queue(s),
                self.settings.station(s).sockets,
                role="station",
                station=s,
                env=env.get(s, {}),
                wait=False,
            )
        self.wait_workers([f"worker-station-{s}" for s in station_ids], check=self._check_alive)
        for s in station_ids:
            self._station_resume(s, env.get(s, {}))

    def start_worker(
        self,
        name: str,
        queue: str,
        concurrency: int,
        *,
        role: str = "line",
        station: str | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> None:
        """One ``celery -A workers worker`` consuming ``queue`` (one child per socket for a
        station queue), as ``role`` (line, gateway or station) for ``station``."""
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{name}@%h",
            "-c",
            str(concurrency),
            "--loglevel",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ]
        ready = self.run_dir / "ready" / name
        worker_env = {
            WORKER_ENV: role,
            READY_ENV: str(ready),
            **({STATION_ENV: station} if station else {}),
            **(env or {}),
        }
        self.spawn(name, argv, WORKER, queue, role=role, env=worker_env, ready_file=ready)
        if wait:
            self.wait_workers([name], check=self._check_alive)

    def wait_workers(
        self, names: list[str], timeout: float = 60.0, check: Callable[[], None] | None = None
    ) -> None:
        """Until each named worker consumes its queue (it writes its ready file then)."""
        by_name = {c.name: c for c in self.children}
        deadline = time.monotonic() + timeout
        missing = list(names)
        while time.monotonic() < deadline and not self._stopping.is_set():
            if check is not None:
                check()
            missing = [n for n in names if (f := by_name[n].ready_file) is None or not f.is_file()]
            if not missing:
                return
            time.sleep(0.1)
        raise ServiceUnavailableError(
            f"workers {missing} did not start within {timeout:.0f}s; see {self.log_dir}/<name>.log"
        )

    def _station_resume(self, station_id: str, env: dict[str, str]) -> None:
        """A station's worker is up: ask the line for its running batches' work (the
        station has no database to look in; the line's gateway sends the orders)."""
        from provisioner.station_client import ask_resume

        try:
            n = ask_resume(self.settings, station_id, env)
        except Exception as exc:  # the line may be down: its own re-dispatch covers it
            log.warning("station %s: could not ask the line for its work: %s", station_id, exc)
            return
        if n:
            _report(logging.INFO, f"station {station_id}: the line re-sent {n} devices")

    def _wait_ready(self, child: Child, check: Callable[[], None], timeout: float = 30.0) -> None:
        """Until the child answers (Redis PING, HTTP /healthz, the worker consuming)."""
        if child.kind == WORKER:
            self.wait_workers([child.name], timeout=2 * timeout, check=check)
            return
        probe = self._probe(child.kind)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stopping.is_set():
            check()
            with suppress(Exception):
                if probe():
                    return
            time.sleep(0.1)
        raise ServiceUnavailableError(
            f"{child.name} did not become ready within {timeout:.0f}s; see {child.log} "
            f"and {_out_file(child.log).name}"
        )

    def _probe(self, kind: str) -> Callable[[], bool]:
        if kind == REDIS:
            from provisioner.preflight import redis_client

            return lambda: bool(redis_client(self.settings).ping())
        if kind == BRIDGE:
            from provisioner.cloud.mosquitto import probe

            return lambda: probe(self.settings)
        if kind == DEVICES:
            return self._probe_devices()
        section = self.settings.registry if kind == REGISTRY else self.settings.api
        url = local_url(section.listen_host, section.listen_port) + "/healthz"
        return lambda: httpx.get(url, timeout=1).is_success

    def _probe_devices(self) -> Callable[[], bool]:
        """``GET /healthz`` over TLS, the server checked against the pinned root (not its
        name: the probe goes to the listen address, which ``devices.names`` need not hold)."""
        import ssl

        from provisioner.api.devices_server import devices_files

        d = self.settings.devices
        ctx = ssl.create_default_context(cafile=devices_files(self.settings).root_path)
        ctx.check_hostname = False
        url = local_url(d.listen_host, d.port).replace("http://", "https://", 1) + "/healthz"
        return lambda: httpx.get(url, timeout=1, verify=ctx).is_success

    def _check_alive(self) -> None:
        """While starting: a child that exits is fatal (a port in use, a bad config)."""
        for c in self.children:
            code = c.proc.poll()
            if code is not None:
                raise ServiceUnavailableError(f"{c.name} exited with code {code}: {_tail(c.log)}")

    def enrolled(self) -> list[str]:
        from provisioner.local_line import enrolled_stations

        return enrolled_stations(self.engine)

    def _new_gateways(self) -> None:
        """Stations enrolled since the line started get their gateway (line server)."""
        have = {c.env.get(STATION_ENV) for c in self.children if c.role == "gateway"}
        new = [s for s in self.enrolled() if s not in have]
        if new:
            _report(logging.INFO, f"station(s) {', '.join(new)} enrolled: starting gateways")
            self.start_gateways(new)

    # --- watching and restarting ----------------------------------------------------------

    def start_monitor(self, *, health: bool = True) -> None:
        """Restart crashed children (and probe the signer and registry, and start the
        gateways of newly enrolled stations: ``health``, the line server) from now on."""
        self._thread("supervisor-monitor", self._monitor)
        self._thread("supervisor-logrotate", self._rotate_logs)
        if health:
            self._thread("supervisor-enrollments", self._watch_enrollments)
            self._thread("supervisor-lapsed", self._watch_lapsed)
            from provisioner.health import HealthMonitor

            monitor = HealthMonitor(
                self.settings,
                self.engine,
                interval_s=self.health_interval_s,
                timeout_s=self.health_timeout_s,
            )
            self._thread("supervisor-health", lambda: monitor.run(self._stopping))
        self.write_status()

    def _watch_enrollments(self) -> None:
        while not self._stopping.wait(3.0):
            try:
                self._new_gateways()
            except _Stopping:
                return
            except Exception as exc:
                log.warning("checking for new stations: %s", exc)

    def _watch_lapsed(self) -> None:
        """Every ``lapsed_interval_s``: devices whose socket task died or could not give
        them back are queued again (:func:`provisioner.dispatch.resend_lapsed`)."""
        from provisioner.dispatch import resend_lapsed

        while not self._stopping.wait(self.lapsed_interval_s):
            try:
                n = resend_lapsed(self.engine, self.settings)
                if n:
                    _report(logging.INFO, f"re-queued {n} devices whose claim had lapsed")
            except Exception as exc:
                log.warning("re-queueing lapsed devices: %s", exc)

    def _rotate_logs(self) -> None:
        """Every ``log_rotate_interval_s``: rotate what outgrew ``settings.logging.max_bytes``
        in ``<var>/log`` (:mod:`provisioner.logs.rotate`)."""
        cfg = self.settings.logging
        while not self._stopping.wait(self.log_rotate_interval_s):
            try:
                rotate_dir(self.log_dir, cfg.max_bytes, cfg.backups)
            except OSError as exc:
                log.warning("rotating the logs in %s: %s", self.log_dir, exc)

    def _thread(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _monitor(self) -> None:
        last_write = time.monotonic()
        while not self._stopping.wait(0.5):
            try:
                changed = False
                for c in list(self.children):
                    if c.state == "running" and c.proc.poll() is not None:
                        self._exited(c, c.proc.returncode)
                        changed = True
                    elif c.state == "restarting" and time.monotonic() >= c.restart_at:
                        changed = True
                        self._restart(c)
                if changed or time.monotonic() - last_write > 5:
                    self.write_status()
                    last_write = time.monotonic()
            except _Stopping:
                return
            except Exception:
                log.exception("supervisor monitor")

    def _exited(self, c: Child, code: int) -> None:
        now = time.monotonic()
        c.last_exit = code
        signal_group(c.proc.pid, signal.SIGKILL)  # what the dead leader left (pool children)
        c.crashes = [t for t in c.crashes if now - t < self.restart_window_s] + [now]
        if len(c.crashes) > self.restart_limit:
            c.state = "failed"
            _report(
                logging.ERROR,
                f"{c.name} exited {len(c.crashes)} times within {self.restart_window_s:.0f}s "
                f"(last exit code {code}); not restarting it: see {c.log} "
                f"and {_out_file(c.log).name}",
            )
            return
        delay = min(self.backoff_max_s, 2.0 ** (len(c.crashes) - 1))
        c.state, c.restart_at = "restarting", now + delay
        _report(logging.WARNING, f"{c.name} exited with code {code}; restarting it in {delay:.0f}s")

    def _restart(self, c: Child) -> None:
        if c.kind == REDIS:
            self.settings.redis_socket.unlink(missing_ok=True)
        if c.ready_file is not None:
            c.ready_file.unlink(missing_ok=True)
        with self._mutex:  # stop() cannot miss a child started now
            c.proc = self._popen(c.name, c.argv, c.log, c.env)
            c.started_at, c.state = time.time(), "running"
            c.restarts += 1
        _report(logging.WARNING, f"{c.name} restarted (pid {c.proc.pid}, restart {c.restarts})")
        self.write_status()
        # Waiting for it to answer must not hold up the monitor: Redis may need restarting
        # while a worker waits for it.
        proc = c.proc
        self._thread(f"supervisor-ready-{c.name}", lambda: self._after_restart(c, proc))

    def _after_restart(self, c: Child, proc: subprocess.Popen[bytes]) -> None:
        """Once the restarted child answers: queue the running batches' work again after
        Redis (it lost every message) or a worker (it died with the messages it held)."""

        def alive() -> None:
            if proc.poll() is not None:
                raise ServiceUnavailableError(f"{c.name} exited again")

        try:
            self._wait_ready(c, alive)
        except ServiceUnavailableError as exc:
            log.warning("%s: %s", c.name, exc)  # the monitor sees it exit, or it is stuck
            return
        if self._stopping.is_set():
            return
        if c.kind == REDIS:
            self._renew_gateways()
        if c.role == "station":
            station = c.env.get(STATION_ENV)
            if station:
                self._station_resume(station, c.env)
        elif c.kind in (REDIS, WORKER):
            self._redispatch(c.name)
            if c.kind == REDIS:
                # A station that lost the broker mid-device gives its claim back once the
                # broker answers again (it keeps trying for the link timeout): queue the
                # running batches again after that, or such a device waits for its lease.
                self._later(self.settings.celery.link_timeout_s + 5, self._redispatch, c.name)

    def _renew_gateways(self) -> None:
        """Restart the gateway workers after the broker restarted. A gateway runs without
        Celery's remote control (its station could otherwise command it), and such a
        worker's consumer does not always survive the loss of its connection: seen here,
        a gateway that had an acknowledgement cut off by the restart never consumed
        again. Killing it is safe: its station's requests are retried, and every request
        is checked against the records again."""
        for g in [c for c in self.children if c.role == "gateway" and c.state == "running"]:
            _report(logging.INFO, f"{g.name}: restarting it with the broker")
            signal_group(g.proc.pid, signal.SIGKILL)

    def _later(self, delay_s: float, fn: Callable[[str], None], arg: str) -> None:
        """Run ``fn(arg)`` in ``delay_s`` seconds unless the supervisor stops first."""

        def run() -> None:
            if not self._stopping.wait(delay_s):
                fn(arg)

        threading.Thread(target=run, name=f"supervisor-later-{arg}", daemon=True).start()

    def _redispatch(self, why: str) -> None:
        """Queue the running batches' work again (a message sent twice never works twice):
        after Redis or a worker restarted, or the line server started (its broker starts
        empty)."""
        from provisioner.dispatch import redispatch_running

        try:
            devices, uploads = redispatch_running(self.engine, self.settings)
        except Exception as exc:
            log.warning("re-dispatch after %s restarted failed: %s", why, exc)
            return
        _report(
            logging.INFO,
            f"{why} restarted: re-queued {devices} devices and {uploads} uploads "
            "of running batches",
        )

    def write_status(self) -> None:
        holder = {
            "pid": os.getpid(),
            "config": str(self.config_file.resolve()) if self.config_file else None,
        }
        with suppress(OSError):
            write_status(self.run_dir, holder, [c.status() for c in self.children])

    # --- stopping -------------------------------------------------------------------------

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every child and its group: station workers, the signer and uploader, the
        registry and the API, Redis last; SIGTERM to each leader (Celery's warm
        shutdown), then SIGKILL to each group after ``timeout`` (at once after a second
        Ctrl-C). Signals arriving meanwhile cannot interrupt it."""
        self._interrupted = True  # from now on a signal only hurries
        with self._mutex:
            self._stopping.set()
        log.info("stopping %d services", len(self.children))
        for t in list(self._threads):
            t.join(timeout=2.0)  # the monitor may be waiting for a restarted child
        self._threads.clear()
        try:
            for phase in range(4):
                group = [c for c in reversed(self.children) if _stop_phase(c) == phase]
                if group:
                    self._stop_children(group, timeout)
                    log.info("stopped %s", ", ".join(c.name for c in group))
        finally:
            # Whatever cut the orderly stop short (an error, a terminal that went away),
            # no process group it started outlives it.
            for c in self.children:
                signal_group(c.proc.pid, signal.SIGKILL)
            for c in self.children:
                (self.run_dir / f"{c.name}.pid").unlink(missing_ok=True)
            self.children.clear()
            remove_status(self.run_dir)
            log.info("services stopped")
            self.release()

    def _stop_children(self, children: list[Child], timeout: float) -> None:
        for c in children:
            # SIGTERM to the leader alone: a Celery worker then lets its pool finish the
            # task in hand (warm shutdown) and takes the pool down with it; SIGTERM to
            # the pool would kill every device mid-step. The group gets SIGKILL after.
            if c.proc.poll() is None:
                with suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)
            else:
                signal_group(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._hurry:
            if not any(c.proc.poll() is None or group_alive(c.proc.pid) for c in children):
                break
            time.sleep(0.05)
        for c in children:
            signal_group(c.proc.pid, signal.SIGKILL)
        for c in children:  # SIGKILL is delivered asynchronously: see every member go
            with suppress(subprocess.TimeoutExpired):
                c.proc.wait(5)
            wait_group_gone(c.proc.pid, 5.0)

    # --- signals --------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self._interrupted:
            if not self._hurry:
                self._hurry = True
                say("stopping: not waiting for the services any more")
            return
        self._interrupted = True
        if self._defer:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextmanager
    def _critical(self) -> Iterator[None]:
        """No KeyboardInterrupt between starting a child and recording it (it would be an
        orphan); an interrupt that arrives meanwhile is raised at the end. Only the main
        thread gets signals; the monitor thread is ordered with stop() by the mutex."""
        if not _in_main_thread():
            yield
            return
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
            if self._pending and not self._defer:
                self._pending = False
                raise KeyboardInterrupt

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt once (in the main thread);
        the next ones only make the stop skip its grace period."""
        if not _in_main_thread():
            yield
            return
        old = {s: signal.getsignal(s) for s in _SIGNALS}
        for s in _SIGNALS:
            signal.signal(s, self._on_signal)
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def say(msg: str) -> None:
    """One line to the operator's terminal, if it is still there: a closed terminal (SIGHUP)
    or a pipe whose reader died (`| tee` killed by the same Ctrl-C) must never cut a stop
    short."""
    with suppress(OSError, ValueError):
        print(msg, file=sys.stderr, flush=True)


def _report(level: int, msg: str) -> None:
    """A restart or a give-up: the supervisor's log, and from warnings up the terminal."""
    log.log(level, msg)


_LOGGERS = ("provisioner.supervisor", "provisioner.health")
_HANDLERS: list[logging.Handler] = []  # ours, while a supervisor holds its lock


def _detach_logs() -> None:
    log_setup.detach(_LOGGERS, _HANDLERS)
    _HANDLERS.clear()


def _log_to(path: Path, level: int = logging.INFO) -> None:
    """The supervisor's and the health monitor's messages: all of them to ``path`` as JSON
    lines (process ``supervisor``), the warnings and errors (a restart, a give-up, a
    service down) also to stderr as ``warning: ...``. Only these loggers: the supervisor
    runs inside the CLI or a test, whose other logging is not its business."""
    _detach_logs()
    _HANDLERS.extend(log_setup.attach(_LOGGERS, path, "supervisor", level))


def _out_file(log_file: Path) -> Path:
    """A child's raw output beside its log: ``name.log`` -> ``name.out``."""
    return log_file.with_suffix(".out")


def _tail(log_file: Path, lines: int = 3) -> str:
    """Why a child died, in one line: the end of its raw output (a traceback, a C crash),
    else its last logged messages."""
    with suppress(OSError):
        raw = _out_file(log_file).read_text(errors="replace").strip().splitlines()
        if raw:
            return " | ".join(raw[-lines:])
    with suppress(OSError):
        entries = [parse(x) for x in log_file.read_text(errors="replace").splitlines() if x]
        return " | ".join(f"{e.get('level', '?')}: {e.get('msg', '')}" for e in entries[-lines:])
    return ""


def _check_ca(settings: Settings) -> None:
    """The line server signs certificates and its own identity with the CA: without one
    nothing would work, so say so before anything starts."""
    from provisioner.ca.ceremony import store_of
    from provisioner.errors import CaNotInitialisedError

    if not store_of(settings).intermediate_pem.is_file():
        raise CaNotInitialisedError()


def _line_buffered(argv: list[str]) -> list[str]:
    """``argv`` under ``stdbuf -oL`` when coreutils has it: mosquitto logs to stdout through
    stdio, which a file (``<name>.out``) would otherwise buffer by 4 KB blocks."""
    import shutil

    stdbuf = shutil.which("stdbuf")
    return [stdbuf, "-oL", *argv] if stdbuf else argv


def _which(cmd: str) -> str:
    import shutil

    for candidate in (shutil.which(cmd), f"/usr/bin/{cmd}", f"/usr/sbin/{cmd}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceUnavailableError(f"{cmd} is not installed: run `make install` (apt: {cmd})")


@contextmanager
def running_services(
    settings: Settings,
    stations: list[str],
    config_file: Path | None = None,
    *,
    role: str | None = None,
    move_taken_ports: bool = False,
    on_ports_moved: Callable[[str], Any] | None = None,
) -> Iterator[Supervisor]:
    """Take the var dir's lock, start what ``role`` (default ``settings.role``) runs on this
    PC, and watch it; stop it all on exit (also on Ctrl-C, SIGTERM or SIGHUP).

    - ``line``: Redis (TLS or unix socket, with ACL users), the registry, the MQTT bridge
      (``bridge.enabled``), the API, the device-facing HTTPS listener (``devices.enabled``),
      the signer and uploader workers, and a gateway worker per enrolled station
      (stations enrolled later get theirs within seconds);
    - ``station``: this PC's station worker (``settings.station_id``) only;
    - ``all`` (the demo): both, the ``stations`` enrolled locally first.

    A listener port in use is an error naming its setting, or with ``move_taken_ports``
    (the demo) moved to a free port, each move passed to ``on_ports_moved``."""
    role = role or settings.role
    sup = Supervisor(settings, config_file)
    with sup.handling_signals():
        sup.acquire()
        try:
            if role == "station":
                sup.start_station_workers(
                    stations, {s: {"PROVISIONER_STATION_ID": s} for s in stations}
                )
                sup.start_monitor(health=False)
                # No API on a station PC: its workers' metrics on a port of their own.
                stop_metrics = start_exporter(settings)
                try:
                    yield sup
                finally:
                    stop_metrics()
                return
            _check_ca(settings)
            plan = plan_ports(settings, move_taken=move_taken_ports)
            sup.settings, sup.child_overrides = plan.settings, plan.env
            for note in plan.notes:
                log.info(note)
                if on_ports_moved is not None:
                    on_ports_moved(note)
            sup.start_redis()
            sup.start_registry()
            sup.start_bridge()
            sup.start_api()
            sup.start_devices()
            sup.start_line_workers()
            if role == "all":
                sup.start_local_stations(stations)
            sup.start_gateways([s for s in sup.enrolled() if s not in stations])
            sup.start_monitor()
            if role == "line":  # a fresh broker holds no work: queue the running batches'
                sup._redispatch("the line server")
            yield sup
        finally:
            sup.stop()
