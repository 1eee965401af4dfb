"""Starts and stops the station's services as child processes: Redis, the registry, workers.

Used by ``provisioner services run``, ``provisioner demo`` and the end-to-end tests, so all
three run the same real processes. Children get their own session (Ctrl-C in the terminal
reaches only the supervisor, which then stops them in order: stations first, Redis last),
their logs go to ``<var>/log/``, and their pids to ``<var>/run/`` so a supervisor that was
killed outright leaves nothing running the next time one starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from provisioner.errors import ServiceUnavailableError
from provisioner.settings import Settings
from workers.queues import HSM_QUEUE, REGISTRY_QUEUE, station_queue


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Supervisor:
    """Owns the child processes of one station PC. Use :func:`running_services`."""

    settings: Settings
    config_file: Path | None = None
    children: list[Child] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        return self.settings.var / "log"

    @property
    def run_dir(self) -> Path:
        return self.settings.var / "run"

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PROVISIONER_VAR_DIR"] = str(self.settings.var)
        if self.config_file is not None:
            env["PROVISIONER_CONFIG"] = str(self.config_file.resolve())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, name: str, argv: list[str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.child_env(),
                cwd=os.getcwd(),
                start_new_session=True,
            )
        (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
        child = Child(name, proc, log)
        self.children.append(child)
        return child

    # --- the services -----------------------------------------------------------------

    def reap_stale(self) -> None:
        """Stop processes a previous supervisor left behind (it was SIGKILLed)."""
        if not self.run_dir.is_dir():
            return
        for pidfile in self.run_dir.glob("*.pid"):
            try:
                pid = int(pidfile.read_text())
                os.killpg(pid, signal.SIGTERM)
                _wait_gone(pid, 10.0)
            except (ValueError, ProcessLookupError, PermissionError):
                pass
            pidfile.unlink(missing_ok=True)

    def start_redis(self) -> None:
        sock = self.settings.redis_socket
        sock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sock.unlink(missing_ok=True)
        self.spawn(
            "redis",
            [
                _which("redis-server"),
                "--port",
                "0",
                "--unixsocket",
                str(sock),
                "--unixsocketperm",
                "700",
                "--dir",
                str(sock.parent),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
        )
        self._wait("redis", lambda: redis.Redis(unix_socket_path=str(sock)).ping())

    def start_registry(self) -> None:
        self.spawn("registry", [sys.executable, "-m", "provisioner.registry"])
        url = f"http://{self.settings.registry.listen_host}:{self.settings.registry.listen_port}"
        self._wait("registry", lambda: httpx.get(url + "/healthz", timeout=1).is_success)

    def start_api(self) -> None:
        """The public PKI endpoints (CRLs, CA certificates)."""
        self.spawn("api", [sys.executable, "-m", "provisioner.api"])
        url = f"http://{self.settings.api.listen_host}:{self.settings.api.listen_port}"
        self._wait("api", lambda: httpx.get(url + "/healthz", timeout=1).is_success)

    def start_workers(self, station_ids: list[str]) -> None:
        specs = [("worker-hsm", HSM_QUEUE, 1), ("worker-registry", REGISTRY_QUEUE, 2)]
        specs += [
            (f"worker-station-{s}", station_queue(s), self.settings.station(s).sockets)
            for s in station_ids
        ]
        for name, queue, concurrency in specs:
            self.start_worker(name, queue, concurrency, wait=False)
        self.wait_workers([q for _, q, _ in specs])

    def start_worker(self, name: str, queue: str, concurrency: int, *, wait: bool = True) -> None:
        """One ``celery -A workers worker`` consuming ``queue`` (one child per socket for a
        station queue)."""
        self.spawn(
            name,
            [
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
            ],
        )
        if wait:
            self.wait_workers([queue])

    def wait_workers(self, queues: list[str], timeout: float = 60.0) -> None:
        from workers.celery_app import make_celery

        app = make_celery(self.settings)
        deadline = time.monotonic() + timeout
        missing = set(queues)
        while time.monotonic() < deadline:
            self._check_alive()
            replies = app.control.inspect(timeout=1.0).active_queues() or {}
            seen = {q["name"] for qs in replies.values() for q in qs}
            missing = set(queues) - seen
            if not missing:
                return
        raise ServiceUnavailableError(
            f"workers for {sorted(missing)} did not start within {timeout:.0f}s; "
            f"see {self.log_dir}/worker-*.log"
        )

    def _wait(self, name: str, probe: object, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if probe():  # type: ignore[operator]
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise ServiceUnavailableError(
            f"{name} did not become ready within {timeout:.0f}s; see {self.log_dir}/{name}.log"
        )

    def _check_alive(self) -> None:
        for c in self.children:
            code = c.proc.poll()
            if code is not None:
                tail = c.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise ServiceUnavailableError(
                    f"{c.name} exited with code {code}: " + " | ".join(tail)
                )

    def stop(self, timeout: float = 20.0) -> None:
        """Stop children in reverse start order: SIGTERM (Celery's warm shutdown), then KILL."""
        for c in reversed(self.children):
            if c.proc.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(c.proc.pid, signal.SIGTERM)
            try:
                c.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()
            (self.run_dir / f"{c.name}.pid").unlink(missing_ok=True)
        self.children.clear()


def _which(cmd: str) -> str:
    import shutil

    for candidate in (shutil.which(cmd), f"/usr/bin/{cmd}", f"/usr/sbin/{cmd}"):
        if candidate and Path(candidate).exists():
            return candidate
    raise ServiceUnavailableError(f"{cmd} is not installed: run `make install` (apt: {cmd})")


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


@contextmanager
def running_services(
    settings: Settings, stations: list[str], config_file: Path | None = None
) -> Iterator[Supervisor]:
    """Start Redis, the registry and the workers; stop them all on exit (also on Ctrl-C)."""
    sup = Supervisor(settings, config_file)
    sup.reap_stale()
    try:
        sup.start_redis()
        sup.start_registry()
        sup.start_api()
        sup.start_workers(stations)
        yield sup
    finally:
        sup.stop()
