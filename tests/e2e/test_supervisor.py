"""The supervisor with real processes: one per var dir, crashed children restarted and
counted, a frozen signer reported, no orphan after repeated Ctrl-C, ports moved by setting.

The tests of the module share one `provisioner services run` (starting one costs ~15 s)
and run in file order: the last of them stops it with three quick Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from provisioner.db.engine import make_engine
from tests.conftest import Station, free_port, make_station
from tests.e2e.test_end_to_end import cli

pytestmark = pytest.mark.slow


def _wait(what: str, pred: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _start(st: Station) -> tuple[subprocess.Popen[bytes], Path]:
    out = st.root / "services.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "provisioner.cli.main", "services", "run"],
            env=st.env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def _status(st: Station) -> dict[str, Any]:
    return dict(json.loads(cli(st, "services", "status", "--json").stdout))


def _components(st: Station) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in _status(st).get("components", [])}


def _station_processes(st: Station) -> list[int]:
    """Every process that belongs to the station: its config path or var dir in its
    environment or command line (this test process excepted)."""
    marks = (str(st.config).encode(), str(st.settings.var).encode())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            blob = Path(f"/proc/{entry}/environ").read_bytes()
            blob += Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if any(m in blob for m in marks):
            found.append(int(entry))
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_leftovers(st: Station) -> None:
    for pid in _station_processes(st):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _events(st: Station, event_type: str) -> list[dict[str, Any]]:
    with make_engine(st.settings.db_url).connect() as c:
        rows = c.execute(
            text("SELECT payload FROM audit_event WHERE event_type = :t ORDER BY seq"),
            {"t": event_type},
        )
        return [json.loads(r[0]) for r in rows]


def _signer_up(st: Station) -> bool | None:
    health = {h["name"]: h for h in _status(st).get("health", [])}
    return health["signer"]["up"] if "signer" in health else None


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Station, subprocess.Popen[bytes], Path]]:
    st = make_station(tmp_path_factory.mktemp("supervisor") / "station", sockets=2)
    cli(st, "ca", "init")
    proc, out = _start(st)
    try:
        _wait("services running", lambda: b"services running" in out.read_bytes(), 120)
        yield st, proc, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(60)
        _kill_leftovers(st)


def test_second_start_is_refused_and_the_first_keeps_serving(
    served: tuple[Station, subprocess.Popen[bytes], Path],
) -> None:
    st, proc, _ = served
    before = _components(st)
    assert set(before) >= {"redis", "registry", "api", "worker-hsm", "worker-station-line1"}
    for argv in (["services", "run"], ["demo", "--count", "1"]):
        second = cli(st, *argv, check=False)
        assert second.returncode == 5, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "already running" in lines[0], second.stderr
        assert f"pid {proc.pid}" in lines[0]
    assert proc.poll() is None
    after = _components(st)
    assert {n: c["pid"] for n, c in after.items()} == {n: c["pid"] for n, c in before.items()}
    for c in after.values():
        assert c["state"] == "running" and c["restarts"] == 0
        os.kill(c["pid"], 0)  # the first one's workers are alive


def test_redis_then_the_upload_worker_killed_mid_batch_and_the_batch_finishes(
    served: tuple[Station, subprocess.Popen[bytes], Path],
) -> None:
    """Both restarted and counted; Redis came back empty on the same socket, the workers
    reconnected, and the re-dispatch finished the batch with no operator action."""
    st, _, out = served
    count = 24
    engine = make_engine(st.settings.db_url)

    def scalar(sql: str) -> int:
        with engine.connect() as c:
            return int(c.execute(text(sql)).scalar_one())

    def restarted(name: str, times: int) -> bool:
        c = _components(st).get(name, {})
        return c.get("restarts") == times and c.get("state") == "running"

    created = json.loads(
        cli(st, "batch", "create", "--count", str(count), "--station", "line1", "--json").stdout
    )
    cli(st, "batch", "start", str(created["id"]), "--no-wait")
    before = _components(st)
    _wait("a few certificates", lambda: scalar("SELECT count(*) FROM certificate") >= 3, 60)
    os.kill(before["redis"]["pid"], signal.SIGKILL)
    _wait("redis restarted", lambda: restarted("redis", 1), 30)
    issued = scalar("SELECT count(*) FROM certificate")
    _wait("more certificates", lambda: scalar("SELECT count(*) FROM certificate") > issued, 60)
    # Celery workers may die of the broker's loss on their own (then they were restarted
    # already): kill the upload worker that runs now.
    uploader = _components(st)["worker-registry"]
    os.killpg(uploader["pid"], signal.SIGKILL)  # master and pool
    _wait(
        "the upload worker restarted",
        lambda: restarted("worker-registry", uploader["restarts"] + 1),
        30,
    )
    _wait(
        "the batch to finish by itself",
        lambda: (
            scalar(f"SELECT count(*) FROM device WHERE step = 70 AND batch_id = {created['id']}")
            == count
        ),
        120,
    )
    assert scalar(f"SELECT count(*) FROM device WHERE batch_id = {created['id']}") == count
    assert scalar("SELECT count(*) FROM certificate") == count  # none issued twice
    now = _components(st)
    assert now["redis"]["pid"] != before["redis"]["pid"] and now["redis"]["last_exit"] == -9
    assert now["worker-registry"]["last_exit"] == -9
    assert not _group_alive(uploader["pid"])  # no pool child left
    log = out.read_text()
    assert "worker-registry exited with code -9" in log and "redis restarted" in log


def test_frozen_signer_is_reported_then_recovered(
    served: tuple[Station, subprocess.Popen[bytes], Path],
) -> None:
    st, _, _ = served
    _wait("a first health check", lambda: _signer_up(st) is True, 30)
    hsm = _components(st)["worker-hsm"]["pid"]
    os.killpg(hsm, signal.SIGSTOP)
    try:
        _wait("the frozen signer reported down", lambda: _signer_up(st) is False, 60)
        down = _events(st, "service.unavailable")
        assert down and down[-1]["service"] == "signer" and "no answer" in down[-1]["detail"]
    finally:
        os.killpg(hsm, signal.SIGCONT)
    _wait("the signer recovered", lambda: _signer_up(st) is True, 60)
    assert _events(st, "service.recovered")[-1]["service"] == "signer"
    assert _components(st)["worker-hsm"]["restarts"] == 0  # frozen is not dead


def test_repeated_ctrl_c_leaves_no_process(
    served: tuple[Station, subprocess.Popen[bytes], Path],
) -> None:
    st, proc, out = served
    groups = [c["pid"] for c in _components(st).values()]
    assert _station_processes(st)
    for _ in range(3):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    proc.wait(60)
    assert proc.returncode == 0, out.read_text()
    assert "services stopped" in out.read_text()
    assert [g for g in groups if _group_alive(g)] == []
    assert _station_processes(st) == []
    assert list((st.settings.var / "run").glob("*.pid")) == []
    assert "not running" in cli(st, "services", "status").stdout


def test_ctrl_c_with_the_output_pipe_gone_leaves_no_process(tmp_path: Path) -> None:
    """`provisioner services run | tee log`: Ctrl-C kills tee too, so every message the
    supervisor prints while stopping meets a broken pipe (a closed terminal is the same).
    The stop must still take every process group down."""
    st = make_station(tmp_path / "station", sockets=1)
    cli(st, "ca", "init")
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner.cli.main", "services", "run"],
        env=st.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        seen = b""
        while b"services running" not in seen:
            line = proc.stdout.readline()
            assert line, seen
            seen += line
        groups = [c["pid"] for c in _components(st).values()]
        proc.stdout.close()  # the reader is gone: the next write is EPIPE
        for _ in range(2):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
        proc.wait(60)
        assert [g for g in groups if _group_alive(g)] == []
        assert _station_processes(st) == []
        assert "not running" in cli(st, "services", "status").stdout
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(st)


def test_ctrl_c_while_starting_leaves_no_process(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=1)
    cli(st, "ca", "init")
    proc, out = _start(st)
    try:
        _wait("redis started", lambda: (st.settings.var / "run" / "redis.pid").exists(), 60)
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.02)
        proc.wait(60)
        assert proc.returncode == 130, out.read_text()
        assert _station_processes(st) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_leftovers(st)


def test_moving_a_listener_by_its_port_setting_alone(tmp_path: Path) -> None:
    """registry.listen_port set, registry.url not: uploads follow. The API's port is taken:
    the demo moves it and says so."""
    root = tmp_path / "station"
    root.mkdir()
    cfg = root / "provisioner.toml"
    reg_port = free_port()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        api_port = squatter.getsockname()[1]
        cfg.write_text(
            f'var_dir = "{root / "var"}"\n[registry]\nlisten_port = {reg_port}\n'
            f"[api]\nlisten_port = {api_port}\n[devices]\nport = {free_port()}\n"
            f"[bridge]\nmqtt_port = {free_port()}\nwss_port = {free_port()}\n"
            f"mtls_port = {free_port()}\n[stations.line1]\nsockets = 2\n"
        )
        st = make_station_from(root, cfg)
        demo = cli(st, "demo", "--count", "2", check=False)
    out = demo.stdout + demo.stderr
    assert demo.returncode == 0, out
    assert f"port {api_port} in use: api on " in out
    assert "2/2 devices provisioned" in out
    with make_engine(f"sqlite:///{root / 'var' / 'registry.db'}").connect() as c:
        registered = c.execute(text("SELECT count(*) FROM registry_devices")).scalar_one()
    assert registered == 2
    assert _station_processes(st) == []


def make_station_from(root: Path, cfg: Path) -> Station:
    from provisioner.settings import load_settings

    return Station(root=root, config=cfg, settings=load_settings(cfg))


def test_a_child_that_keeps_crashing_is_reported_and_left_down(tmp_path: Path) -> None:
    from provisioner.supervisor import API, Supervisor
    from provisioner.supervisor_status import read_status

    st = make_station(tmp_path / "station")
    sup = Supervisor(st.settings, st.config, restart_limit=2, restart_window_s=60)
    sup.acquire()
    try:
        sup.spawn("flaky", ["sh", "-c", "exit 3"], API)
        sup.start_monitor(health=False)
        flaky = sup.children[0]
        _wait("the supervisor to give up", lambda: flaky.state == "failed", 30)
        assert flaky.restarts == 2 and flaky.last_exit == 3  # backoff 1 s, 2 s, then no more
        time.sleep(2.5)
        assert flaky.restarts == 2
        status = read_status(st.settings.var / "run")
        assert status is not None and status[1][0].state == "failed"
        log = (st.settings.var / "log" / "supervisor.log").read_text()
        assert "flaky exited 3 times within 60s (last exit code 3); not restarting it" in log
    finally:
        sup.stop()


def test_a_killed_supervisors_children_are_reaped_by_the_next_one(tmp_path: Path) -> None:
    st = make_station(tmp_path / "station", sockets=1)
    cli(st, "ca", "init")
    first, out = _start(st)
    second: subprocess.Popen[bytes] | None = None
    try:
        _wait("services running", lambda: b"services running" in out.read_bytes(), 120)
        groups = {n: c["pid"] for n, c in _components(st).items()}
        first.kill()  # SIGKILL: no cleanup at all; its lock goes with it
        first.wait(10)
        assert all(_group_alive(g) for g in groups.values())
        out.unlink()
        second, out = _start(st)
        _wait("services running again", lambda: b"services running" in out.read_bytes(), 120)
        assert [n for n, g in groups.items() if _group_alive(g)] == []  # Redis included
        assert "left by a dead supervisor" in out.read_text()
        second.send_signal(signal.SIGINT)
        second.wait(60)
        assert _station_processes(st) == []
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
        _kill_leftovers(st)
